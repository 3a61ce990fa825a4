"""FID/sFID, Inception Score, precision/recall and reference files (jdpm.eval) against closed forms and
brute-force computations.

Rank-deficient Fréchet distances are checked against tr sqrt(S1 S2) computed from the data itself:
with centred data X1, X2 and their QR factors Xi = Qi Ri, S1 S2 has the eigenvalues of
(R2 R1^T)^T (R2 R1^T) / ((n1 - 1)(n2 - 1)), so the trace is a nuclear norm of a product of triangular
factors, never of a rounded (and hence not exactly singular) covariance.
"""

import dataclasses

import numpy as np
import pytest
from scipy import linalg

from jdpm import eval as jeval
from jdpm.eval import manifold


def _fd_from_data(x1, x2):
  """The Fréchet distance between the Gaussians fitted to two data sets, computed from the data."""
  c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
  r1, r2 = np.linalg.qr(c1, mode="r"), np.linalg.qr(c2, mode="r")
  scale1, scale2 = len(x1) - 1, len(x2) - 1
  tr_sqrt = np.linalg.svd(r2 @ r1.T, compute_uv=False).sum() / np.sqrt(scale1 * scale2)
  diff = x1.mean(0) - x2.mean(0)
  return diff @ diff + np.sum(c1 * c1) / scale1 + np.sum(c2 * c2) / scale2 - 2 * tr_sqrt


