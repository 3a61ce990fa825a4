"""Disentanglement metrics as disentanglement_lib computes them (NumPy + scikit-learn).

FactorVAE score, DCI (disentanglement, completeness, informativeness), MIG and the beta-VAE score, with
disentanglement_lib's sampling protocol, defaults and order of `RandomState` calls, so a representation
scored here with `np.random.RandomState(seed)` gets the number disentanglement_lib gives it. DisDiff's
evaluation protocol (encode every image, reduce each factor's code to one number with PCA, then run the
metrics on the precomputed codes) is `disdiff_codes` + `IndexedCodes`.

Two levels:
- on given samples (codes (N, num_codes) float, factors (N, num_factors) int):
  `dci(codes_train, factors_train, codes_test, factors_test)`, `mig(codes, factors, num_bins=20)`;
- on a ground-truth source (anything with `factor_sizes`, `sample_factors(n, random_state)` and
  `sample_observations_from_factors(factors, random_state)`, e.g. `jdpm.data.factors.DSprites`) and a
  representation function (observations (B, ...) -> codes (B, num_codes)):
  `compute_factor_vae`, `compute_dci`, `compute_mig`, `compute_beta_vae`.

Layout note: the public functions take samples along axis 0; disentanglement_lib's internal arrays are
(num_codes, N) and (num_factors, N), which the private helpers keep so the formulas read the same.
"""

import numpy as np
import scipy.stats
import sklearn.decomposition
import sklearn.ensemble
import sklearn.linear_model
import sklearn.metrics

# ------------------------------------------------------------------------------------------ input checks


def _check_finite(codes, what="representation"):
  codes = np.asarray(codes)
  if not np.all(np.isfinite(codes)):
    bad = int(np.sum(~np.isfinite(codes)))
    raise ValueError(f"The {what} contains {bad} NaN or infinite values; disentanglement metrics need finite "
                     "codes (check the encoder's output, e.g. for a diverged training run).")
  return codes


def _check_samples(codes, factors, min_samples, what):
  """Validates a (N, num_codes) code matrix and its (N, num_factors) integer factors."""
  codes = _check_finite(np.asarray(codes, dtype=np.float64))
  factors = np.asarray(factors)
  if codes.ndim != 2 or factors.ndim != 2:
    raise ValueError(f"{what}: codes must be (N, num_codes) and factors (N, num_factors); got shapes "
                     f"{codes.shape} and {factors.shape}.")
  if codes.shape[0] != factors.shape[0]:
    raise ValueError(f"{what}: codes have {codes.shape[0]} samples but factors have {factors.shape[0]}; "
                     "give one row of factors per row of codes.")
  if codes.shape[0] < min_samples:
    raise ValueError(f"{what} needs at least {min_samples} samples; got {codes.shape[0]}.")
  if not np.issubdtype(factors.dtype, np.integer):
    if not np.all(factors == np.round(factors)):
      raise ValueError(f"{what}: factors must be integer class indices (discrete ground-truth values).")
    factors = factors.astype(np.int64)
  return codes, factors


def _check_min(value, minimum, name):
  if value < minimum:
    raise ValueError(f"{name} must be at least {minimum}; got {value}.")


class _CheckedRepresentation:
  """Wraps a representation function: its output must be a finite (B, num_codes) array."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, observations):
    codes = np.asarray(self.fn(observations))
    if codes.ndim != 2 or codes.shape[0] != len(observations):
      raise ValueError(f"The representation function must return (batch, num_codes) codes; got shape "
                       f"{codes.shape} for {len(observations)} observations.")
    return _check_finite(codes)


def _num_factors(source):
  return len(source.factor_sizes)


def _sample(source, num, random_state):
  """disentanglement_lib's GroundTruthData.sample: factors first, then observations, same random state."""
  factors = source.sample_factors(num, random_state)
  return factors, source.sample_observations_from_factors(factors, random_state)


# ------------------------------------------------------------------------------------------ sampling


def generate_batch_factor_code(source, representation_function, num_points, random_state, batch_size):
  """Codes (num_codes, num_points) and factors (num_factors, num_points) of `num_points` random samples,
  drawn in batches of `batch_size` (the batching changes the random stream, hence kept)."""
  representations, factors = [], []
  done = 0
  while done < num_points:
    n = min(num_points - done, batch_size)
    batch_factors, observations = _sample(source, n, random_state)
    factors.append(batch_factors)
    representations.append(representation_function(observations))
    done += n
  return np.transpose(np.vstack(representations)), np.transpose(np.vstack(factors))


def obtain_representation(observations, representation_function, batch_size):
  """Codes (num_codes, N) of given observations, computed `batch_size` at a time."""
  parts = [representation_function(observations[i:i + batch_size])
           for i in range(0, len(observations), batch_size)]
  return np.transpose(np.vstack(parts))


