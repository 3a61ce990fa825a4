"""diffusers ``AutoencoderKL`` state dicts (e.g. sd-vae-ft-ema, sd-vae-ft-mse) → jdpm variables.

diffusers has written the mid-block attention under two names: older checkpoints (including the
released sd-vae-ft-* ``.bin`` files) use ``query``/``key``/``value``/``proj_attn``, newer ones
``to_q``/``to_k``/``to_v``/``to_out.0``. Both are read; everything else maps by name.
"""

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp

from jdpm import fields
from jdpm.convert.mapping import map_state_dict
from jdpm.convert.state_dict import load_state_dict
from jdpm.models.vae import SD_VAE_CONFIG, AutoencoderKL, abstract_variables

# Old diffusers attention names → current ones (the GroupNorm kept its name).
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_KEY = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")


def rename_old_attention_keys(state_dict):
  """Returns the state dict with old-style attention keys renamed to the current convention."""
  return {_OLD_ATTENTION_KEY.sub(lambda m: m.group(1) + _OLD_ATTENTION[m.group(2)] + ".", k): v
          for k, v in state_dict.items()}


# diffusers config.json fields that are AutoencoderKL attributes here.
_CONFIG_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                  "norm_num_groups", "scaling_factor")


def diffusers_config(weights_path):
  """The architecture from the ``config.json`` beside diffusers weights ({} when there is none)."""
  path = pathlib.Path(weights_path).parent / "config.json"
  if not path.exists():
    return {}
  config = json.loads(path.read_text())
  blocks = set(config.get("down_block_types", ())) | set(config.get("up_block_types", ()))
  unsupported = blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"}
  if unsupported or config.get("use_quant_conv") is False or config.get("shift_factor"):
    raise ValueError(f"{path} describes a VAE this AutoencoderKL does not implement (blocks {sorted(blocks)}, "
                     "or no quant convs / a shift factor as in SD3/FLUX VAEs); the papers use sd-vae-ft-ema/-mse.")
  return fields.hashable({k: v for k, v in config.items() if k in _CONFIG_FIELDS})


def vae_from_diffusers(state_dict_or_path, **config):
  """Builds a jdpm ``AutoencoderKL`` and its variables from diffusers weights.

  Args:
    state_dict_or_path: a dict {diffusers key: array}, or a path to ``.safetensors``, ``.npz``
      or a ``torch.save`` file such as ``diffusion_pytorch_model.bin`` (read without torch).
    **config: ``AutoencoderKL`` attributes; default ``SD_VAE_CONFIG`` (the SD VAE), updated from a
      diffusers ``config.json`` beside a weights file, then by these.

  Returns:
    (model, variables) with variables = {"params": ...} of float32 jax arrays.

  Raises:
    ValueError listing every unexpected key, missing parameter and shape mismatch at once.
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    config = {**diffusers_config(state_dict_or_path), **config}
  model = AutoencoderKL(**{**SD_VAE_CONFIG, **config})
  state_dict = rename_old_attention_keys(load_state_dict(state_dict_or_path))
  # Encoder-only or decoder-only exports are not supported: every parameter must be present.
  name = (f"AutoencoderKL(block_out_channels={tuple(model.block_out_channels)}, "
          f"layers_per_block={model.layers_per_block}, latent_channels={model.latent_channels})")
  params = map_state_dict(state_dict, abstract_variables(model)["params"], model_name=name)
  return model, jax.tree.map(jnp.asarray, {"params": params})