def _fd_scipy(mu1, sigma1, mu2, sigma2):
  """The reference evaluators' formula (scipy sqrtm of the product), for well-conditioned inputs only."""
  covmean = linalg.sqrtm(sigma1 @ sigma2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _random_rotation(rng, dim):
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


# -- Fréchet distance -------------------------------------------------------------------------------------


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
  s1, s2 = rng.uniform(0.1, 3.0, 64), rng.uniform(0.1, 3.0, 64)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = jeval.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_frechet_commuting_rotated_closed_form():
  # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: the distance is the diagonal one in Q's basis.
  rng = np.random.default_rng(1)
  q = _random_rotation(rng, 48)
  a, b = rng.uniform(0.0, 2.0, 48), rng.uniform(0.0, 2.0, 48)
  a[:10] = 0.0  # singular, with null spaces that partly overlap
  b[5:15] = 0.0
  mu1, mu2 = rng.normal(size=48), rng.normal(size=48)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = jeval.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_non_commuting_closed_forms():
  rng = np.random.default_rng(2)
  # 2 x 2: S1 S2 has eigenvalues l1, l2 >= 0, and tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
  for _ in range(5):
    f1, f2 = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    s1, s2 = f1 @ f1.T, f2 @ f2.T
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    np.testing.assert_allclose(jeval.frechet_distance(np.zeros(2), s1, np.zeros(2), s2), expected, rtol=1e-12)
  # Rank one against rank one: tr sqrt(u u^T v v^T) = |u . v|, in 32 dimensions.
  u, v = rng.normal(size=32), rng.normal(size=32)
  expected = u @ u + v @ v - 2 * abs(u @ v)
  np.testing.assert_allclose(jeval.frechet_distance(np.zeros(32), np.outer(u, u), np.zeros(32), np.outer(v, v)),
                             expected, rtol=1e-12)
  # A multiple of the identity against anything: tr sqrt(c S) = sqrt(c) tr sqrt(S).
  f = rng.normal(size=(32, 20))
  s = f @ f.T
  eig = np.clip(np.linalg.eigvalsh(s), 0, None)
  expected = 32 * 2.5 + np.trace(s) - 2 * np.sqrt(2.5) * np.sum(np.sqrt(eig[-20:]))
  np.testing.assert_allclose(jeval.frechet_distance(np.zeros(32), 2.5 * np.eye(32), np.zeros(32), s),
                             expected, rtol=1e-12)


def test_frechet_matches_reference_formula_on_full_rank():
  # Well-conditioned covariances: agreement with the pytorch-fid / ADM scipy.linalg.sqrtm formula.
  rng = np.random.default_rng(3)
  x1 = rng.normal(size=(1000, 48)) @ rng.normal(size=(48, 48))
  x2 = rng.normal(size=(800, 48)) @ rng.normal(size=(48, 48)) + 0.3
  stats1, stats2 = jeval.gaussian_stats(x1), jeval.gaussian_stats(x2)
  got = jeval.frechet_distance(*stats1, *stats2)
  np.testing.assert_allclose(got, _fd_scipy(*stats1, *stats2), rtol=1e-10)
  np.testing.assert_allclose(got, _fd_from_data(x1, x2), rtol=1e-11)


@pytest.mark.parametrize("case", ["fewer_samples_than_dims", "both_singular_subspaces", "one_singular"])
def test_frechet_rank_deficient(case):
  rng = np.random.default_rng(4)
  dim = 128
  if case == "fewer_samples_than_dims":  # n < d for both sets: covariance ranks 49 and 69
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x1, x2 = rng.normal(size=(50, dim)) @ mix + 1.0, 1.2 * rng.normal(size=(70, dim)) @ mix
  elif case == "both_singular_subspaces":  # n > d, features in different 10-d and 15-d subspaces
    x1 = rng.normal(size=(400, 10)) @ rng.normal(size=(10, dim))
    x2 = rng.normal(size=(500, 15)) @ rng.normal(size=(15, dim)) + 0.1
  else:  # a narrow model (rank 8) against full-rank data
    x1 = rng.normal(size=(400, 8)) @ rng.normal(size=(8, dim))
    x2 = rng.normal(size=(400, dim)) * rng.uniform(0.5, 2.0, dim)
  expected = _fd_from_data(x1, x2)
  got = jeval.frechet_distance(*jeval.gaussian_stats(x1), *jeval.gaussian_stats(x2))
  # Measured: relative errors <= 4e-16; the scipy sqrtm formula of pytorch-fid / ADM is off by 2e-8 to 5e-8.
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_symmetric_and_zero_for_identical_stats():
  rng = np.random.default_rng(5)
  x1 = np.maximum(rng.normal(size=(300, 96)) @ rng.normal(size=(96, 96)), 0)  # ReLU-like features
  x2 = np.maximum(rng.normal(size=(60, 96)) @ rng.normal(size=(96, 96)), 0)  # rank 59
  s1, s2 = jeval.gaussian_stats(x1), jeval.gaussian_stats(x2)
  forward, backward = jeval.frechet_distance(*s1, *s2), jeval.frechet_distance(*s2, *s1)
  np.testing.assert_allclose(forward, backward, rtol=1e-13)
  for stats in (s1, s2):
    scale = np.trace(stats[1])
    assert abs(jeval.frechet_distance(*stats, *stats)) <= 1e-13 * scale


def test_frechet_validates_inputs():
  with pytest.raises(ValueError, match="same length"):
    jeval.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="shape"):
    jeval.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="positive semi-definite"):
    jeval.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="non-finite"):
    jeval.frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


# -- streaming statistics ---------------------------------------------------------------------------------


def test_gaussian_stats_match_numpy():
  rng = np.random.default_rng(6)
  # A large mean offset: the raw-moment formula would lose (mean / std)^2 = 1e6 of precision here.
  x = rng.normal(size=(9000, 16)).astype(np.float32) + 1000.0
  mu, sigma = jeval.gaussian_stats(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)


