"""diffusers / transformers folders → jdpm models and variables (torch is never imported).

``from_diffusers(path_or_state_dict, ...)`` reads

- a model folder: ``config.json`` plus weights (``*.safetensors``, fp32 or fp16, one file or shards
  listed in ``*.safetensors.index.json``; ``.bin`` files are read without torch as a fallback).
  ``_class_name`` (diffusers) or ``architectures`` (transformers) picks the model:
  ``UNet2DModel`` and ``UNet2DConditionModel`` (``jdpm.models.unet``), ``AutoencoderKL``
  (``jdpm.models.vae``) and ``CLIPTextModel`` (``jdpm.models.clip_text``). Returns
  ``(model, variables)``.
- a pipeline folder (``model_index.json``): every supported component, as a dict
  ``{"unet": (model, variables), "vae": ..., "text_encoder": ..., "tokenizer": folder path,
  "scheduler": its config dict}``; other components (safety checker, feature extractor) are skipped.
- a state dict ``{key: array}`` with ``config=`` (a dict or a ``config.json`` path).

Every parameter must be present with its shape: one ValueError names the unexpected keys, the
missing parameters and the shape mismatches (with the expected shapes). Nothing is downloaded.
"""

import json
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.convert import vae as vae_convert
from jdpm.convert.mapping import map_state_dict
from jdpm.convert.state_dict import load_state_dict
from jdpm.models import clip_text, unet

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
TEXT_CLASSES = ("CLIPTextModel",)
VAE_CLASSES = ("AutoencoderKL",)
# Pipeline components read as files rather than networks.
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")

# diffusers UNet config keys whose non-default values need modules jdpm does not implement.
_UNET_UNSUPPORTED = {
    "addition_embed_type": (None,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "dual_cross_attention": (False,), "attention_type": ("default",),
    "cross_attention_norm": (None,), "time_cond_proj_dim": (None,),
    "downsample_type": ("conv", None), "upsample_type": ("conv", None),
    "time_embedding_type": ("positional",),
}
# Other config keys that are not module attributes (resnet_out_scale_factor,
# mid_block_only_cross_attention, addition_embed_type_num_heads, ...) only concern blocks jdpm does not
# implement, which the block-type check rejects, and are ignored.


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------


def read_json(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"{path} does not exist.")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}.") from None


def find_weights(folder, variant=None):
  """The weight files of a model folder, in load order.

  Prefers safetensors over ``.bin``. With ``variant`` (e.g. "fp16") only ``*.fp16.*`` files;
  without it the plain files, else a lone variant. Shards come from the index json.
  """
  folder = pathlib.Path(folder)

  def pick(paths):
    if variant is not None:
      return [p for p in paths if _variant_of(p) == variant]
    return [p for p in paths if _variant_of(p) is None] or paths

  for ext in ("safetensors", "bin"):
    for index in pick(sorted(folder.glob(f"*.{ext}.index*.json"))):
      shards = sorted(set(read_json(index).get("weight_map", {}).values()))
      missing = [s for s in shards if not (folder / s).is_file()]
      if missing or not shards:
        raise ValueError(f"{index} lists shard(s) {missing or shards} that are not in {folder}.")
      return [folder / s for s in shards]
    chosen = pick(sorted(p for p in folder.glob(f"*.{ext}") if "-of-" not in p.name))
    if len(chosen) > 1:
      raise ValueError(f"Several weight files in {folder}: {[p.name for p in chosen]}; pass "
                       "variant= or keep one.")
    if chosen:
      return chosen
  names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
  raise ValueError(f"No weights (*.safetensors or *.bin{f', variant {variant!r}' if variant else ''}) "
                   f"in {folder}; it holds {names}.")


def _variant_of(path):
  """"model.fp16.safetensors", "model.safetensors.index.fp16.json", "model.fp16-00001-of-00002.bin"
  → "fp16"; None for plain names."""
  name = pathlib.Path(path).name
  if ".index" in name:
    tail = name.split(".index", 1)[1]  # "" + ".json" or ".fp16.json"
    parts = tail.split(".")
    return parts[1] if len(parts) == 3 else None
  stem = name.rsplit(".", 1)[0].split("-")[0]
  parts = stem.split(".")
  return parts[-1] if len(parts) > 1 else None


def load_folder_state_dict(folder, variant=None):
  """All tensors of a model folder as {key: numpy array} (shards merged)."""
  state_dict = {}
  for path in find_weights(folder, variant):
    state_dict.update(load_state_dict(path))
  return state_dict


# ---------------------------------------------------------------------------------------------
# Config → module.
# ---------------------------------------------------------------------------------------------


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def class_name_of(config):
  """The model class of a diffusers or transformers config dict."""
  if "_class_name" in config:
    return config["_class_name"]
  architectures = config.get("architectures") or []
  if architectures:
    return architectures[0]
  if config.get("model_type") == "clip_text_model":
    return "CLIPTextModel"
  raise ValueError("The config names no model class (no '_class_name', 'architectures' or "
                   "'model_type'); pass class_name=.")


