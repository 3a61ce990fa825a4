"""Mean and covariance of features, streamed batch by batch.

FID needs the mean and covariance of 50k Inception features. `FeatureStats` accumulates them over batches
in float64, can be saved mid-way and reloaded so that an interrupted evaluation resumes with bit-identical
results, merges with another accumulator (one per host or per shard), and can also keep the raw features
that precision/recall need.

It keeps the running mean and the centred scatter sum_i (x_i - mean)(x_i - mean)^T, combined per batch with
Chan et al.'s pairwise update, rather than sum x and sum x x^T: the raw-sum formula
sum x x^T - n mean mean^T cancels catastrophically, losing a factor (|mean| / std)^2 of precision.
The covariance is the unbiased one (divided by n - 1), as `np.cov` computes it for pytorch-fid and the
ADM evaluator.
"""

import numpy as np


class FeatureStats:
  """Streaming float64 mean and covariance of (B, D) feature batches.

  Attributes:
    dim: D, or None until the first batch.
    count: number of rows added.
    mean: (D,) float64 running mean.
    scatter: (D, D) float64 centred sum of outer products; covariance = scatter / (count - 1).
    keep_features: False, True (keep every row) or an int (keep the first that many rows), for
      precision/recall, which needs the features themselves; kept rows are stored as float32.
  """

  def __init__(self, dim=None, keep_features=False):
    if keep_features is not True and keep_features is not False and int(keep_features) < 0:
      raise ValueError(f"keep_features must be a bool or a non-negative int; got {keep_features!r}.")
    self.keep_features = keep_features
    self.count = 0
    self.dim = self.mean = self.scatter = None
    self._kept = []
    self._num_kept = 0
    if dim is not None:
      self._allocate(dim)

  @property
  def max_kept(self):
    """How many rows may be kept: 0, an int, or None for all."""
    if self.keep_features is True:
      return None
    return 0 if self.keep_features is False else int(self.keep_features)

  def add(self, batch):
    """Adds a (B, D) batch of features (any float or int dtype); returns self."""
    batch = np.asarray(batch)
    if batch.ndim != 2:
      raise ValueError(f"a feature batch must be (B, D); got shape {batch.shape}.")
    if self.dim is None:
      self._allocate(batch.shape[1])
    if batch.shape[1] != self.dim:
      raise ValueError(f"feature batch has D = {batch.shape[1]}; this accumulator holds D = {self.dim}.")
    if batch.shape[0] == 0:
      return self
    self._keep(batch)
    batch = batch.astype(np.float64)
    batch_mean = batch.mean(axis=0)
    centred = batch - batch_mean
    self._combine(batch.shape[0], batch_mean, centred.T @ centred)
    return self

  def merge(self, other):
    """A new accumulator holding this one's rows followed by `other`'s (kept features in that order)."""
    if self.dim is not None and other.dim is not None and self.dim != other.dim:
      raise ValueError(f"cannot merge accumulators of D = {self.dim} and D = {other.dim}.")
    merged = FeatureStats.from_state_dict(self.state_dict())
    if other.count == 0:
      return merged
    if merged.dim is None:
      merged._allocate(other.dim)
    if other._num_kept:
      merged._keep(other.features)
    merged._combine(other.count, other.mean, other.scatter)
    return merged

  def mean_and_covariance(self):
    """((D,), (D, D)) float64 mean and unbiased covariance; needs at least two rows."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature rows; this accumulator has {self.count}.")
    return self.mean.copy(), self.scatter / (self.count - 1)

  @property
  def features(self):
    """(K, D) float32 kept rows, in the order added (K = 0 when keep_features is False)."""
    if self._num_kept == 0:
      return np.zeros((0, self.dim or 0), np.float32)
    if len(self._kept) > 1:
      self._kept = [np.concatenate(self._kept, axis=0)]
    return self._kept[0]

  def state_dict(self):
    """The exact state as a dict of NumPy arrays (all float64 sums stored bit-exactly)."""
    dim = -1 if self.dim is None else self.dim
    state = {
        "dim": np.asarray(dim, np.int64),
        "count": np.asarray(self.count, np.int64),
        # -1 encodes keep_features=True, otherwise the maximum number of rows kept.
        "keep_features": np.asarray(-1 if self.max_kept is None else self.max_kept, np.int64),
        "features": self.features,
    }
    if self.dim is not None:
      state["mean"] = self.mean.copy()
      state["scatter"] = self.scatter.copy()
    return state

  @classmethod
  def from_state_dict(cls, state):
    """Rebuilds an accumulator from `state_dict()` output (or a loaded .npz)."""
    missing = [key for key in ("dim", "count", "keep_features", "features") if key not in state]
    if missing:
      raise ValueError(f"not a FeatureStats state: missing keys {missing}.")
    dim = int(state["dim"])
    keep = int(state["keep_features"])
    stats = cls(None if dim < 0 else dim, keep_features=True if keep < 0 else (keep if keep > 0 else False))
    stats.count = int(state["count"])
    if dim >= 0:
      if "mean" not in state or "scatter" not in state:
        raise ValueError("not a FeatureStats state: missing keys ['mean', 'scatter'].")
      stats.mean = np.array(state["mean"], np.float64)
      stats.scatter = np.array(state["scatter"], np.float64)
    features = np.array(state["features"], np.float32)
    if features.shape[0]:
      stats._kept = [features]
      stats._num_kept = features.shape[0]
    return stats

  def save(self, path):
    """Writes the state to an .npz file (uncompressed: the scatter matrix does not compress)."""
    np.savez(path, **self.state_dict())

  @classmethod
  def load(cls, path):
    """Reads an accumulator written by `save`."""
    with np.load(path, allow_pickle=False) as data:
      return cls.from_state_dict(dict(data))

  def _allocate(self, dim):
    self.dim = int(dim)
    self.mean = np.zeros((self.dim,), np.float64)
    self.scatter = np.zeros((self.dim, self.dim), np.float64)

  def _combine(self, count, mean, scatter):
    # Chan, Golub & LeVeque's pairwise update of (count, mean, centred scatter).
    total = self.count + count
    delta = mean - self.mean
    self.scatter += scatter + np.outer(delta, delta) * (self.count * count / total)
    self.mean += delta * (count / total)
    self.count = total

  def _keep(self, batch):
    room = batch.shape[0] if self.max_kept is None else max(self.max_kept - self._num_kept, 0)
    if room:
      rows = np.array(batch[:room], np.float32)
      self._kept.append(rows)
      self._num_kept += rows.shape[0]
