"""Generic PyTorch state dict → Flax params mapping by name.

jdpm modules are named after the official PyTorch modules, with list/Sequential indices joined
to the previous name: ``blocks.0.attn.qkv.weight`` → ``blocks_0/attn/qkv/kernel``. A torch
``weight`` becomes whichever of ``kernel`` (Dense/Conv), ``embedding`` (Embed) or ``scale``
(LayerNorm) the target module has; ``bias`` stays ``bias``; raw parameters keep their name.
"""

import numpy as np
from flax import traverse_util

WEIGHT_NAMES = ("kernel", "embedding", "scale")
_MAX_LISTED = 12


def torch_key_to_path(key):
  """``"blocks.0.adaLN_modulation.1.weight"`` → ``("blocks_0", "adaLN_modulation_1", "weight")``."""
  path = []
  for part in key.split("."):
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return tuple(path)


def to_flax_layout(array, leaf_name):
  """PyTorch → Flax layout: Linear (out, in) → (in, out); Conv (out, in, *k) → (*k, in, out)."""
  if leaf_name != "kernel" or array.ndim < 2:
    return array
  if array.ndim == 2:
    return array.T
  return np.transpose(array, (*range(2, array.ndim), 1, 0))


def _listing(items):
  shown = ", ".join(items[:_MAX_LISTED])
  more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"[{shown}{more}]"


def map_state_dict(state_dict, target, *, model_name="the model", key_to_path=torch_key_to_path,
                   extra_errors=()):
  """Maps official parameters onto a Flax params tree by name.

  Args:
    state_dict: {torch key: numpy array} in PyTorch layout (keys the family converter has
      already handled, e.g. frozen buffers, removed).
    target: the Flax params tree of the model, arrays or ShapeDtypeStructs.
    model_name: used in error messages.
    key_to_path: torch key → Flax path tuple whose last element is the torch leaf name.
    extra_errors: problems already found by the caller, reported in the same error.

  Returns:
    A nested dict like ``target`` with numpy arrays in the target dtypes.

  Raises:
    ValueError naming every unexpected key, missing parameter and shape mismatch at once.
  """
  flat_target = traverse_util.flatten_dict(target)
  converted, unexpected, mismatched, seen = {}, [], [], set()
  for key, value in state_dict.items():
    path = key_to_path(key)
    candidates = [path[:-1] + (name,) for name in WEIGHT_NAMES] if path[-1] == "weight" else [path]
    found = [p for p in candidates if p in flat_target]
    if not found:
      unexpected.append(key)
      continue
    flax_path = found[0]
    seen.add(flax_path)
    array = to_flax_layout(np.asarray(value), flax_path[-1])
    expected = flat_target[flax_path]
    if tuple(array.shape) != tuple(expected.shape):
      mismatched.append(f"{key}: {tuple(np.shape(value))} (expected "
                        f"{tuple(expected.shape)} as {'/'.join(flax_path)})")
      continue
    converted[flax_path] = array.astype(expected.dtype)
  missing = ["/".join(p) for p in flat_target if p not in seen]
  errors = list(extra_errors)
  if unexpected:
    errors.append(f"{len(unexpected)} unexpected key(s) {_listing(unexpected)}")
  if missing:
    errors.append(f"{len(missing)} missing parameter(s) {_listing(missing)}")
  if mismatched:
    errors.append(f"{len(mismatched)} shape mismatch(es) {_listing(mismatched)}")
  if errors:
    raise ValueError(f"State dict does not match {model_name}: " + "; ".join(errors) +
                     ". Check the model name and its keyword arguments (sizes, num_classes, "
                     "learn_sigma, class_dropout_prob).")
  return traverse_util.unflatten_dict(converted)
