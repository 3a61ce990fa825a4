"""Official PyTorch checkpoints → jdpm Flax variables (torch is never imported).

``from_official(state_dict_or_path, "DiT-XL/2", **model_kwargs)`` builds the variables of
``jdpm.models.create("DiT-XL/2", **model_kwargs)``. Each model family registers one converter
with ``register_converter(family, fn)``; ``fn(state_dict, model, abstract_variables)`` returns
the variables dict. Most families only need ``mapping.map_state_dict`` plus handling of their
frozen buffers.

``vae_from_diffusers(state_dict_or_path, **config)`` reads diffusers ``AutoencoderKL`` weights
(the Stable Diffusion VAE) into ``(model, variables)``. ``inception.load_variables(path)`` reads
pytorch-fid's FID Inception weights for ``jdpm.models.inception.InceptionV3``.

``from_diffusers(path_or_state_dict, ...)`` reads diffusers/transformers folders (UNet2DModel,
UNet2DConditionModel, AutoencoderKL, CLIPTextModel, or a whole pipeline) into ``(model, variables)``.
"""

import jax
import jax.numpy as jnp

from jdpm import models
from jdpm.convert import diffusers
from jdpm.convert import dit
from jdpm.convert import edt
from jdpm.convert import inception
from jdpm.convert import mdt
from jdpm.convert.diffusers import from_diffusers
from jdpm.convert.mapping import map_state_dict, to_flax_layout, torch_key_to_path
from jdpm.convert.state_dict import load_state_dict
from jdpm.convert.torch_pickle import load_torch_checkpoint
from jdpm.convert.vae import vae_from_diffusers
from jdpm.models.counting import abstract_variables

_CONVERTERS = {}


def register_converter(family, fn):
  """Registers ``fn(state_dict, model, abstract_variables) -> variables`` for a model family."""
  _CONVERTERS[family] = fn


def from_official(state_dict_or_path, name, **kwargs):
  """Official weights → variables of ``jdpm.models.create(name, **kwargs)``.

  Args:
    state_dict_or_path: a dict {official key: array}, or a path to ``.npz``, ``.safetensors`` or
      a ``torch.save`` ``.pt``/``.pth`` file (read without torch). Training checkpoints holding
      several state dicts use the ``"ema"`` weights when present (else ``"model"``). Keys may
      carry a common ``param/`` or ``module.`` prefix.
    name: model name as for ``jdpm.models.create`` (e.g. "DiT-XL/2", or "DiT" with sizes).
    **kwargs: model keyword arguments (num_classes, input_size, in_channels, learn_sigma, ...).

  Returns:
    {"params": ...} with float32 jax arrays, ready for ``model.apply``.

  Raises:
    ValueError for an unknown name, or one error listing every unexpected key, missing
    parameter and shape mismatch when the weights do not fit the model.
  """
  family, _ = models.resolve(name, **kwargs)
  if family not in _CONVERTERS:
    raise ValueError(f"No converter for model family {family!r}; available: "
                     f"{sorted(_CONVERTERS)}.")
  model = models.create(name, **kwargs)
  state_dict = load_state_dict(state_dict_or_path)
  variables = _CONVERTERS[family](state_dict, model, abstract_variables(model))
  return jax.tree.map(jnp.asarray, variables)


register_converter("DiT", dit.convert_dit)
register_converter("EDT", edt.convert_edt)
register_converter("MDTv2", mdt.convert_mdt)

__all__ = ["diffusers", "from_diffusers", "from_official", "inception", "load_state_dict", "load_torch_checkpoint",
           "map_state_dict", "register_converter", "to_flax_layout", "torch_key_to_path",
           "vae_from_diffusers"]