# ------------------------------------------------------------------------------------------ DCI


def importance_gbt(x_train, y_train, x_test, y_test, **gbt_kwargs):
  """Importance matrix (num_codes, num_factors) from one gradient-boosting classifier per factor, and the
  mean train and test accuracies. x: (num_codes, N), y: (num_factors, N)."""
  num_factors, num_codes = y_train.shape[0], x_train.shape[0]
  importance = np.zeros((num_codes, num_factors), dtype=np.float64)
  train_acc, test_acc = [], []
  for i in range(num_factors):
    model = sklearn.ensemble.GradientBoostingClassifier(**gbt_kwargs)
    model.fit(x_train.T, y_train[i, :])
    importance[:, i] = np.abs(model.feature_importances_)
    train_acc.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
    test_acc.append(np.mean(model.predict(x_test.T) == y_test[i, :]))
  return importance, np.mean(train_acc), np.mean(test_acc)


def disentanglement_per_code(importance):
  """1 - entropy (base num_factors) of each code's importance over the factors; importance (codes, factors)."""
  return 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])


def _weighted(per_item, importance, axis):
  """Per-code (axis=1) or per-factor (axis=0) scores weighted by their share of the total importance (all
  equal when the importance is all zero)."""
  if importance.sum() == 0.0:
    importance = np.ones_like(importance)
  return float(np.sum(per_item * importance.sum(axis=axis) / importance.sum()))


def disentanglement(importance):
  """D of DCI: per-code disentanglement weighted by each code's share of the total importance."""
  return _weighted(disentanglement_per_code(importance), importance, axis=1)


def completeness_per_factor(importance):
  """1 - entropy (base num_codes) of each factor's importance over the codes."""
  return 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])


def completeness(importance):
  """C of DCI: per-factor completeness weighted by each factor's share of the total importance."""
  return _weighted(completeness_per_factor(importance), importance, axis=0)


def _dci_internal(mus_train, ys_train, mus_test, ys_test, **gbt_kwargs):
  importance, train_acc, test_acc = importance_gbt(mus_train, ys_train, mus_test, ys_test, **gbt_kwargs)
  return {"informativeness_train": float(train_acc), "informativeness_test": float(test_acc),
          "disentanglement": disentanglement(importance), "completeness": completeness(importance),
          "importance_matrix": importance}


def dci(codes_train, factors_train, codes_test, factors_test, **gbt_kwargs):
  """DCI on given samples, as disentanglement_lib's `_compute_dci`.

  Args:
    codes_train, codes_test: (N, num_codes) float codes.
    factors_train, factors_test: (N, num_factors) integer ground-truth factors.
    **gbt_kwargs: passed to sklearn's GradientBoostingClassifier (default: its defaults, as the library).
  Returns:
    dict with "disentanglement", "completeness", "informativeness_train", "informativeness_test" (mean
    accuracy of the per-factor classifiers) and "importance_matrix" (num_codes, num_factors).
  """
  codes_train, factors_train = _check_samples(codes_train, factors_train, 2, "DCI (train)")
  codes_test, factors_test = _check_samples(codes_test, factors_test, 1, "DCI (test)")
  if codes_train.shape[1] != codes_test.shape[1] or factors_train.shape[1] != factors_test.shape[1]:
    raise ValueError(f"DCI: train and test disagree in the number of codes or factors: codes "
                     f"{codes_train.shape[1]} vs {codes_test.shape[1]}, factors {factors_train.shape[1]} vs "
                     f"{factors_test.shape[1]}.")
  return _dci_internal(codes_train.T, factors_train.T, codes_test.T, factors_test.T, **gbt_kwargs)


def compute_dci(source, representation_function, random_state, num_train=10000, num_test=5000,
                batch_size=16, **gbt_kwargs):
  """disentanglement_lib's `compute_dci` (defaults: DisDiff's 10000 train / 5000 test points)."""
  _check_min(num_train, 2, "num_train")
  _check_min(num_test, 1, "num_test")
  rep = _CheckedRepresentation(representation_function)
  mus_train, ys_train = generate_batch_factor_code(source, rep, num_train, random_state, batch_size)
  mus_test, ys_test = generate_batch_factor_code(source, rep, num_test, random_state, batch_size)
  return _dci_internal(mus_train, ys_train, mus_test, ys_test, **gbt_kwargs)


# ------------------------------------------------------------------------------------------ MIG


def histogram_discretize(target, num_bins):
  """Each row of `target` (num_codes, N) binned by `np.digitize` on its own `num_bins` histogram edges."""
  discretized = np.zeros_like(target)
  for i in range(target.shape[0]):
    discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
  return discretized


