"""Attention Modulation Matrix: golden matrices of the official EDT code, its geometry, and the
apply-time switch in DiT.

Reference data: edt_amm.npz, written by tools/make_edt_reference.py from the official EDT code.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.models import amm

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def golden():
  return np.load(DATA / "edt_amm.npz")


@pytest.mark.parametrize("n", [16, 8])
def test_matches_official_matrix(golden, n):
  ref = golden[f"amm/grid{n}"]
  got = amm.modulation_matrix(n)
  assert got.dtype == np.float32 and got.shape == (n * n, n * n)
  np.testing.assert_array_equal(got == 0, ref == 0)   # Same cut, pair by pair.
  np.testing.assert_allclose(got, ref, rtol=0, atol=2.5e-7)  # float32 cos/exp rounding.


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16, 23])
def test_formula_and_cutoff(n):
  m = amm.modulation_matrix(n)
  rows, cols = np.divmod(np.arange(n * n), n)
  d = np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])
  f = 2 * np.pi / (4 * (n - 1) * np.sqrt(2))
  expected = np.where(d > np.sqrt((n - 1) ** 2 + 4) + 1e-9, 0.0, 0.5 * np.exp(np.cos(f * d)))
  np.testing.assert_allclose(m, expected, rtol=3e-7, atol=0)
  np.testing.assert_allclose(np.diag(m), np.e / 2, rtol=1e-7)
  np.testing.assert_array_equal(m, m.T)
  # Token 0 → token (2, n−1) sits exactly at the cut-off distance R and is kept (when it exists);
  # the far corner, at (n−1)·√2, lies beyond R once n > 3.
  if n >= 3:
    assert m[0, 3 * n - 1] > 0
  assert (m[0, n * n - 1] == 0) == (n > 3)


def test_grid_16_has_the_expected_support():
  m = amm.modulation_matrix(16)
  # R = sqrt(229) ≈ 15.13: from a corner, the far corner (d ≈ 21.2) is cut, (15, 2)
  # (d ≈ 15.13) kept, (15, 3) (d ≈ 15.30) cut.
  assert m[0, 255] == 0 and m[0, 15 * 16 + 2] > 0 and m[0, 15 * 16 + 3] == 0
  assert amm.cutoff_distance(16) == pytest.approx(np.sqrt(229))


def test_invalid_grid():
  with pytest.raises(ValueError, match="side >= 2"):
    amm.modulation_matrix(1)


def test_check_amm_blocks():
  assert amm.check_amm_blocks([10, 7, 7], 12) == (7, 10)
  with pytest.raises(ValueError, match="block 12, but .* 12 blocks"):
    amm.check_amm_blocks([7, 12], 12)
  with pytest.raises(ValueError, match="block -1"):
    amm.check_amm_blocks([-1], 12)
  with pytest.raises(ValueError, match="integer"):
    amm.check_amm_blocks([7.0], 12)


def _dit(**kwargs):
  return jdpm.models.create("DiT", hidden_size=32, depth=3, num_heads=2, patch_size=4,
                            input_size=16, in_channels=3, num_classes=5, **kwargs)


def random_variables(model, std, seed=0):
  """N(0, std²) float32 variables of ``model`` (numpy draws: no jitted initialisers to compile)."""
  rng = np.random.default_rng(seed)
  shapes = jdpm.models.counting.abstract_variables(model)
  return jax.tree.map(lambda a: std * rng.standard_normal(a.shape, np.float32), shapes)


def test_dit_amm_switch():
  model = _dit(amm_blocks=(1,))
  x = np.random.default_rng(1).standard_normal((2, 16, 16, 3), np.float32)
  t, y = jnp.array([10, 500]), jnp.array([1, 4])
  variables = random_variables(model, 0.1)  # Non-zero adaLN gates: every block matters.
  plain = model.apply(variables, x, t, y)
  with_amm = model.apply(variables, x, t, y, amm=True)
  assert float(jnp.max(jnp.abs(with_amm - plain))) > 1e-4
  # AMM changes no parameter: the same variables serve both modes, and another placement gives
  # another output.
  other = _dit(amm_blocks=(2,)).apply(variables, x, t, y, amm=True)
  assert float(jnp.max(jnp.abs(other - with_amm))) > 1e-4
  # A block with a modulation of all ones is the plain block.
  block = jdpm.models.dit.DiTBlock(32, 2)
  tokens = np.random.default_rng(2).standard_normal((2, 16, 32), np.float32)
  c = np.ones((2, 32), np.float32)
  block_params = {"params": variables["params"]["blocks_1"]}
  np.testing.assert_allclose(block.apply(block_params, tokens, c, np.ones((16, 16), np.float32)),
                             block.apply(block_params, tokens, c), atol=2e-6)
  # The model with AMM equals the model whose block 1 multiplies its attention by the matrix:
  # reproduce block 1 by hand from the tokens entering it.
  _, state = model.apply(variables, x, t, y, amm=True, capture_intermediates=True)
  inter = state["intermediates"]
  entering = inter["blocks_0"]["__call__"][0]
  cond = inter["t_embedder"]["__call__"][0] + inter["y_embedder"]["__call__"][0]
  by_hand = block.apply(block_params, entering, cond, amm.modulation_matrix(4))
  np.testing.assert_allclose(inter["blocks_1"]["__call__"][0], by_hand, atol=1e-5)


def test_dit_amm_errors():
  x, t, y = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
  with pytest.raises(ValueError, match="no amm_blocks"):
    _dit().init(jax.random.key(0), x, t, y, amm=True)
  with pytest.raises(ValueError, match="block 3, but"):
    _dit(amm_blocks=(3,)).init(jax.random.key(0), x, t, y)
