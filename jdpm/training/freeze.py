"""Frozen parameters: split a parameter tree by name patterns, and merge it back for the forward pass.

A model's parameters are one nested dict. Some runs train only part of it: DP-IR trains a small
fusion module beside a frozen restorer and denoiser, DisDiff an encoder and decoder beside a
frozen pretrained UNet. `config.frozen_patterns` names the frozen part by regular expressions
over '/'-joined parameter paths (``re.fullmatch``, as big_vision's ``optax.py``), e.g.
``("unet/.*",)``. The trainer then keeps two trees:

  trainable  in the optimizer, differentiated, averaged by the EMA, in the train state;
  frozen     an argument of the update step that is never differentiated nor updated, saved beside
             the state in every checkpoint (so a run is complete without its pretrained source).

The objective sees `merge(trainable, frozen)`, the same tree the model was initialised with.
"""

import re

import flax.traverse_util
import jax


def _path_name(path):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


# Nested dict <-> {(key, ...): leaf}: Flax's own helpers (they also accept FrozenDicts).
flatten_dict = flax.traverse_util.flatten_dict
unflatten_dict = flax.traverse_util.unflatten_dict


def split(params, patterns):
  """(trainable, frozen): the leaves whose path fully matches one of `patterns` go to `frozen`.

  Args:
    params: a nested dict of parameters (Flax's "params" collection).
    patterns: regular expressions over paths such as ``"unet/down_0/conv/kernel"``.
  Returns:
    two nested dicts with the same paths as `params`, disjoint; `frozen` is {} without patterns.
  Raises:
    ValueError: a pattern matches no parameter (a typo would silently train everything), or every
      parameter is frozen (nothing would train).
  """
  patterns = tuple(patterns or ())
  if not patterns:
    return params, {}
  compiled = [re.compile(p) for p in patterns]
  flat = flatten_dict(params)
  names = {keys: "/".join(map(str, keys)) for keys in flat}
  used = [False] * len(compiled)
  trainable, frozen = {}, {}
  for keys, leaf in flat.items():
    hits = [i for i, rx in enumerate(compiled) if rx.fullmatch(names[keys])]
    for i in hits:
      used[i] = True
    (frozen if hits else trainable)[keys] = leaf
  unused = [p for p, u in zip(patterns, used) if not u]
  if unused:
    examples = ", ".join(sorted(names.values())[:5])
    raise ValueError(f"frozen_patterns {unused} match no parameter (paths look like: {examples}, ...).")
  if not trainable:
    raise ValueError(f"frozen_patterns {list(patterns)} freeze every parameter; nothing would train.")
  return unflatten_dict(trainable), unflatten_dict(frozen)


def merge(trainable, frozen):
  """The full parameter tree from the two halves of `split` (frozen may be None or {})."""
  if not frozen:
    return trainable
  flat = flatten_dict(trainable)
  for keys, leaf in flatten_dict(frozen).items():
    if keys in flat:
      raise ValueError(f"parameter {'/'.join(map(str, keys))} is both trainable and frozen.")
    flat[keys] = leaf
  return unflatten_dict(flat)


def paths(tree):
  """The '/'-joined paths of a tree's leaves, sorted (for messages and tests)."""
  return sorted(_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])
