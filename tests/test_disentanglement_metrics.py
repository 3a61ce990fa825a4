"""Disentanglement metrics: disentanglement_lib's own unit tests, the public API on given samples, bad input."""

import numpy as np
import pytest

from jdpm.data import factors as factor_data
from jdpm.eval import disentanglement as dis

LN2_LN10 = np.log(2) / np.log(10)


# --- DCI on importance matrices (disentanglement_lib dci_test) ---------------------------------------------

def test_dci_diagonal_is_one():
  importance = np.diag(5.0 * np.ones(5))
  assert dis.disentanglement(importance) == pytest.approx(1.0)
  assert dis.completeness(importance) == pytest.approx(1.0)


def test_dci_diagonal_with_empty_codes_is_one():
  importance = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  assert dis.disentanglement(importance) == pytest.approx(1.0)
  assert dis.completeness(importance) == pytest.approx(1.0)


def test_dci_zero_importance_is_zero():
  importance = np.zeros((10, 10))
  assert dis.disentanglement(importance) == pytest.approx(0.0, abs=1e-9)
  assert dis.completeness(importance) == pytest.approx(0.0, abs=1e-9)


def test_dci_duplicated_code():
  importance = np.vstack([np.diag(5.0 * np.ones(5))] * 2)  # two codes per factor
  assert dis.disentanglement(importance) == pytest.approx(1.0)
  assert dis.completeness(importance) == pytest.approx(1.0 - LN2_LN10)


def test_dci_one_code_two_factors():
  importance = np.hstack([np.diag(5.0 * np.ones(5))] * 2)  # each code explains two factors
  assert dis.disentanglement(importance) == pytest.approx(1.0 - LN2_LN10)
  assert dis.completeness(importance) == pytest.approx(1.0)


def test_dci_missed_factors():
  importance = np.diag(5.0 * np.ones(5))[:2, :]
  assert dis.disentanglement(importance) == pytest.approx(1.0)
  assert dis.completeness(importance) == pytest.approx(1.0)


def test_dci_public_api_on_identity_codes():
  rs = np.random.RandomState(0)
  factors = rs.randint(4, size=(400, 3))
  codes = factors[:, [2, 0, 1]] + 0.01 * rs.randn(400, 3)
  scores = dis.dci(codes[:300], factors[:300], codes[300:], factors[300:], n_estimators=20)
  assert set(scores) >= {"disentanglement", "completeness", "informativeness_train", "informativeness_test"}
  assert scores["disentanglement"] > 0.95 and scores["completeness"] > 0.95
  assert scores["informativeness_test"] == pytest.approx(1.0)
  assert scores["importance_matrix"].shape == (3, 3)


# --- MIG -------------------------------------------------------------------------------------------------

def test_mig_permuted_identity_is_one():
  # On the full factorial grid distinct factors are exactly independent, so the second-best mutual
  # information is 0 and MIG is exactly 1; on random samples its finite-sample bias keeps it just below.
  factors = np.stack(np.meshgrid(*[np.arange(n) for n in (4, 5, 6)], indexing="ij"), -1).reshape(-1, 3)
  codes = factors[:, [2, 0, 1]].astype(np.float64) * np.array([0.3, -2.0, 7.0])
  assert dis.mig(codes, factors, num_bins=20) == pytest.approx(1.0, abs=1e-12)
  rs = np.random.RandomState(0)
  factors = rs.randint(10, size=(3000, 10))
  assert 0.98 <= dis.mig(factors[:, rs.permutation(10)].astype(float), factors) <= 1.0


def test_compute_mig_library_cases():
  data = dis.IdentityObservations()
  good = dis.compute_mig(data, lambda x: x, np.random.RandomState(0), num_train=3000, num_bins=10)
  bad = dis.compute_mig(data, np.zeros_like, np.random.RandomState(0), num_train=3000, num_bins=10)
  duplicated = dis.compute_mig(data, lambda x: np.hstack((x, x)), np.random.RandomState(0), num_train=3000,
                               num_bins=10)
  assert 0.9 <= good["discrete_mig"] <= 1.0
  assert 0.0 <= bad["discrete_mig"] <= 0.2
  assert 0.0 <= duplicated["discrete_mig"] <= 0.1


# --- FactorVAE and beta-VAE (disentanglement_lib factor_vae_test, beta_vae_test) ----------------------------

