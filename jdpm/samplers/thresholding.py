"""Dynamic thresholding of data predictions (Saharia et al. 2022, "Imagen"), as in DPM-Solver."""

import jax.numpy as jnp


def dynamic_thresholding(x0, ratio=0.995, max_val=1.0):
  """Clips each sample's x0 to its `ratio`-quantile of |x0| (at least max_val) and rescales by it.

  Args:
    x0: (B, ...) predicted data.
    ratio: quantile of |x0| per sample (linear interpolation, as torch.quantile).
    max_val: the smallest threshold; with s = max(quantile, max_val), x0 -> clip(x0, -s, s) / s.
  Returns:
    an array like x0. Samples already within [-max_val, max_val] are only divided by max_val.
  """
  flat = jnp.abs(x0).reshape(x0.shape[0], -1)
  s = jnp.maximum(jnp.quantile(flat, ratio, axis=1), max_val)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s
