"""Improved precision and recall (Kynkäänniemi et al., 2019) as OpenAI's ADM evaluator computes them.

Each feature set approximates its manifold by balls: around every point, a ball reaching to its k-th
nearest neighbour within the same set (k = 3; the point itself is the 0-th neighbour and does not count).

  precision = fraction of sample points inside at least one reference ball
  recall    = fraction of reference points inside at least one sample ball

Conventions kept from the ADM evaluator: distances are squared Euclidean distances (radii are squared
too), computed as |u|^2 - 2 u.v + |v|^2 clipped at 0; "inside" is `distance <= radius`, boundary included.
One difference: ADM first tries the distance blocks in float16 (falling back to float32 on overflow);
here they are float32 throughout, which can flip only points lying within ~1e-3 of a ball's boundary.

The N x M distance matrix is never formed: rows and columns go in blocks of `block_size`, keeping the
k + 1 smallest distances per row (for radii) or the "inside any ball" flags (for precision/recall), so
50k x 50k needs a few block_size^2 float32 buffers. backend="jax" computes each block with jax.numpy on the
default device (a GPU/TPU, where 50k x 50k takes seconds) and sends only the reductions back to the host.
"""

import functools

import numpy as np

DEFAULT_K = 3
DEFAULT_BLOCK_SIZE = 5000


def precision_recall(reference_features, sample_features, *, k=DEFAULT_K, block_size=DEFAULT_BLOCK_SIZE,
                     backend="numpy", reference_radii=None, sample_radii=None):
  """Improved precision and recall of samples against a reference set.

  Args:
    reference_features: (N, D) features of real data (the ADM reference batches hold 10k).
    sample_features: (M, D) features of generated samples.
    k: neighbourhood size of the manifold balls.
    block_size: rows/columns per distance block (memory ~ 3 block_size^2 float32).
    backend: "numpy" or "jax".
    reference_radii, sample_radii: optional precomputed `manifold_radii` ((N,) and (M,)) for the same k.
  Returns:
    (precision, recall) as Python floats.
  """
  kernels = _kernels(backend)
  reference = _as_features(reference_features, "reference_features")
  samples = _as_features(sample_features, "sample_features")
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(f"feature dimensions differ: reference {reference.shape[1]}, samples {samples.shape[1]}.")
  if reference_radii is None:
    reference_radii = manifold_radii(reference, k=k, block_size=block_size, backend=backend)
  if sample_radii is None:
    sample_radii = manifold_radii(samples, k=k, block_size=block_size, backend=backend)
  reference_radii = _as_radii(reference_radii, len(reference), "reference_radii")
  sample_radii = _as_radii(sample_radii, len(samples), "sample_radii")
  reference, samples = kernels.prepare(reference), kernels.prepare(samples)

  reference_in = np.zeros((len(reference),), bool)  # inside some sample ball -> recall
  sample_in = np.zeros((len(samples),), bool)  # inside some reference ball -> precision
  for r0 in range(0, len(reference), block_size):
    r1 = min(r0 + block_size, len(reference))
    for s0 in range(0, len(samples), block_size):
      s1 = min(s0 + block_size, len(samples))
      ref_hit, sample_hit = kernels.inside(reference[r0:r1], reference_radii[r0:r1],
                                           samples[s0:s1], sample_radii[s0:s1])
      reference_in[r0:r1] |= ref_hit
      sample_in[s0:s1] |= sample_hit
  return float(np.mean(sample_in)), float(np.mean(reference_in))


def manifold_radii(features, *, k=DEFAULT_K, block_size=DEFAULT_BLOCK_SIZE, backend="numpy"):
  """Squared distance from each point to its k-th nearest neighbour in the same set, self excluded.

  Args:
    features: (N, D) features, N > k.
  Returns:
    (N,) float32 squared radii.
  """
  kernels = _kernels(backend)
  features = _as_features(features, "features")
  num = len(features)
  if not 0 < k < num:
    raise ValueError(f"k-th neighbour radii need 0 < k < N; got k = {k} with N = {num}.")
  radii = np.empty((num,), np.float32)
  features = kernels.prepare(features)
  for r0 in range(0, num, block_size):
    r1 = min(r0 + block_size, num)
    best = np.zeros((r1 - r0, 0), np.float32)  # the k + 1 smallest distances seen so far, unsorted
    for c0 in range(0, num, block_size):
      c1 = min(c0 + block_size, num)
      block_best = kernels.smallest(features[r0:r1], features[c0:c1], k + 1, r0 - c0)
      best = _smallest(np.concatenate([best, block_best], axis=1), k + 1)
    # Column 0 of the sorted row is the point itself (distance 0), so the largest of the k + 1 kept is the
    # k-th neighbour proper, as ADM's partition at index k.
    radii[r0:r1] = best.max(axis=1)
  return radii


