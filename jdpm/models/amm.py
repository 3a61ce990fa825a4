"""EDT's Attention Modulation Matrix (AMM): a training-free, distance-based reweighting of
post-softmax attention that strengthens local detail in chosen blocks.

For two tokens at Euclidean grid distance d on an n×n token grid,

    M(d) = ½·exp(cos(f·d)),   f = 2π / (4(n−1)√2),

and M(d) = 0 for d > R = √((n−1)² + 2²) (the distance from token (0, 0) to token (2, n−1)). The
largest grid distance (n−1)√2 maps to f·d = π/2, so M decreases monotonically from e/2 at d = 0 to
½ at the far corner before the cut. The matrix multiplies the softmax output element-wise (no
renormalisation) in the blocks listed in a model's ``amm_blocks``; a model applies it when called
with ``amm=True``. It adds no parameters: switching AMM on or off is an apply-time choice.

Official arrangements (global block indices, as in the EDT paper and code) are listed below.
"""

import functools

import numpy as np

# Global block indices that get AMM in the official code.
EDT_SB_AMM_BLOCKS = (7, 10)          # EDT-S/2, EDT-B/2 (the official default, tuned for CFG ≤ 1.5).
EDT_SB_AMM_BLOCKS_HIGH_CFG = (8,)    # EDT-S/2, EDT-B/2: the official alternative for CFG ≥ 2.
EDT_XL_AMM_BLOCKS = (23, 25)         # EDT-XL/2.
EDT_XL_AMM_BLOCKS_ALT = (24,)        # EDT-XL/2: the official alternative arrangement.
DIT_XL_AMM_BLOCKS = (15, 17, 19, 22, 24)  # DiT-XL/2 (official alternation for CFG 1).
DIT_S_AMM_BLOCKS = (8, 10)           # DiT-S/2.
MDTV2_S_AMM_BLOCKS = (8,)            # MDTv2-S/2.


def cutoff_distance(grid_size):
  """R = √((n−1)² + 4): token pairs farther apart than R get zero weight."""
  return float(np.sqrt((grid_size - 1) ** 2 + 4))


def _matrix(grid_size, xp):
  """The matrix computed with the array module ``xp`` (numpy or jax.numpy), in float32."""
  token = xp.arange(grid_size * grid_size)
  rows, cols = token // grid_size, token % grid_size
  squared = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
  distance = xp.sqrt(squared.astype(xp.float32))
  f = xp.float32(2 * np.pi / (4 * (grid_size - 1) * np.sqrt(2)))
  values = xp.exp(xp.cos(f * distance)) / xp.float32(2)  # The reference's float32 operations.
  # The reference zeroes values below the value at distance R; M decreases with d, so that is
  # d > R. Comparing integer squared distances makes the cut exact.
  return xp.where(squared > (grid_size - 1) ** 2 + 4, xp.float32(0), values).astype(xp.float32)


@functools.lru_cache(maxsize=None)
def _cached_numpy_matrix(grid_size):
  matrix = _matrix(grid_size, np)
  matrix.setflags(write=False)
  return matrix


def modulation_matrix(grid_size, xp=np):
  """The (N, N) float32 Attention Modulation Matrix of an n×n token grid, N = n².

  Args:
    grid_size: n ≥ 2; tokens are in row-major order (index r·n + c).
    xp: ``numpy`` (default) for a cached, read-only numpy array, or ``jax.numpy`` to compute it
      inside a traced function (models do this: a small program instead of an N×N constant).

  Returns:
    (n², n²) float32, symmetric, e/2 on the diagonal, zero for pairs farther apart than
    ``cutoff_distance(n)``. Equal to the official ``modulation_matrix(n, 3n)`` up to float32
    rounding of cos/exp (≤ 1.2e-7), with the same zeros.
  """
  if not isinstance(grid_size, (int, np.integer)) or grid_size < 2:
    raise ValueError(f"The Attention Modulation Matrix needs a token grid of side >= 2, got "
                     f"grid_size={grid_size!r}.")
  if xp is np:
    return _cached_numpy_matrix(int(grid_size))
  return _matrix(int(grid_size), xp)


def check_amm_blocks(amm_blocks, depth, model_name="the model"):
  """Validates AMM block indices; returns them as a sorted tuple of ints.

  Args:
    amm_blocks: iterable of global block indices (0-based, counting every transformer block in
      forward order).
    depth: total number of blocks of the model.
    model_name: used in error messages.

  Raises:
    ValueError for an index outside [0, depth) or a non-integer index.
  """
  blocks = []
  for index in amm_blocks:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise ValueError(f"amm_blocks must hold integer block indices, got {index!r}.")
    if not 0 <= index < depth:
      raise ValueError(f"amm_blocks contains block {index}, but {model_name} has {depth} blocks "
                       f"(valid indices 0..{depth - 1}). Block indices are global: they count "
                       "every transformer block in forward order.")
    blocks.append(int(index))
  return tuple(sorted(set(blocks)))


__all__ = ["DIT_S_AMM_BLOCKS", "DIT_XL_AMM_BLOCKS", "EDT_SB_AMM_BLOCKS",
           "EDT_SB_AMM_BLOCKS_HIGH_CFG", "EDT_XL_AMM_BLOCKS", "EDT_XL_AMM_BLOCKS_ALT",
           "MDTV2_S_AMM_BLOCKS", "check_amm_blocks", "cutoff_distance", "modulation_matrix"]