def test_feature_stats_streaming_resume_and_merge(tmp_path):
  rng = np.random.default_rng(7)
  batches = [rng.normal(size=(n, 24)) * 3 + 2 for n in (50, 1, 33, 64, 0, 17)]
  data = np.concatenate(batches)

  full = jeval.FeatureStats(keep_features=True)
  for batch in batches:
    full.add(batch)
  mu, sigma = full.mean_and_covariance()
  np.testing.assert_allclose(mu, data.mean(0), rtol=1e-13)
  np.testing.assert_allclose(sigma, np.cov(data, rowvar=False), rtol=1e-12, atol=1e-13)
  np.testing.assert_array_equal(full.features, data.astype(np.float32))

  # Interrupted after three batches, saved, reloaded and continued: bit-identical to the uninterrupted run.
  partial = jeval.FeatureStats(keep_features=True)
  for batch in batches[:3]:
    partial.add(batch)
  partial.save(tmp_path / "stats.npz")
  resumed = jeval.FeatureStats.load(tmp_path / "stats.npz")
  for batch in batches[3:]:
    resumed.add(batch)
  assert resumed.count == full.count == len(data)
  np.testing.assert_array_equal(resumed.mean, full.mean)
  np.testing.assert_array_equal(resumed.scatter, full.scatter)
  np.testing.assert_array_equal(resumed.features, full.features)

  # Two shards merged equal the whole.
  first = jeval.FeatureStats(keep_features=True).add(data[:70])
  second = jeval.FeatureStats(keep_features=True).add(data[70:])
  merged = first.merge(second)
  np.testing.assert_allclose(merged.mean_and_covariance()[1], sigma, rtol=1e-12, atol=1e-13)
  np.testing.assert_array_equal(merged.features, full.features)
  assert jeval.FeatureStats().merge(second).count == second.count

  # keep_features=n keeps the first n rows; False keeps none.
  capped = jeval.FeatureStats(keep_features=60)
  for batch in batches:
    capped.add(batch)
  np.testing.assert_array_equal(capped.features, data[:60].astype(np.float32))
  assert jeval.FeatureStats.from_state_dict(capped.state_dict()).keep_features == 60
  assert jeval.FeatureStats().add(data).features.shape == (0, 24)
  with pytest.raises(ValueError, match="D = 24"):
    full.add(np.zeros((2, 5)))
  with pytest.raises(ValueError, match="at least 2"):
    jeval.FeatureStats().add(data[:1]).mean_and_covariance()


# -- Inception Score --------------------------------------------------------------------------------------


def test_inception_score_hand_computed():
  num_classes = 10
  # Uniform predictions: every KL term is 0.
  assert jeval.inception_score(np.full((100, num_classes), 1 / num_classes)) == pytest.approx(1.0, abs=1e-12)
  # Confident predictions spread evenly over the classes in every split: KL = log C per row.
  one_hot = np.eye(num_classes)[np.arange(200) % num_classes]
  assert jeval.inception_score(one_hot, split_size=50) == pytest.approx(num_classes, rel=1e-12)
  # ... and the same from logits whose softmax is (numerically) one-hot.
  assert jeval.inception_score(30.0 * one_hot, from_logits=True, split_size=50) == pytest.approx(num_classes,
                                                                                                  rel=1e-9)
  # All samples the same class: the marginal equals every prediction.
  assert jeval.inception_score(np.eye(num_classes)[np.zeros(40, int)]) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_splits_as_adm():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(12_345, 17)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

  def brute_force(p, split_size):  # the ADM evaluator's loop
    scores = []
    for start in range(0, len(p), split_size):
      part = p[start:start + split_size]
      kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
      scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores)

  # 12,345 rows -> splits of 5000, 5000, 2345.
  expected = brute_force(probs, 5000)
  np.testing.assert_allclose(jeval.inception_score(probs), expected, rtol=1e-12)
  np.testing.assert_allclose(jeval.inception_score(logits, from_logits=True), expected, rtol=1e-12)
  np.testing.assert_allclose(jeval.inception_score(probs[:10_000], num_splits=10), brute_force(probs[:10_000], 1000),
                             rtol=1e-12)


# -- precision and recall ---------------------------------------------------------------------------------


def _brute_precision_recall(reference, samples, k):
  def sq_dist(a, b):
    return np.sum((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2, axis=-1)
  ref_radii = np.sort(sq_dist(reference, reference), axis=1)[:, k]
  sample_radii = np.sort(sq_dist(samples, samples), axis=1)[:, k]
  cross = sq_dist(reference, samples)
  precision = np.mean(np.any(cross <= ref_radii[:, None], axis=0))
  recall = np.mean(np.any(cross <= sample_radii[None, :], axis=1))
  return precision, recall, ref_radii, sample_radii


def test_precision_recall_constructed_sets():
  # Points on a line in 3-d: reference at 0..9, samples at 5..14. With k = 3 the interior radius is 2
  # (squared 4) and the end-point radius 3 (squared 9). Samples 5-9 coincide with reference points,
  # 10-12 lie within 3 of the end point 9 (12 exactly on the boundary, which counts), 13-14 are outside:
  # precision 8/10; by symmetry recall 8/10.
  line = lambda values: np.stack([values, np.zeros_like(values), np.zeros_like(values)], axis=1)
  reference, samples = line(np.arange(10.0)), line(np.arange(5.0, 15.0))
  radii = jeval.manifold_radii(reference, k=3)
  np.testing.assert_array_equal(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])
  assert jeval.precision_recall(reference, samples, k=3) == (0.8, 0.8)

  rng = np.random.default_rng(9)
  cloud = rng.normal(size=(300, 32)).astype(np.float32)
  assert jeval.precision_recall(cloud, cloud, block_size=64) == (1.0, 1.0)
  assert jeval.precision_recall(cloud, cloud + 100.0, block_size=64) == (0.0, 0.0)
  with pytest.raises(ValueError, match="0 < k < N"):
    jeval.manifold_radii(cloud[:3], k=3)


