"""Reference statistics of a dataset, in the .npz layout of OpenAI's ADM evaluator.

An ADM reference batch (guided-diffusion's evaluations/, e.g. VIRTUAL_imagenet256_labeled.npz, used by
DiT, MDT and EDT for FID-50K) holds:

  mu       (2048,)        mean of the Inception-v3 pool_3 features over the whole dataset
  sigma    (2048, 2048)   their covariance (np.cov: unbiased, divided by N - 1)
  mu_s     (2023,)        mean of the spatial features for sFID: the first 7 channels of the mixed_6/conv
                          output, a 17 x 17 x 7 map flattened in (H, W, C) order
  sigma_s  (2023, 2023)   their covariance
  arr_0    (N, H, W, 3)   uint8 images in [0, 255] (10,000 dataset images), from which the evaluator
                          recomputes pool features for precision/recall; it reads arr_0 even when the
                          statistics are present

A sample batch is the same file with only arr_0 (50,000 samples; arr_1 holds class labels when the
sampling script was class-conditional); without `mu` the evaluator computes all four statistics from the
images. pytorch-fid's statistics files hold just mu and sigma.

jdpm writes mu, sigma, mu_s, sigma_s (float64) under the same names, plus one key ADM does not have:

  pool_features (K, 2048) float32  pool features for precision/recall, so that evaluation needs no
                                   Inception run over reference images

and arr_0 only when given images (which makes the file usable by the ADM evaluator itself).
"""

import dataclasses
import os

import numpy as np

from jdpm.eval.feature_stats import FeatureStats
from jdpm.eval.frechet import gaussian_stats

POOL_KEYS = ("mu", "sigma")
SPATIAL_KEYS = ("mu_s", "sigma_s")
POOL_FEATURES_KEY = "pool_features"
IMAGES_KEY = "arr_0"


@dataclasses.dataclass(frozen=True)
class Reference:
  """Statistics of a feature set (usually real data; generated samples can be stored the same way).

  Attributes:
    mu, sigma: (D,) and (D, D) float64 pool-feature mean and covariance (FID).
    mu_s, sigma_s: (Ds,) and (Ds, Ds) spatial-feature mean and covariance (sFID), or None.
    pool_features: (K, D) float32 pool features for precision/recall, or None.
    has_images: whether the file holds arr_0 images (not loaded: 10k ImageNet images take 2 GB).
  """
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: np.ndarray | None = None
  sigma_s: np.ndarray | None = None
  pool_features: np.ndarray | None = None
  has_images: bool = False

  def save(self, path, images=None):
    """Writes the ADM-layout .npz (see the module docstring); `images`: optional (N, H, W, 3) uint8."""
    arrays = {"mu": self.mu, "sigma": self.sigma}
    if self.mu_s is not None:
      arrays.update(mu_s=self.mu_s, sigma_s=self.sigma_s)
    if self.pool_features is not None:
      arrays[POOL_FEATURES_KEY] = np.asarray(self.pool_features, np.float32)
    if images is not None:
      images = np.asarray(images)
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8 in [0, 255]; got {images.dtype} {images.shape}.")
      arrays[IMAGES_KEY] = images
    # Uncompressed, like the ADM files: covariances and features do not compress, and it keeps loading fast.
    with open(os.fspath(path), "wb") as f:
      np.savez(f, **arrays)


def make_reference(pool_features, spatial_features=None, *, keep_features=True):
  """Statistics of features held in memory or in `FeatureStats` accumulators.

  Args:
    pool_features: (N, D) pool features, or a FeatureStats over them (its kept rows become pool_features).
    spatial_features: (N, Ds) spatial features or a FeatureStats, or None (no sFID statistics).
    keep_features: for an array `pool_features`, which rows to store for precision/recall: True (all),
      False (none) or an int (the first that many; ADM keeps 10,000).
  Returns:
    a Reference.
  """
  if isinstance(pool_features, FeatureStats):
    mu, sigma = pool_features.mean_and_covariance()
    kept = pool_features.features if len(pool_features.features) else None
  else:
    pool_features = np.asarray(pool_features)
    mu, sigma = gaussian_stats(pool_features)
    if keep_features is True:
      kept = pool_features
    elif keep_features is False or int(keep_features) == 0:
      kept = None
    else:
      kept = pool_features[:int(keep_features)]
    kept = None if kept is None else np.asarray(kept, np.float32)
  mu_s = sigma_s = None
  if isinstance(spatial_features, FeatureStats):
    mu_s, sigma_s = spatial_features.mean_and_covariance()
  elif spatial_features is not None:
    mu_s, sigma_s = gaussian_stats(spatial_features)
  return Reference(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, pool_features=kept)


def save_reference(path, pool_features, spatial_features=None, *, images=None, keep_features=True):
  """`make_reference` followed by `Reference.save(path, images)`; returns the Reference."""
  reference = make_reference(pool_features, spatial_features, keep_features=keep_features)
  reference.save(path, images=images)
  return reference


def load_reference(path, *, require_spatial=True):
  """Reads reference statistics: an ADM reference batch, a file from `save_reference`, or (with
  require_spatial=False) a pytorch-fid statistics file.

  Args:
    path: the .npz file.
    require_spatial: whether mu_s and sigma_s must be present (needed for sFID).
  Returns:
    a Reference; pool_features is None unless the file has them (ADM files do not).
  Raises:
    ValueError: naming the missing keys when the file lacks required statistics.
  """
  with np.load(os.fspath(path), allow_pickle=False) as data:
    keys = set(data.files)
    required = POOL_KEYS + (SPATIAL_KEYS if require_spatial else ())
    missing = [key for key in required if key not in keys]
    if not missing and not require_spatial and (("mu_s" in keys) != ("sigma_s" in keys)):
      missing = [key for key in SPATIAL_KEYS if key not in keys]
    if missing:
      raise ValueError(
          f"{os.fspath(path)} is missing reference statistics {missing}; found keys {sorted(keys)}. A reference "
          f"file holds mu, sigma (Inception pool_3 features, for FID) and mu_s, sigma_s (spatial features, "
          f"for sFID), as in the ADM evaluator's reference batches; pass require_spatial=False to read a file "
          f"with only mu and sigma (e.g. pytorch-fid statistics).")
    mu, sigma = _stats(data, "mu", "sigma")
    mu_s = sigma_s = None
    if "mu_s" in keys:
      mu_s, sigma_s = _stats(data, "mu_s", "sigma_s")
    pool_features = None
    if POOL_FEATURES_KEY in keys:
      pool_features = np.asarray(data[POOL_FEATURES_KEY], np.float32)
      if pool_features.ndim != 2 or pool_features.shape[1] != mu.shape[0]:
        raise ValueError(f"{POOL_FEATURES_KEY} must be (K, {mu.shape[0]}); got {pool_features.shape}.")
    return Reference(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, pool_features=pool_features,
                     has_images=IMAGES_KEY in keys)


def _stats(data, mu_key, sigma_key):
  mu = np.asarray(data[mu_key], np.float64)
  sigma = np.asarray(data[sigma_key], np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{mu_key} must be (D,) and {sigma_key} (D, D); got {mu.shape} and {sigma.shape}.")
  return mu, sigma