@pytest.mark.parametrize("fn,low,high", [(lambda x: x, 0.9, 1.0), (np.zeros_like, 0.0, 0.2)])
def test_factor_vae_library_cases(fn, low, high):
  scores = dis.compute_factor_vae(dis.IdentityObservations(), fn, np.random.RandomState(0), batch_size=5,
                                  num_train=3000, num_eval=2000, num_variance_estimate=2500, prune_threshold=0.0)
  assert low <= scores["train_accuracy"] <= high
  assert low <= scores["eval_accuracy"] <= high


@pytest.mark.parametrize("fn,low,high", [(lambda x: x, 0.9, 1.0), (np.zeros_like, 0.0, 0.2)])
def test_beta_vae_library_cases(fn, low, high):
  scores = dis.compute_beta_vae(dis.IdentityObservations(), fn, np.random.RandomState(0), batch_size=5,
                                num_train=2000, num_eval=2000)
  assert low <= scores["train_accuracy"] <= high
  assert low <= scores["eval_accuracy"] <= high


def test_random_state_call_order_matches_library_protocol():
  """generate_batch_factor_code draws factors batch by batch, factor by factor, from the one random state."""
  source = factor_data.DSprites.tiny()
  codes, factors = dis.generate_batch_factor_code(source, lambda x: x.reshape(len(x), -1)[:, :2], 20,
                                                  np.random.RandomState(3), batch_size=8)
  rs = np.random.RandomState(3)
  expected = []
  for n in (8, 8, 4):
    expected.append(np.stack([rs.randint(k, size=n) for k in source.factor_sizes], 1))
  np.testing.assert_array_equal(factors.T, np.vstack(expected))
  assert codes.shape == (2, 20)


# --- DisDiff protocol ------------------------------------------------------------------------------------

def test_disdiff_pca_codes_and_indexed_source():
  source = factor_data.DSprites(image_size=16, num_values=(2, 2, 2, 2, 2))
  all_factors = source.factors_of(np.arange(source.num_images))
  rs = np.random.RandomState(0)
  # factor c's 4-dim code = its value times a random direction, plus a little noise
  directions = rs.randn(5, 4)
  raw = all_factors[:, :, None] * directions[None] + 0.01 * rs.randn(source.num_images, 5, 4)
  codes = dis.disdiff_codes(raw)
  assert codes.shape == (source.num_images, 5)
  indexed = dis.IndexedCodes(source, codes)
  scores = dis.compute_factor_vae(indexed, indexed.representation, np.random.RandomState(0), num_train=200,
                                  num_eval=100, num_variance_estimate=200)
  assert scores["eval_accuracy"] == pytest.approx(1.0)


# --- bad input -------------------------------------------------------------------------------------------

def test_nan_representation_is_one_clear_error():
  factors = np.random.RandomState(0).randint(3, size=(50, 2))
  codes = np.ones((50, 2))
  codes[3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    dis.mig(codes, factors)
  with pytest.raises(ValueError, match="NaN"):
    dis.dci(codes, factors, codes, factors)
  with pytest.raises(ValueError, match="NaN"):
    dis.compute_factor_vae(dis.IdentityObservations(), lambda x: x * np.nan, np.random.RandomState(0),
                           num_train=5, num_eval=5, num_variance_estimate=10)


_RS = np.random.RandomState(0)
_BAD_CALLS = {
    "sample count mismatch": (lambda: dis.mig(_RS.randn(50, 3), _RS.randint(3, size=(40, 2))), "samples"),
    "factor count mismatch": (lambda: dis.dci(_RS.randn(50, 3), _RS.randint(3, size=(50, 2)), _RS.randn(20, 3),
                                              _RS.randint(3, size=(20, 3))), "factors"),
    "too few for MIG": (lambda: dis.mig(_RS.randn(1, 3), _RS.randint(3, size=(1, 2))), "at least 2"),
    "too few for DCI": (lambda: dis.dci(_RS.randn(1, 3), _RS.randint(3, size=(1, 2)), _RS.randn(1, 3),
                                        _RS.randint(3, size=(1, 2))), "at least 2"),
    "FactorVAE batch of one": (lambda: dis.compute_factor_vae(dis.IdentityObservations(), lambda x: x,
                                                              np.random.RandomState(0), batch_size=1), "batch_size"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_mismatch_and_too_few_samples_are_one_clear_error(case):
  call, match = _BAD_CALLS[case]
  with pytest.raises(ValueError, match=match):
    call()
