"""A training run's directory from the outside: its config, its model, its weights — no optimizer needed.

`restore(workdir)` is the one way jdpm reads a trained run back for inference: ``sample.py``, the
benchmarks and notebooks call it. It never writes into the run (bad checkpoints are reported and
skipped, not moved) and needs neither the optimizer nor the data: the arrays are read in their stored
structure and the EMA (or raw) parameters picked out, merged with the run's frozen parameters.

`load_pretrained` serves ``config.init_from``: pretrained weights (a jdpm run, or official PyTorch
weights through `jdpm.convert`) placed into a sub-tree of a fresh run's parameters.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdpm import fields, models
from jdpm.training import freeze

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class ConfigError(ValueError):
  """A config or run directory that cannot work; the message says which field or file and what to do."""


def model_kwargs(config) -> dict:
  """The keyword arguments of ``jdpm.models.create`` from ``config.model`` (all fields but ``name``)."""
  kwargs = config.model.to_dict()
  kwargs.pop("name")
  return fields.hashable(kwargs)  # a config.json gives lists where module fields need tuples


def create_model(config, **overrides):
  """The model of a config (``jdpm.models.create(config.model.name, **config.model)``), with overrides."""
  try:
    return models.create(config.model.name, **{**model_kwargs(config), **overrides})
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.model: {e}") from None


def load_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run stored in ``workdir/config.json``."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"{workdir} does not exist (expected a train.py work directory).")
  path = workdir / CONFIG_FILE
  if not path.is_file():
    raise ConfigError(f"{workdir} has no {CONFIG_FILE}; is it a train.py work directory? (Pass the config "
                      "explicitly if it is one whose config was lost.)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise ConfigError(f"{path} is not a readable config ({e}).") from None


def restore(workdir, *, step=None, raw_params=False, config=None):
  """Reads a trained run for inference.

  Args:
    workdir: a train.py work directory.
    step: the checkpoint step (default: the newest good one).
    raw_params: the raw parameters instead of their EMA.
    config: use this config instead of the stored one (e.g. to change sampling options).
  Returns:
    (config, model, variables, step): variables = {"params": the EMA (or raw) parameters merged with the
    run's frozen parameters}, as jax arrays on the first local device.
  Raises:
    ConfigError: no such directory, no config, no checkpoint, or no readable checkpoint.
  """
  from jdpm.training import checkpoint as checkpoint_lib  # Orbax is only needed here

  workdir = pathlib.Path(workdir)
  config = config or load_config(workdir)
  model = create_model(config)
  ckpt_dir = workdir / CHECKPOINT_DIR
  if not ckpt_dir.is_dir():
    raise ConfigError(f"no checkpoint in {ckpt_dir}; train first with train.py.")
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
  try:
    read = ckpt.read(step)
  except checkpoint_lib.CheckpointError as e:
    raise ConfigError(str(e)) from None
  finally:
    ckpt.close()
  if read is None:
    raise ConfigError(f"no checkpoint in {ckpt_dir}; train first with train.py.")
  state, frozen, step = read
  params = state["params"] if raw_params else state["ema_params"]
  return config, model, {"params": freeze.merge(params, frozen)}, step


# -- init_from: pretrained weights into a fresh run ---------------------------------------------------------

def _subtree(tree, path, what):
  node = tree
  for key in [k for k in path.split("/") if k]:
    if not hasattr(node, "keys") or key not in node:
      have = sorted(node.keys()) if hasattr(node, "keys") else []
      raise ConfigError(f"init_from.{what}={path!r}: no {key!r} in the {what} parameters (found {have}).")
    node = node[key]
  return node


def pretrained_params(init_from, config):
  """The parameter tree named by ``config.init_from`` (as numpy arrays), before placing it."""
  path = pathlib.Path(init_from.path)
  kind = init_from.get("kind", "auto")
  if kind == "auto":
    kind = "jdpm" if path.is_dir() and (path / CONFIG_FILE).is_file() else "official"
  if kind == "jdpm":
    _, _, variables, _ = restore(path, raw_params=init_from.get("params", "ema") == "raw")
    params = variables["params"]
  elif kind == "official":
    if not path.exists():
      raise ConfigError(f"init_from.path={str(path)!r} does not exist.")
    from jdpm import convert
    params = convert.from_official(str(path), config.model.name, **model_kwargs(config))["params"]
  else:
    raise ConfigError(f"init_from.kind must be 'auto', 'jdpm' or 'official'; got {kind!r}.")
  return jax.tree.map(np.asarray, _subtree(params, init_from.get("source", ""), "source"))


def load_pretrained(config, params, frozen):
  """Places ``config.init_from``'s weights into a fresh run's (trainable, frozen) parameters.

  Every leaf of the target sub-tree must get a source leaf of the same shape, and the source may hold
  nothing else: a mismatch names the first differing paths. Returns the new (trainable, frozen) pair,
  on the shardings of the old leaves.
  """
  init_from = config.init_from
  source = pretrained_params(init_from, config)
  target_path = init_from.get("target", "")
  full = freeze.merge(params, frozen)
  target = _subtree(full, target_path, "target")
  src, dst = freeze.flatten_dict(source), freeze.flatten_dict(target)
  problems = [f"{'/'.join(map(str, k))}: pretrained {np.shape(src[k])} vs model {tuple(dst[k].shape)}"
              for k in sorted(src.keys() & dst.keys(), key=str) if np.shape(src[k]) != tuple(dst[k].shape)]
  problems += [f"{'/'.join(map(str, k))}: missing from the pretrained weights"
               for k in sorted(dst.keys() - src.keys(), key=str)]
  problems += [f"{'/'.join(map(str, k))}: in the pretrained weights, not in the model"
               for k in sorted(src.keys() - dst.keys(), key=str)]
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ConfigError(f"init_from {init_from.path!r} does not fit the model's parameters at "
                      f"{target_path or 'the root'!r}: " + "; ".join(problems[:5]) + more + ".")
  prefix = tuple(k for k in target_path.split("/") if k)
  flat = freeze.flatten_dict(full)
  for keys, value in src.items():
    old = flat[prefix + keys]
    flat[prefix + keys] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
  new_params, new_frozen = {}, {}
  frozen_keys = set(freeze.flatten_dict(frozen))
  for keys, leaf in flat.items():
    (new_frozen if keys in frozen_keys else new_params)[keys] = leaf
  return freeze.unflatten_dict(new_params), freeze.unflatten_dict(new_frozen)
