"""Conditioning as a pytree with an explicit null condition (pure jnp; no Flax).

A denoiser's condition can be anything a network takes besides (x, t): class labels (B,), a text
context (B, L, D) with its mask (B, L), a degraded image (B, H, W, C), factor codes, or a dict of
them. Every leaf has the batch as its leading axis.

The *null condition* is what classifier-free guidance and condition dropping substitute: a pytree
with the structure of the condition whose leaves are broadcastable to the condition's leaves, e.g.

  labels (B,) int                     null = num_classes (the null class, a scalar)
  {"label": (B,), "context": (B, L, D)}  null = {"label": num_classes, "context": zeros((L, D))}

These three functions are the only places where a condition is combined with its null:
`drop` (training: per-example replacement), `with_null` (guidance: [cond; null] on a doubled
batch) and `null_like` (a batch of nulls).
"""

import jax
import jax.numpy as jnp


def _leaf_pairs(cond, null):
  """(cond leaves, null leaves, treedef); the null must have the condition's tree structure."""
  leaves, treedef = jax.tree.flatten(cond)
  try:
    null_leaves = treedef.flatten_up_to(null)
  except (ValueError, TypeError) as e:
    raise ValueError(f"the null condition must have the structure of the condition "
                     f"({jax.tree.structure(cond)}); got {jax.tree.structure(null)}.") from e
  return leaves, null_leaves, treedef


def _broadcast_null(c, n):
  c = jnp.asarray(c)
  n = jnp.asarray(n, c.dtype)
  try:
    return jnp.broadcast_to(n, c.shape)
  except ValueError:
    raise ValueError(f"a null-condition leaf of shape {n.shape} does not broadcast to the condition's "
                     f"{c.shape}; give a scalar, the per-example shape {c.shape[1:]} or the full shape."
                     ) from None


def null_like(cond, null):
  """A batch of null conditions shaped like `cond` (each null leaf broadcast to its leaf's shape)."""
  leaves, null_leaves, treedef = _leaf_pairs(cond, null)
  return treedef.unflatten([_broadcast_null(c, n) for c, n in zip(leaves, null_leaves)])


def drop(cond, null, dropped):
  """Replaces the condition of the examples where `dropped` (B,) is true by the null condition.

  Training with condition dropout (classifier-free guidance) calls this once on the whole
  condition pytree: an example is either fully conditional or fully unconditional.
  """
  dropped = jnp.asarray(dropped).astype(bool)
  leaves, null_leaves, treedef = _leaf_pairs(cond, null)
  out = []
  for c, n in zip(leaves, null_leaves):
    c = jnp.asarray(c)
    mask = dropped.reshape(dropped.shape + (1,) * (c.ndim - dropped.ndim))
    out.append(jnp.where(mask, _broadcast_null(c, n), c))
  return treedef.unflatten(out)


def with_null(cond, null):
  """[cond; null] along the batch axis: the condition of a doubled-batch guidance call."""
  leaves, null_leaves, treedef = _leaf_pairs(cond, null)
  return treedef.unflatten([jnp.concatenate([jnp.asarray(c), _broadcast_null(c, n)])
                            for c, n in zip(leaves, null_leaves)])


def batch_size(cond):
  """The leading dimension shared by every leaf of `cond` (None for an empty condition)."""
  sizes = {jnp.shape(c)[0] for c in jax.tree.leaves(cond) if jnp.ndim(c) > 0}
  if len(sizes) > 1:
    raise ValueError(f"the condition's leaves disagree on the batch size: {sorted(sizes)}.")
  return sizes.pop() if sizes else None
