"""Official DisDiff PyTorch state dicts (`openaimodel_shift.UNetModel`, `Encoder4`) -> jdpm variables.

Walks the jdpm variable tree and names, for each leaf, the PyTorch entry it comes from, so every
parameter is accounted for and shapes are checked. Layouts: conv OIHW -> HWIO, linear (out, in) -> (in, out),
1-D convolution (out, in, 1) -> dense (in, out), norm weight -> scale, BatchNorm running statistics ->
`batch_stats`.
"""

import numpy as np

from jdpm.training.freeze import flatten_dict, unflatten_dict

_RES = {"in_norm": "in_layers.0", "in_conv": "in_layers.2", "emb": "emb_layers.1",
        "cond_emb": "cond_emb_layers.1", "out_norm": "out_layers.0", "out_conv": "out_layers.3",
        "skip": "skip_connection"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _stage_index(stage_keys, layer):
  """Position of `layer` (res/attn/res2/resample) inside its torch TimestepEmbedSequential."""
  order = [k for k in ("res", "attn", "res2", "resample") if k in stage_keys]
  return order.index(layer)


def _unet_name(path, tree):
  head, rest = path[0], path[1:]
  if head == "part_latents":
    return "part_latents.weight"
  if head in ("time_embed",):
    return f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[rest[0]] }.{_LEAF[rest[1]]}"
  if head in ("repre_embed", "part_emb"):
    return f"{head}.{_LEAF[rest[0]]}"
  if head == "input_conv":
    return f"input_blocks.0.0.{_LEAF[rest[0]]}"
  if head in ("out_norm", "out_conv", "shift_out_norm", "shift_out_conv"):
    prefix, part = head.rsplit("_", 1)
    return f"{prefix}.{0 if part == 'norm' else 2}.{_LEAF[rest[0]]}"
  # stages
  name, _, index = head.rpartition("_")
  if name in ("input_blocks", "output_blocks", "shift_output_blocks"):
    block = f"{name}.{int(index) + (1 if name == 'input_blocks' else 0)}"
  else:
    block = head  # middle_block, shift_middle_block
  layer, sub = rest[0], rest[1:]
  position = _stage_index(tree[head].keys(), layer)
  module = _RES[sub[0]] if layer != "attn" else sub[0]
  return f"{block}.{position}.{module}.{_LEAF[sub[1]]}"


def _encoder_name(path, tree):
  """Encoder4: `layers_<i>` mirror the torch Sequential index; residual blocks `layers_<i>/conv{1,2}`,
  `layers_<i>/norm`."""
  head, rest = path[0], path[1:]
  index = head.split("_")[1]
  if rest[0] in ("conv1", "norm", "conv2"):
    inner = {"conv1": 1, "norm": 2, "conv2": 4}[rest[0]]
    return f"encoder.{index}.convs.{inner}.{_LEAF[rest[1]]}"
  return f"encoder.{index}.{_LEAF[rest[0]]}"


def _convert_leaf(array, like, name):
  array = np.asarray(array, dtype=np.float32)
  if array.ndim == 4:  # conv OIHW -> HWIO
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 3:  # conv1d (out, in, 1) -> dense (in, out)
    array = array[..., 0].T
  elif array.ndim == 2 and name != "part_latents.weight":  # linear
    array = array.T
  if array.shape != tuple(like.shape):
    raise ValueError(f"{name}: official shape {array.shape} does not fit jdpm's {tuple(like.shape)}.")
  return array


def _convert(state_dict, variables, namer):
  out = {}
  for collection, tree in variables.items():
    flat = {}
    for path, like in flatten_dict(tree).items():
      name = namer(path, tree)
      if name not in state_dict:
        raise KeyError(f"official state dict has no entry {name!r} (for jdpm {collection}/{'/'.join(path)}).")
      flat[path] = _convert_leaf(state_dict[name], like, name)
    out[collection] = unflatten_dict(flat)
  return out


def unet_from_torch(state_dict, variables):
  """jdpm ShiftUNet variables (same structure as `variables`) from an official UNet state dict."""
  return _convert(state_dict, variables, _unet_name)


def encoder_from_torch(state_dict, variables):
  """jdpm FactorEncoder variables ({"params", "batch_stats"}) from an official Encoder4 state dict."""
  return _convert(state_dict, variables, _encoder_name)


def unet_torch_name(path, params):
  """The official parameter name of jdpm ShiftUNet parameter `path` (a tuple of keys)."""
  return _unet_name(tuple(path), params)