def discrete_mutual_info(mus, ys):
  """Mutual information (nats) of every discretised code (rows of mus) with every factor (rows of ys)."""
  m = np.zeros([mus.shape[0], ys.shape[0]])
  for i in range(mus.shape[0]):
    for j in range(ys.shape[0]):
      m[i, j] = sklearn.metrics.mutual_info_score(ys[j, :], mus[i, :])
  return m


def discrete_entropy(ys):
  """Entropy (nats) of each factor (rows of ys)."""
  return np.array([sklearn.metrics.mutual_info_score(y, y) for y in ys])


def _mig_internal(mus, ys, num_bins):
  if mus.shape[0] < 2:
    raise ValueError(f"MIG needs at least 2 codes (it is the gap between the two most informative); got "
                     f"{mus.shape[0]}.")
  m = discrete_mutual_info(histogram_discretize(mus, num_bins), ys)
  entropy = discrete_entropy(ys)
  if np.any(entropy == 0):
    raise ValueError("MIG: a factor takes a single value in these samples (zero entropy); sample more points "
                     "or drop constant factors.")
  sorted_m = np.sort(m, axis=0)[::-1]
  return float(np.mean((sorted_m[0, :] - sorted_m[1, :]) / entropy))


def mig(codes, factors, num_bins=20):
  """disentanglement_lib's MIG (histogram discretiser with `num_bins` bins) on given samples.

  Args:
    codes: (N, num_codes) float codes, num_codes >= 2.
    factors: (N, num_factors) integer ground-truth factors.
    num_bins: histogram bins per code (DisDiff's evaluation uses 20).
  Returns:
    the mean over factors of (largest - second largest mutual information) / factor entropy.
  """
  codes, factors = _check_samples(codes, factors, 2, "MIG")
  _check_min(num_bins, 1, "num_bins")
  return _mig_internal(codes.T, factors.T, num_bins)


def compute_mig(source, representation_function, random_state, num_train=10000, batch_size=16, num_bins=20):
  """disentanglement_lib's `compute_mig`; returns {"discrete_mig": float}."""
  _check_min(num_train, 2, "num_train")
  rep = _CheckedRepresentation(representation_function)
  mus, ys = generate_batch_factor_code(source, rep, num_train, random_state, batch_size)
  return {"discrete_mig": _mig_internal(mus, ys, num_bins)}


# ------------------------------------------------------------------------------------------ FactorVAE


def _factor_vae_variances(source, rep, num, random_state, eval_batch_size=64):
  _, observations = _sample(source, num, random_state)
  codes = np.transpose(obtain_representation(observations, rep, eval_batch_size))
  return np.var(codes, axis=0, ddof=1)


def _factor_vae_votes(source, rep, batch_size, num_points, random_state, global_variances, active_dims):
  """Votes (num_factors, num_codes): for each point, fix one random factor across a batch and vote for the
  code whose variance, normalised by its global variance, is smallest among the active codes."""
  votes = np.zeros((_num_factors(source), global_variances.shape[0]), dtype=np.int64)
  for _ in range(num_points):
    factor_index = random_state.randint(_num_factors(source))
    factors = source.sample_factors(batch_size, random_state)
    factors[:, factor_index] = factors[0, factor_index]
    codes = rep(source.sample_observations_from_factors(factors, random_state))
    local_variances = np.var(codes, axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 of a constant code, as the library
      argmin = np.argmin(local_variances[active_dims] / global_variances[active_dims])
    votes[factor_index, argmin] += 1
  return votes


def compute_factor_vae(source, representation_function, random_state, batch_size=64, num_train=10000,
                       num_eval=5000, num_variance_estimate=10000, prune_threshold=0.05):
  """disentanglement_lib's FactorVAE score (majority-vote classifier on variance-normalised codes).

  Defaults are DisDiff's evaluation settings (batch 64, 10000 train / 5000 eval votes, 10000 points for the
  global variances, collapsed codes with std < 0.05 pruned; disentanglement_lib's own default threshold is 0).
  Returns {"train_accuracy", "eval_accuracy", "num_active_dims"}; num_active_dims is the length of the mask,
  as the library reports it.
  """
  _check_min(batch_size, 2, "batch_size (the FactorVAE score takes variances within a batch)")
  _check_min(num_variance_estimate, 2, "num_variance_estimate")
  _check_min(num_train, 1, "num_train")
  _check_min(num_eval, 1, "num_eval")
  rep = _CheckedRepresentation(representation_function)
  global_variances = _factor_vae_variances(source, rep, num_variance_estimate, random_state)
  active_dims = np.sqrt(global_variances) >= prune_threshold
  if not active_dims.any():
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
  train_votes = _factor_vae_votes(source, rep, batch_size, num_train, random_state, global_variances,
                                  active_dims)
  classifier = np.argmax(train_votes, axis=0)
  columns = np.arange(train_votes.shape[1])
  train_accuracy = np.sum(train_votes[classifier, columns]) / np.sum(train_votes)
  eval_votes = _factor_vae_votes(source, rep, batch_size, num_eval, random_state, global_variances,
                                 active_dims)
  eval_accuracy = np.sum(eval_votes[classifier, columns]) / np.sum(eval_votes)
  return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy),
          "num_active_dims": len(active_dims)}


