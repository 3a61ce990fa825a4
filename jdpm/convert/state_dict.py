"""Loads official checkpoints as a flat ``{torch key: numpy array}`` state dict."""

import os
import zipfile
from collections.abc import Mapping

import numpy as np

from jdpm.convert.torch_pickle import load_torch_checkpoint

# Training checkpoints bundle several state dicts; the EMA weights are the ones used for sampling.
CHECKPOINT_KEYS = ("ema", "model", "state_dict")
# Prefixes dropped when every parameter key carries them: "param/" (reference .npz archives) and
# "module." (checkpoints saved from DistributedDataParallel wrappers).
PARAM_PREFIX = "param/"
DDP_PREFIX = "module."


def _is_array(value):
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _to_numpy(value):
  # Duck-typed torch tensors (never imported here): detach, move to host, widen bfloat16.
  if hasattr(value, "detach") and hasattr(value, "cpu"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _read_file(path):
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"Checkpoint file {path!r} does not exist.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(path)
  if suffix in (".pt", ".pth", ".bin", ".ckpt") or zipfile.is_zipfile(path):
    return load_torch_checkpoint(path)
  raise ValueError(f"Unsupported checkpoint format {path!r}: expected .npz, .safetensors, or a "
                   ".pt/.pth file written by torch.save.")


def _select_state_dict(obj):
  """Picks the parameter dict out of a checkpoint object."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"Expected a state dict (a mapping of names to arrays), got "
                     f"{type(obj).__name__}.")
  if all(_is_array(v) for v in obj.values()):
    return obj
  for key in CHECKPOINT_KEYS:
    if isinstance(obj.get(key), Mapping):
      return _select_state_dict(obj[key])
  non_arrays = sorted(str(k) for k, v in obj.items() if not _is_array(v))
  raise ValueError(f"Checkpoint is neither a state dict nor a dict with one of the keys "
                   f"{list(CHECKPOINT_KEYS)}; entries that are not arrays: {non_arrays[:10]}.")


def _strip_prefixes(state_dict):
  if any(k.startswith(PARAM_PREFIX) for k in state_dict):
    # A reference archive: parameters are "param/<name>"; inputs/outputs stored beside are not.
    state_dict = {k[len(PARAM_PREFIX):]: v for k, v in state_dict.items()
                  if k.startswith(PARAM_PREFIX)}
  if state_dict and all(k.startswith(DDP_PREFIX) for k in state_dict):
    state_dict = {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
  return state_dict


def load_state_dict(source):
  """Official parameters as a flat ``{name: numpy array}`` dict in PyTorch layout.

  Args:
    source: a mapping of names to arrays (numpy, jax or torch tensors), or a path to
      - ``.npz`` (keys may carry a ``param/`` prefix; then only those keys are read),
      - ``.safetensors``,
      - ``.pt``/``.pth`` from ``torch.save`` (read without torch). This may be a plain state
        dict (as the released DiT weights) or a training checkpoint dict; then the ``"ema"``
        weights are used when present, else ``"model"``, else ``"state_dict"``.

  A ``module.`` prefix on every key (DistributedDataParallel) is removed.
  """
  obj = source if isinstance(source, Mapping) else _read_file(source)
  if isinstance(obj, Mapping) and any(str(k).startswith(PARAM_PREFIX) for k in obj):
    obj = _strip_prefixes(dict(obj))
  state_dict = _select_state_dict(obj)
  return _strip_prefixes({str(k): _to_numpy(v) for k, v in state_dict.items()})