def test_precision_recall_matches_brute_force():
  rng = np.random.default_rng(10)
  reference = rng.normal(size=(301, 16)).astype(np.float32)
  samples = (1.3 * rng.normal(size=(257, 16)) + 0.4).astype(np.float32)
  precision, recall, ref_radii, sample_radii = _brute_precision_recall(reference, samples, k=3)
  assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # a non-trivial case
  # Blocks of 64 do not divide either set size, so ragged last blocks and off-diagonal self blocks are hit.
  np.testing.assert_allclose(jeval.manifold_radii(reference, block_size=64), ref_radii, rtol=1e-5)
  got = jeval.precision_recall(reference, samples, block_size=64)
  np.testing.assert_allclose(got, (precision, recall), atol=1e-12)
  # Precomputed radii give the same answer; other k too.
  assert jeval.precision_recall(reference, samples, reference_radii=ref_radii, sample_radii=sample_radii) == got
  np.testing.assert_allclose(jeval.precision_recall(reference, samples, k=5, block_size=100),
                             _brute_precision_recall(reference, samples, k=5)[:2], atol=1e-12)


def test_precision_recall_jax_backend():
  # Set sizes that the block size divides: one compiled shape per kernel keeps this test fast.
  rng = np.random.default_rng(14)
  reference = rng.normal(size=(192, 16)).astype(np.float32)
  samples = (1.3 * rng.normal(size=(128, 16)) + 0.4).astype(np.float32)
  precision, recall, ref_radii, _ = _brute_precision_recall(reference, samples, k=3)
  np.testing.assert_allclose(jeval.manifold_radii(reference, block_size=64, backend="jax"), ref_radii, rtol=1e-5)
  np.testing.assert_allclose(jeval.precision_recall(reference, samples, block_size=64, backend="jax"),
                             (precision, recall), atol=1e-12)


def test_pairwise_sq_distances():
  rng = np.random.default_rng(11)
  u, v = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
  expected = np.sum((u[:, None] - v[None]) ** 2, -1)
  np.testing.assert_allclose(manifold.pairwise_sq_distances(u, v), expected, rtol=1e-5, atol=1e-5)


# -- reference files and evaluate -------------------------------------------------------------------------


def test_reference_round_trip_and_adm_layout(tmp_path):
  rng = np.random.default_rng(12)
  pool, spatial = rng.normal(size=(80, 12)), rng.normal(size=(80, 7))
  images = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
  saved = jeval.save_reference(tmp_path / "ref.npz", pool, spatial, images=images, keep_features=50)
  with np.load(tmp_path / "ref.npz") as data:
    assert sorted(data.files) == ["arr_0", "mu", "mu_s", "pool_features", "sigma", "sigma_s"]
    np.testing.assert_array_equal(data["arr_0"], images)
    assert data["sigma"].dtype == np.float64 and data["pool_features"].dtype == np.float32
  loaded = jeval.load_reference(tmp_path / "ref.npz")
  assert loaded.has_images
  for field in ("mu", "sigma", "mu_s", "sigma_s", "pool_features"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(saved, field))
  np.testing.assert_array_equal(loaded.pool_features, pool[:50].astype(np.float32))
  np.testing.assert_allclose(loaded.sigma, np.cov(pool, rowvar=False), rtol=1e-12)

  # A file as the ADM evaluator's reference batches are written: statistics and images, no features.
  np.savez(tmp_path / "adm.npz", arr_0=images, mu=saved.mu, sigma=saved.sigma, mu_s=saved.mu_s,
           sigma_s=saved.sigma_s)
  adm = jeval.load_reference(tmp_path / "adm.npz")
  assert adm.pool_features is None and adm.has_images
  # From FeatureStats accumulators, keeping the features for precision/recall.
  streamed = jeval.make_reference(jeval.FeatureStats(keep_features=True).add(pool), jeval.FeatureStats().add(spatial))
  np.testing.assert_allclose(streamed.sigma_s, saved.sigma_s, rtol=1e-12)
  np.testing.assert_array_equal(streamed.pool_features, pool.astype(np.float32))