def pairwise_sq_distances(u, v):
  """(n, m) float32 squared Euclidean distances between the rows of (n, D) u and (m, D) v, clipped at 0."""
  u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
  dist = u @ v.T
  dist *= -2.0
  dist += np.einsum("ij,ij->i", u, u)[:, None]
  dist += np.einsum("ij,ij->i", v, v)[None, :]
  return np.maximum(dist, 0.0, out=dist)


def _smallest(values, count):
  """The `count` smallest entries of each row (unsorted), or all of them if the row is shorter."""
  if values.shape[1] <= count:
    return values
  return np.partition(values, count - 1, axis=1)[:, :count]


class _NumpyKernels:
  """Distance-block reductions on the host."""

  @staticmethod
  def prepare(features):
    return features

  @staticmethod
  def smallest(rows, cols, count, diagonal):
    dist = pairwise_sq_distances(rows, cols)
    # Where rows and columns are the same points (row i == column i + diagonal), the distance is exactly 0;
    # rounding in the expansion could otherwise let a near neighbour undercut the point itself.
    idx = np.arange(max(0, -diagonal), min(len(rows), len(cols) - diagonal))
    dist[idx, idx + diagonal] = 0.0
    return _smallest(dist, count)

  @staticmethod
  def inside(reference, reference_radii, samples, sample_radii):
    dist = pairwise_sq_distances(reference, samples)
    return np.any(dist <= sample_radii[None, :], axis=1), np.any(dist <= reference_radii[:, None], axis=0)


class _JaxKernels:
  """The same reductions with jax.numpy on the default device; only (rows, count) or flags come back."""

  def __init__(self):
    import jax  # Imported here so that jdpm.eval stays importable and light without touching JAX.
    import jax.numpy as jnp

    def sq_dist(u, v):
      # HIGHEST: a TPU would otherwise multiply in bfloat16, far too coarse for nearest neighbours.
      dot = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
      return jnp.maximum(jnp.sum(u * u, 1)[:, None] - 2.0 * dot + jnp.sum(v * v, 1)[None, :], 0.0)

    @functools.partial(jax.jit, static_argnums=2)
    def smallest(rows, cols, count, diagonal):
      dist = sq_dist(rows, cols)
      same = jnp.arange(rows.shape[0])[:, None] + diagonal == jnp.arange(cols.shape[0])[None, :]
      dist = jnp.where(same, 0.0, dist)
      return -jax.lax.top_k(-dist, min(count, cols.shape[0]))[0]

    @jax.jit
    def inside(reference, reference_radii, samples, sample_radii):
      dist = sq_dist(reference, samples)
      return jnp.any(dist <= sample_radii[None, :], axis=1), jnp.any(dist <= reference_radii[:, None], axis=0)

    self._smallest, self._inside = smallest, inside
    self._device_put = jax.device_put

  def prepare(self, features):
    # One transfer per feature set; the blocks are then sliced on the device.
    return self._device_put(features)

  def smallest(self, rows, cols, count, diagonal):
    return np.asarray(self._smallest(rows, cols, count, np.int32(diagonal)))

  def inside(self, reference, reference_radii, samples, sample_radii):
    ref_hit, sample_hit = self._inside(reference, reference_radii, samples, sample_radii)
    return np.asarray(ref_hit), np.asarray(sample_hit)


@functools.cache
def _kernels(backend):
  if backend == "numpy":
    return _NumpyKernels()
  if backend == "jax":
    return _JaxKernels()
  raise ValueError(f"backend must be 'numpy' or 'jax'; got {backend!r}.")


def _as_features(features, name):
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty (N, D) array; got shape {features.shape}.")
  return features


def _as_radii(radii, num, name):
  radii = np.asarray(radii, np.float32).reshape(-1)
  if radii.shape != (num,):
    raise ValueError(f"{name} must have shape ({num},); got {radii.shape}.")
  return radii