# ------------------------------------------------------------------------------------------ beta-VAE


def _beta_vae_points(source, rep, batch_size, num_points, random_state):
  """Features (num_points, num_codes) = mean |code1 - code2| over a batch of pairs sharing one random
  factor, and that factor's index as the label."""
  points, labels = None, np.zeros(num_points, dtype=np.int64)
  for i in range(num_points):
    index = random_state.randint(_num_factors(source))
    factors1 = source.sample_factors(batch_size, random_state)
    factors2 = source.sample_factors(batch_size, random_state)
    factors2[:, index] = factors1[:, index]
    codes1 = rep(source.sample_observations_from_factors(factors1, random_state))
    codes2 = rep(source.sample_observations_from_factors(factors2, random_state))
    feature = np.mean(np.abs(codes1 - codes2), axis=0)
    if points is None:
      points = np.zeros((num_points, feature.shape[0]))
    labels[i], points[i] = index, feature
  return points, labels


def compute_beta_vae(source, representation_function, random_state, batch_size=64, num_train=10000,
                     num_eval=5000):
  """disentanglement_lib's `compute_beta_vae_sklearn` (logistic regression on pair differences).

  Returns {"train_accuracy", "eval_accuracy"}. The classifier takes the same `random_state` object, as the
  library does.
  """
  _check_min(num_train, 1, "num_train")
  _check_min(num_eval, 1, "num_eval")
  rep = _CheckedRepresentation(representation_function)
  train_points, train_labels = _beta_vae_points(source, rep, batch_size, num_train, random_state)
  if len(np.unique(train_labels)) < 2:
    raise ValueError("beta-VAE score: the training points cover a single factor; use a larger num_train.")
  model = sklearn.linear_model.LogisticRegression(random_state=random_state)
  model.fit(train_points, train_labels)
  train_accuracy = np.mean(model.predict(train_points) == train_labels)
  eval_points, eval_labels = _beta_vae_points(source, rep, batch_size, num_eval, random_state)
  return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(model.score(eval_points, eval_labels))}


# ------------------------------------------------------------------------------------------ DisDiff protocol


def disdiff_codes(factor_codes):
  """DisDiff's evaluation representation: PCA to one component of each factor's code.

  Args:
    factor_codes: (num_images, num_latent_factors, factor_dim) encoder codes of every image of the data set.
  Returns:
    (num_images, num_latent_factors) float array, column c = first principal component score of factor c.
  """
  factor_codes = _check_finite(np.asarray(factor_codes, dtype=np.float64), "encoder codes")
  if factor_codes.ndim != 3:
    raise ValueError(f"factor_codes must be (num_images, num_factors, factor_dim); got {factor_codes.shape}.")
  if factor_codes.shape[0] < 2:
    raise ValueError("PCA of the factor codes needs at least 2 images.")
  columns = [sklearn.decomposition.PCA(n_components=1).fit_transform(factor_codes[:, c, :])
             for c in range(factor_codes.shape[1])]
  return np.concatenate(columns, axis=1)


class IndexedCodes:
  """A ground-truth source whose observations are data-set indices, with a representation function that
  looks precomputed codes up (DisDiff's `_representation(x) = pca_rep[x]`).

  Args:
    source: a factor source with `factor_sizes`, `sample_factors` and `index_of` (row-major index).
    codes: (len(source), num_codes) codes of every image in index order (e.g. from `disdiff_codes`).
  """

  def __init__(self, source, codes):
    codes = _check_finite(np.asarray(codes))
    if codes.shape[0] != source.num_images:
      raise ValueError(f"IndexedCodes: {codes.shape[0]} code rows for a source of {source.num_images} images; "
                       "encode every image in index order.")
    self.source, self.codes = source, codes
    self.factor_sizes = source.factor_sizes

  def sample_factors(self, num, random_state):
    return self.source.sample_factors(num, random_state)

  def sample_observations_from_factors(self, factors, random_state):
    return self.source.index_of(factors)

  def representation(self, indices):
    return self.codes[np.asarray(indices)]


class IdentityObservations:
  """disentanglement_lib's dummy `IdentityObservationsData`: 10 factors of 10 values each, observed as
  themselves. The metric unit tests score the identity (ideal) and constant (useless) representations."""

  factor_sizes = [10] * 10

  def sample_factors(self, num, random_state):
    return random_state.randint(10, size=(num, 10))

  def sample_observations_from_factors(self, factors, random_state):
    return factors
