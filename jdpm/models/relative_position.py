"""Learnable 2-D relative position bias for attention over a square token grid (BEiT/Swin style).

Every pair of tokens (i, j) on an n×n grid has an offset (Δrow, Δcol) = (r_i − r_j, c_i − c_j) with
each component in [−(n−1), n−1]. A table of (2n−1)² rows × H heads holds one learnable logit per
offset and head; the bias added to the attention logits of head h is ``table[index[i, j], h]``.
The row index is ``(Δrow + n − 1)·(2n − 1) + (Δcol + n − 1)``, the layout of the reference
implementations, so official tables load unchanged. Used by EDT and MDTv2.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jdpm.models import layers

Dtype = Any


@functools.lru_cache(maxsize=None)
def _cached_index(grid_size):
  n = grid_size
  rows, cols = np.divmod(np.arange(n * n), n)
  d_row = rows[:, None] - rows[None, :] + n - 1  # In [0, 2n − 2].
  d_col = cols[:, None] - cols[None, :] + n - 1
  index = (d_row * (2 * n - 1) + d_col).astype(np.int32)
  index.setflags(write=False)
  return index


def relative_position_index(grid_size):
  """Table row of every token pair on a ``grid_size × grid_size`` grid.

  Args:
    grid_size: n, the side of the token grid; tokens are in row-major order (index r·n + c).

  Returns:
    A read-only (n², n²) int32 numpy array with entries in [0, (2n−1)²).
  """
  if grid_size < 1:
    raise ValueError(f"grid_size must be a positive integer, got {grid_size}.")
  return _cached_index(int(grid_size))


class RelativePositionBias(nn.Module):
  """The (H, N, N) additive attention bias of an n×n token grid, N = n².

  Attributes:
    grid_size: n.
    num_heads: H.
    extra_rows: unused rows appended to the table (MDTv2's official table has 3, kept so its
      checkpoints convert without reshaping); they never reach the output.

  Parameter ``relative_position_bias_table``: ((2n−1)² + extra_rows, H), initialised N(0, 0.02²)
  as the reference.
  """
  grid_size: int
  num_heads: int
  extra_rows: int = 0
  dtype: Dtype = jnp.float32

  @property
  def num_offsets(self):
    return (2 * self.grid_size - 1) ** 2

  @nn.compact
  def __call__(self):
    """Returns the (num_heads, N, N) bias in ``dtype``."""
    table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                       (self.num_offsets + self.extra_rows, self.num_heads), jnp.float32)
    # bias[(r_i, c_i), (r_j, c_j)] = table[(r_i − r_j + n − 1)·(2n − 1) + (c_i − c_j + n − 1)]:
    # index the (2n−1, 2n−1) offset grid by two small (n, n) offset tables instead of an
    # (N, N) index array, which would be a large constant in the compiled program.
    n = self.grid_size
    offsets = table[: self.num_offsets].reshape(2 * n - 1, 2 * n - 1, self.num_heads)
    coords = np.arange(n)
    shift = jnp.asarray(coords[:, None] - coords[None, :] + n - 1)  # [i, j] → i − j + n − 1.
    bias = offsets[shift[:, None, :, None], shift[None, :, None, :]]  # (n, n, n, n, H)
    n_tokens = n * n
    bias = bias.reshape(n_tokens, n_tokens, self.num_heads).transpose(2, 0, 1)
    return bias.astype(self.dtype)


class RelativePositionAttention(layers.Attention):
  """``layers.Attention`` with a learnable relative position bias over a square token grid.

  Parameters: ``qkv``, ``proj`` (as ``layers.Attention``) and ``rel_pos_bias`` (a
  ``RelativePositionBias``), the layout of the official EDT/MDTv2 attention modules.

  Attributes (besides ``num_heads``, ``qkv_bias``, ``dtype``):
    extra_rows: unused rows of the bias table (see ``RelativePositionBias``).
  """
  extra_rows: int = 0

  @nn.compact
  def __call__(self, x, bias=None, modulation=None):
    """x: (B, N, D) with N = n² tokens of an n×n grid in row-major order → (B, N, D).

    ``bias`` (optional) is added to the relative position bias; ``modulation`` is a post-softmax
    multiplicative matrix (see ``layers.Attention``).
    """
    grid_size = math.isqrt(x.shape[1])
    if grid_size * grid_size != x.shape[1]:
      raise ValueError(f"Relative position attention needs a square token grid, got "
                       f"{x.shape[1]} tokens.")
    rel_bias = RelativePositionBias(grid_size, self.num_heads, self.extra_rows, dtype=self.dtype,
                                    name="rel_pos_bias")()
    bias = rel_bias if bias is None else rel_bias + bias
    return super().__call__(x, bias, modulation)


__all__ = ["RelativePositionAttention", "RelativePositionBias", "relative_position_index"]