def unet_kwargs(config, class_name):
  """diffusers UNet config → ``jdpm.models.unet.make_unet`` keyword arguments."""
  cls = unet.UNet2DModel if class_name == "UNet2DModel" else unet.UNet2DConditionModel
  fields = set(cls.__dataclass_fields__) - {"parent", "name", "dtype"}
  problems = [f"{key}={config[key]!r}" for key, allowed in _UNET_UNSUPPORTED.items()
              if key in config and config[key] not in allowed]
  blocks = [*config.get("down_block_types", ()), *config.get("up_block_types", ())]
  mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn" if class_name != "UNet2DModel"
                   else "UNetMidBlock2D")
  unknown = [b for b in blocks if b not in unet.DOWN_BLOCKS + unet.UP_BLOCKS]
  unknown += [] if mid in cls.mid_block_types() else [mid]
  if unknown:
    problems.append(f"block type(s) {unknown} (supported: down {unet.DOWN_BLOCKS}, "
                    f"mid {cls.mid_block_types()}, up {unet.UP_BLOCKS})")
  if problems:
    raise ValueError(f"Unsupported {class_name} config: {'; '.join(problems)}.")
  kwargs = {k: _tuples(v) for k, v in config.items() if k in fields}
  return {"class_name": class_name, **kwargs}


def text_kwargs(config):
  fields = set(clip_text.CLIPTextModel.__dataclass_fields__) - {"parent", "name", "dtype"}
  return {k: v for k, v in config.items() if k in fields and v is not None}


def build_model(config, class_name=None, dtype=jnp.float32, **overrides):
  """The jdpm module for a diffusers/transformers config dict (no weights)."""
  class_name = class_name or class_name_of(config)
  if class_name in UNET_CLASSES:
    return unet.make_unet(**{**unet_kwargs(config, class_name), **overrides}, dtype=dtype)
  if class_name in TEXT_CLASSES:
    return clip_text.CLIPTextModel(**{**text_kwargs(config), **overrides}, dtype=dtype)
  if class_name in VAE_CLASSES:
    from jdpm.models.vae import SD_VAE_CONFIG, AutoencoderKL  # pylint: disable=import-outside-toplevel
    return AutoencoderKL(**{**SD_VAE_CONFIG, **_vae_kwargs(config), **overrides}, dtype=dtype)
  raise ValueError(f"Unsupported model class {class_name!r}; from_diffusers reads "
                   f"{UNET_CLASSES + VAE_CLASSES + TEXT_CLASSES}.")


def _vae_kwargs(config):
  """diffusers AutoencoderKL config → ``AutoencoderKL`` attributes (the checks of
  ``jdpm.convert.vae.diffusers_config``, on a dict)."""
  blocks = set(config.get("down_block_types", ())) | set(config.get("up_block_types", ()))
  unsupported = blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"}
  if unsupported or config.get("use_quant_conv") is False or config.get("shift_factor"):
    raise ValueError(f"Unsupported AutoencoderKL config: blocks {sorted(blocks)}, use_quant_conv="
                     f"{config.get('use_quant_conv')}, shift_factor={config.get('shift_factor')} "
                     "(jdpm implements the SD 1.x/2.x VAE).")
  fields = vae_convert._CONFIG_FIELDS  # pylint: disable=protected-access
  return {k: _tuples(v) for k, v in config.items() if k in fields}


# ---------------------------------------------------------------------------------------------
# State dict → variables.
# ---------------------------------------------------------------------------------------------


def _abstract(model):
  if isinstance(model, clip_text.CLIPTextModel):
    return clip_text.abstract_variables(model)
  if isinstance(model, unet.UNet2DConditionModel):
    return unet.abstract_variables(model)
  from jdpm.models import vae  # pylint: disable=import-outside-toplevel
  return vae.abstract_variables(model)


def _prepare_state_dict(state_dict, model):
  if isinstance(model, clip_text.CLIPTextModel):
    # Older transformers checkpoints prefix "text_model." and keep the position_ids buffer.
    prefix = "text_model."
    if any(k.startswith(prefix) for k in state_dict):
      state_dict = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
  # Old diffusers attention names (query/key/value/proj_attn) in UNet2DModel and VAE checkpoints.
  return vae_convert.rename_old_attention_keys(state_dict)


def convert_state_dict(state_dict, model):
  """{diffusers/transformers key: array} → {"params": ...} of ``model`` (float32 jax arrays)."""
  state_dict = _prepare_state_dict(load_state_dict(state_dict), model)
  name = f"{type(model).__name__}"
  params = map_state_dict(state_dict, _abstract(model)["params"], model_name=name)
  return jax.tree.map(jnp.asarray, {"params": params})


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------