def test_reference_missing_keys(tmp_path):
  np.savez(tmp_path / "fid_only.npz", mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match=r"missing reference statistics \['mu_s', 'sigma_s'\]"):
    jeval.load_reference(tmp_path / "fid_only.npz")
  assert jeval.load_reference(tmp_path / "fid_only.npz", require_spatial=False).mu_s is None
  np.savez(tmp_path / "images_only.npz", arr_0=np.zeros((1, 2, 2, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\['mu', 'sigma', 'mu_s', 'sigma_s'\]; found keys \['arr_0'\]"):
    jeval.load_reference(tmp_path / "images_only.npz")
  np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(3), sigma=np.eye(2), mu_s=np.zeros(2), sigma_s=np.eye(2))
  with pytest.raises(ValueError, match="must be"):
    jeval.load_reference(tmp_path / "bad_shape.npz")


def test_evaluate(tmp_path):
  rng = np.random.default_rng(13)
  real_pool, real_spatial = rng.normal(size=(400, 16)), rng.normal(size=(400, 9))
  fake_pool, fake_spatial = rng.normal(size=(300, 16)) * 1.1, rng.normal(size=(300, 9)) + 0.2
  logits = rng.normal(size=(300, 11)) * 2
  reference = jeval.make_reference(real_pool, real_spatial)
  samples = {"pool_features": fake_pool, "spatial_features": fake_spatial, "logits": logits}
  results = jeval.evaluate(samples, reference, split_size=100)
  assert set(results) == set(jeval.METRICS)
  assert results["fid"] == jeval.frechet_distance(*jeval.gaussian_stats(fake_pool), reference.mu, reference.sigma)
  assert results["sfid"] == jeval.frechet_distance(*jeval.gaussian_stats(fake_spatial), reference.mu_s,
                                                   reference.sigma_s)
  assert results["inception_score"] == jeval.inception_score(logits, from_logits=True, split_size=100)
  assert (results["precision"], results["recall"]) == jeval.precision_recall(real_pool, fake_pool)

  # The same from streamed accumulators, and from the samples' own Reference.
  streamed = {"pool_features": jeval.FeatureStats(keep_features=True).add(fake_pool),
              "spatial_features": jeval.FeatureStats().add(fake_spatial), "logits": logits}
  np.testing.assert_allclose([jeval.evaluate(streamed, reference, split_size=100)[m] for m in jeval.METRICS],
                             [results[m] for m in jeval.METRICS], rtol=1e-10)
  own = jeval.evaluate(jeval.make_reference(fake_pool, fake_spatial), reference,
                       metrics=("fid", "sfid", "precision", "recall"))
  np.testing.assert_allclose([own[m] for m in own], [results[m] for m in own], rtol=1e-10)
  same = jeval.evaluate({"pool_features": real_pool}, reference, metrics=("fid", "precision", "recall"))
  assert abs(same["fid"]) < 1e-12 and same["precision"] == same["recall"] == 1.0

  with pytest.raises(ValueError, match="pool_features"):
    jeval.evaluate(samples, dataclasses.replace(reference, pool_features=None), metrics=("precision",))
  with pytest.raises(ValueError, match="Inception Score"):
    jeval.evaluate({"pool_features": fake_pool}, reference, metrics=("inception_score",))
  with pytest.raises(ValueError, match="unknown metrics"):
    jeval.evaluate(samples, reference, metrics=("kid",))
