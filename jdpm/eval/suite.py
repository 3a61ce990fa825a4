"""The five numbers of OpenAI's ADM evaluator (FID, sFID, Inception Score, precision, recall) from features.

Producing the features (Inception-v3 pool_3, spatial mixed_6/conv[..., :7], and the 1008-way logits) is the
feature extractor's job; this module only combines them with a `Reference`.
"""

from collections.abc import Mapping

from jdpm.eval.feature_stats import FeatureStats
from jdpm.eval.frechet import frechet_distance, gaussian_stats
from jdpm.eval.inception_score import ADM_SPLIT_SIZE, inception_score
from jdpm.eval.manifold import DEFAULT_BLOCK_SIZE, DEFAULT_K, precision_recall
from jdpm.eval.reference import Reference

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")


def evaluate(samples, reference, *, metrics=METRICS, k=DEFAULT_K, block_size=DEFAULT_BLOCK_SIZE,
             backend="numpy", split_size=ADM_SPLIT_SIZE):
  """Evaluates generated samples against reference statistics.

  Args:
    samples: either a Reference of the samples (e.g. from `make_reference`; no Inception Score then), or a
      mapping with any of
        "pool_features":    (M, 2048) array, or a FeatureStats (with keep_features for precision/recall);
        "spatial_features": (M, 2023) array or FeatureStats;
        "logits" or "probs": (M, C) class predictions for the Inception Score.
    reference: a Reference (see `load_reference`); precision/recall need its pool_features.
    metrics: which of METRICS to compute; a requested metric whose inputs are missing raises ValueError.
    k, block_size, backend: passed to `precision_recall`.
    split_size: rows per Inception Score split (ADM: 5000, i.e. 10 splits for 50k samples).
  Returns:
    {metric name: Python float} for the requested metrics.
  """
  unknown = [name for name in metrics if name not in METRICS]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}.")
  side = _SampleSide(samples)
  results = {}
  if "fid" in metrics:
    results["fid"] = frechet_distance(*side.pool_stats(), reference.mu, reference.sigma)
  if "sfid" in metrics:
    if reference.mu_s is None:
      raise ValueError("sFID needs a reference with spatial statistics (mu_s, sigma_s).")
    results["sfid"] = frechet_distance(*side.spatial_stats(), reference.mu_s, reference.sigma_s)
  if "inception_score" in metrics:
    results["inception_score"] = side.inception_score(split_size)
  if "precision" in metrics or "recall" in metrics:
    if reference.pool_features is None:
      raise ValueError(
          "precision/recall need the reference's pool_features. An ADM reference batch stores images (arr_0) "
          "instead: compute their Inception pool features and attach them with "
          "dataclasses.replace(reference, pool_features=features).")
    precision, recall = precision_recall(
        reference.pool_features, side.pool_features(), k=k, block_size=block_size, backend=backend)
    results.update({name: value for name, value in (("precision", precision), ("recall", recall))
                    if name in metrics})
  return results


class _SampleSide:
  """Uniform access to the sample statistics, whichever form they came in."""

  def __init__(self, samples):
    if not isinstance(samples, (Reference, Mapping)):
      raise TypeError(f"samples must be a Reference or a mapping of features; got {type(samples).__name__}.")
    self._samples = samples

  def _get(self, key):
    if isinstance(self._samples, Reference):
      return None
    return self._samples.get(key)

  def pool_stats(self):
    if isinstance(self._samples, Reference):
      return self._samples.mu, self._samples.sigma
    return _stats(self._get("pool_features"), "pool_features", "FID")

  def spatial_stats(self):
    if isinstance(self._samples, Reference):
      if self._samples.mu_s is None:
        raise ValueError("sFID needs spatial statistics (mu_s, sigma_s) of the samples.")
      return self._samples.mu_s, self._samples.sigma_s
    return _stats(self._get("spatial_features"), "spatial_features", "sFID")

  def pool_features(self):
    features = (self._samples.pool_features if isinstance(self._samples, Reference)
                else self._get("pool_features"))
    if isinstance(features, FeatureStats):
      features = features.features if len(features.features) else None
    if features is None:
      raise ValueError("precision/recall need the samples' pool features (a FeatureStats accumulator must "
                       "be created with keep_features=True).")
    return features

  def inception_score(self, split_size):
    logits, probs = self._get("logits"), self._get("probs")
    if logits is None and probs is None:
      raise ValueError("the Inception Score needs the samples' class predictions ('logits' or 'probs').")
    if logits is not None:
      return inception_score(logits, from_logits=True, split_size=split_size)
    return inception_score(probs, split_size=split_size)


def _stats(features, key, metric):
  if features is None:
    raise ValueError(f"{metric} needs the samples' {key!r}.")
  if isinstance(features, FeatureStats):
    return features.mean_and_covariance()
  return gaussian_stats(features)