def from_diffusers(path_or_state_dict, config=None, *, class_name=None, variant=None,
                   dtype=jnp.float32, components=None, **overrides):
  """diffusers/transformers weights → jdpm ``(model, variables)``, or a pipeline's components.

  Args:
    path_or_state_dict: a model folder (``config.json`` + weights), a pipeline folder
      (``model_index.json``), a weights file with ``config.json`` beside it, or a state dict
      {key: array} (then ``config`` is required).
    config: a config dict or ``config.json`` path (for state dicts, or to override the folder's).
    class_name: the model class when the config does not say (e.g. "UNet2DConditionModel").
    variant: weights variant to read, e.g. "fp16" for ``*.fp16.safetensors``.
    dtype: computation dtype of the returned modules (parameters are float32).
    components: for a pipeline folder, the component names to load (default: all supported).
    **overrides: module attributes replacing the config's.

  Returns:
    (model, {"params": ...}) for a model, or a dict of components for a pipeline folder.

  Raises:
    ValueError for a missing folder/file/config, an unsupported class or block type, and one
    error listing every unexpected key, missing parameter and shape mismatch.
  """
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    path = pathlib.Path(path_or_state_dict)
    if not path.exists():
      raise ValueError(f"{path} does not exist.")
    if path.is_dir() and (path / "model_index.json").is_file():
      return load_pipeline(path, variant=variant, dtype=dtype, components=components)
    folder = path if path.is_dir() else path.parent
    if config is None:
      if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json (nor model_index.json): not a diffusers/"
                         "transformers model or pipeline folder.")
      config = folder / "config.json"
    state_dict = load_folder_state_dict(path, variant) if path.is_dir() else load_state_dict(path)
  elif isinstance(path_or_state_dict, Mapping):
    if config is None:
      raise ValueError("A state dict needs its config: from_diffusers(state_dict, config=dict or "
                       "'path/to/config.json').")
    state_dict = path_or_state_dict
  else:
    raise ValueError(f"Expected a folder, a file or a state dict, got {type(path_or_state_dict).__name__}.")
  if not isinstance(config, Mapping):
    config = read_json(config)
  model = build_model(dict(config), class_name, dtype, **overrides)
  return model, convert_state_dict(state_dict, model)


def load_pipeline(folder, variant=None, dtype=jnp.float32, components=None):
  """A diffusers pipeline folder → {name: (model, variables) | tokenizer folder | scheduler config}."""
  folder = pathlib.Path(folder)
  index = read_json(folder / "model_index.json")
  loaded = {}
  for name, spec in index.items():
    if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
      continue
    if components is not None and name not in components:
      continue
    sub = folder / name
    cls = spec[1]
    if cls in UNET_CLASSES + VAE_CLASSES + TEXT_CLASSES:
      if not sub.is_dir():
        raise ValueError(f"{folder / 'model_index.json'} lists {name!r} but {sub} is missing.")
      loaded[name] = from_diffusers(sub, variant=_existing_variant(sub, variant), dtype=dtype)
    elif cls in TOKENIZER_CLASSES:
      loaded[name] = str(sub)
    elif name == "scheduler" or cls.endswith("Scheduler"):
      loaded[name] = {"_class_name": cls, **read_json(sub / "scheduler_config.json")}
  missing = sorted(set(components or ()) - set(loaded))
  if missing:
    raise ValueError(f"Pipeline {folder} has no supported component(s) {missing}.")
  return loaded


def _existing_variant(folder, variant):
  """The variant when the folder has it (fp16 pipelines may keep some components fp32 only)."""
  if variant is None:
    return None
  return variant if any(_variant_of(p) == variant for p in folder.iterdir()) else None


def scheduler_betas(config):
  """The (T,) float64 betas a diffusers scheduler config defines (as diffusers computes them).

  ``beta_schedule``: "linear" (linspace of beta_start..beta_end in float32), "scaled_linear"
  (Stable Diffusion: linspace of the square roots, squared), "squaredcos_cap_v2" (improved
  DDPM's cosine), or ``trained_betas``.
  """
  if config.get("trained_betas") is not None:
    return np.asarray(config["trained_betas"], np.float64)
  steps = int(config.get("num_train_timesteps", 1000))
  start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
  schedule = config.get("beta_schedule", "linear")
  if schedule == "linear":
    return np.linspace(start, end, steps, dtype=np.float32).astype(np.float64)
  if schedule == "scaled_linear":
    return (np.linspace(start**0.5, end**0.5, steps, dtype=np.float32)**2).astype(np.float64)
  if schedule == "squaredcos_cap_v2":
    from jdpm.diffusion import betas  # pylint: disable=import-outside-toplevel
    return betas.cosine_betas(steps)
  raise ValueError(f"Unsupported beta_schedule {schedule!r} in the scheduler config.")


__all__ = ["build_model", "class_name_of", "convert_state_dict", "find_weights", "from_diffusers",
           "load_folder_state_dict", "load_pipeline", "scheduler_betas"]
