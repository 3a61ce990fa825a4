"""Adan against the authors' PyTorch optimizer, learning-rate schedules, make_optimizer.

tests/data/adan.npz holds 5 steps of the official Adan (params and state after
every step) for 4 hyper-parameter settings, in float64 and float32; tools/make_adan_reference.py
writes it from the official adan.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jdpm.training import optimizers
from jdpm.training import schedules

SETTINGS = ("wd0.02", "wd0.0", "wd0.02_noprox", "wd0.0_clip1.0")
STATE_FIELDS = ("exp_avg", "exp_avg_sq", "exp_avg_diff")


@pytest.fixture(scope="module")
def golden(data_dir):
  with np.load(data_dir / "adan.npz", allow_pickle=False) as f:
    return dict(f)


def _hparams(golden, name):
  get = lambda key: float(golden[f"run/{name}/hparams/{key}"])
  return dict(weight_decay=get("weight_decay"), no_prox=bool(get("no_prox")),
              max_grad_norm=get("max_grad_norm"))


def _run(golden, tx, dtype, steps=5):
  """Applies `tx` to the stored gradients; returns [(params, state)] after each step."""
  params = {"W": jnp.asarray(golden["init/W"], dtype), "b": jnp.asarray(golden["init/b"], dtype)}
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  trajectory = []
  for k in range(steps):
    grads = {leaf: jnp.asarray(golden[f"grads/{leaf}"][k], dtype) for leaf in ("W", "b")}
    params, state = step(params, state, grads)
    trajectory.append(jax.device_get((params, state)))
  return trajectory


def _max_rel_error(ours, ref):
  """max |ours - ref| / max |ref|: relative to the array's scale (entries may be ~0).

  An all-zero reference (the gradient-difference average after step 1) must be met exactly.
  """
  ours = np.asarray(ours)
  assert ours.dtype == ref.dtype and ours.shape == ref.shape
  assert np.all(np.isfinite(ours))
  scale = np.max(np.abs(ref))
  return float(np.max(np.abs(ours.astype(np.float64) - ref)) / (scale if scale > 0 else 1.0))


def _check_trajectory(golden, name, precision, trajectory, tol):
  prefix = f"run/{name}/{precision}"
  errors = {}
  for k, (params, state) in enumerate(trajectory):
    for leaf in ("W", "b"):
      pairs = {"param": (params[leaf], golden[f"{prefix}/{leaf}"][k]),
               "neg_pre_grad": (-state.prev_grad[leaf], golden[f"{prefix}/state/{leaf}/neg_pre_grad"][k])}
      for field in STATE_FIELDS:
        pairs[field] = (getattr(state, field)[leaf], golden[f"{prefix}/state/{leaf}/{field}"][k])
      for what, (ours, ref) in pairs.items():
        err = _max_rel_error(np.asarray(ours), ref)
        errors[what] = max(errors.get(what, 0.0), err)
    assert int(state.count) == k + 1
  assert max(errors.values()) <= tol, errors


@pytest.mark.parametrize("name", SETTINGS)
def test_adan_matches_official_float64(golden, name):
  with jax.enable_x64(True):
    trajectory = _run(golden, optimizers.adan(1e-3, **_hparams(golden, name)), jnp.float64)
  # Without clipping the port agrees to rounding (measured <= 4.2e-16). With clipping,
  # the reference's float32 clip factor comes from torch's float32 sqrt, which is one
  # ulp off the correctly rounded one at step 4; every later value inherits that
  # 1.2e-7 relative difference (measured <= 1.6e-7).
  tol = 1e-6 if "clip" in name else 1e-12
  _check_trajectory(golden, name, "f64", trajectory, tol)


@pytest.mark.parametrize("name", SETTINGS)
def test_adan_matches_official_float32(golden, name):
  trajectory = _run(golden, optimizers.adan(1e-3, **_hparams(golden, name)), jnp.float32)
  assert trajectory[-1][0]["W"].dtype == np.float32
  assert trajectory[-1][1].exp_avg_sq["b"].dtype == np.float32
  _check_trajectory(golden, name, "f32", trajectory, 1e-6)  # measured <= 4.1e-7


@pytest.mark.parametrize("precision", ["f64", "f32"])
def test_clip_factor_matches_official(golden, precision):
  dtype = jnp.float64 if precision == "f64" else jnp.float32
  ref = golden[f"run/wd0.0_clip1.0/{precision}/clip_coef"]
  with jax.enable_x64(precision == "f64"):
    ours = np.array([
        optimizers.global_norm_clip_factor(
            {leaf: jnp.asarray(golden[f"grads/{leaf}"][k], dtype) for leaf in ("W", "b")}, 1.0, 1e-8)
        for k in range(5)])
  assert ours.dtype == np.float32  # accumulated in float32, as the reference
  # Within one float32 ulp: torch's float32 sqrt is not always correctly rounded and
  # its float32 sums add in another order. For float64 grads the float32 sum is
  # exact, so all steps but the one with torch's sqrt artefact agree bit for bit.
  np.testing.assert_allclose(ours, ref, rtol=2.4e-7, atol=0)
  if precision == "f64":
    assert np.sum(ours == ref) == 4


def test_clip_factor_analytic():
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # global norm 5
  np.testing.assert_allclose(optimizers.global_norm_clip_factor(grads, 1.0, 1e-8), 1 / (5 + 1e-8),
                             rtol=1e-7)
  np.testing.assert_allclose(optimizers.global_norm_clip_factor(grads, 2.5, 0.0), 0.5, rtol=1e-7)
  assert float(optimizers.global_norm_clip_factor(grads, 10.0)) == 1.0


def test_adan_schedule_gets_count_before_the_update(golden):
  # lr = 1e-3 at the first update (count 0), 0 afterwards: step 2 must leave the
  # params unchanged, even with weight decay, and step 1 must match the reference.
  schedule = lambda count: jnp.where(count == 0, 1e-3, 0.0)
  trajectory = _run(golden, optimizers.adan(schedule, weight_decay=0.02), jnp.float32, steps=2)
  (params1, _), (params2, state2) = trajectory
  for leaf in ("W", "b"):
    assert _max_rel_error(params1[leaf], golden[f"run/wd0.02/f32/{leaf}"][0]) <= 1e-6
    np.testing.assert_array_equal(params2[leaf], params1[leaf])
  # The moments still advance when lr is 0.
  assert _max_rel_error(state2.exp_avg["W"], golden["run/wd0.02/f32/state/W/exp_avg"][1]) <= 1e-6


def test_adan_state_is_a_pytree_with_param_structure():
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3, jnp.bfloat16)}}
  state = optimizers.adan(1e-3).init(params)
  assert isinstance(state, optimizers.AdanState)
  assert state.count.dtype == jnp.int32 and int(state.count) == 0
  for field in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "prev_grad"):
    tree = getattr(state, field)
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    assert tree["dense"]["bias"].dtype == jnp.bfloat16
  assert len(jax.tree.leaves(state)) == 1 + 4 * 2


def test_adan_sharded_params_match_unsharded():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.RandomState(0)
  params = {"w": jnp.asarray(rng.randn(8, 3), jnp.float32), "b": jnp.asarray(rng.randn(3), jnp.float32)}
  grads = [{"w": jnp.asarray(rng.randn(8, 3), jnp.float32), "b": jnp.asarray(rng.randn(3), jnp.float32)}
           for _ in range(2)]
  tx = optimizers.adan(1e-2, weight_decay=0.02, max_grad_norm=1.0)

  @jax.jit
  def two_steps(params, grads):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  plain = two_steps(params, grads)
  shard = lambda tree: {"w": jax.device_put(tree["w"], rows), "b": tree["b"]}
  sharded = two_steps(shard(params), [shard(g) for g in grads])
  assert sharded[1].exp_avg["w"].sharding.is_equivalent_to(rows, 2)
  # Only the clip norm's reduction order differs.
  for ours, ref in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
  # A sanity check that the two steps moved the params by about lr per step.
  assert 0.005 < float(jnp.max(jnp.abs(plain[0]["w"] - params["w"]))) < 0.03


def test_adan_errors():
  tx = optimizers.adan(1e-3)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="b3"):
    optimizers.adan(1e-3, b3=1.0)
  with pytest.raises(ValueError, match="max_grad_norm"):
    optimizers.adan(1e-3, max_grad_norm=-1.0)


def test_schedule_values():
  steps = jnp.array([0, 50, 100, 1000, 4999, 5000, 7499, 200_000, 200_500, 400_000, 500_000])
  lr, end = 1e-3, 5e-5
  expected = {
      "constant": schedules.constant(lr)(steps),
      "warmup": schedules.warmup(lr, 100)(steps),
      "decay": schedules.linear_decay(lr, end, 400_000)(steps),
      "warmup_decay": schedules.linear_decay(lr, end, 400_000, warmup_steps=1000)(steps),
      "staircase": schedules.linear_decay(lr, end, 400_000, update_every=5000)(steps),
  }
  decay = lambda s, start=0: lr - (lr - end) * min(max((s - start) / (400_000 - start), 0), 1)
  s = np.asarray(steps)
  analytic = {
      "constant": np.full(s.shape, lr),
      "warmup": lr * np.minimum(s / 100, 1),
      "decay": [decay(x) for x in s],
      "warmup_decay": [lr * x / 1000 if x < 1000 else decay(x, 1000) for x in s],
      "staircase": [decay(x // 5000 * 5000) for x in s],
  }
  expected = {name: np.asarray(values) for name, values in expected.items()}
  for name, values in expected.items():
    np.testing.assert_allclose(values, analytic[name], rtol=1e-6, atol=1e-12, err_msg=name)
  # Spot values written out: the midpoint of the decay, its end, the staircase.
  np.testing.assert_allclose(expected["decay"][7], 5.25e-4, rtol=1e-6)
  np.testing.assert_allclose(expected["decay"][-2:], [5e-5, 5e-5], rtol=1e-6)
  np.testing.assert_allclose(expected["warmup_decay"][[1, 3, 8]], [5e-5, 1e-3, 5.25e-4], rtol=1e-6)
  np.testing.assert_allclose(expected["staircase"][[4, 5, 6]], [1e-3, 9.88125e-4, 9.88125e-4], rtol=1e-6)


def test_schedule_errors():
  with pytest.raises(ValueError, match="decay_steps"):
    schedules.linear_decay(1e-3, decay_steps=100, warmup_steps=100)
  with pytest.raises(ValueError, match="warmup_steps"):
    schedules.warmup(1e-3, -1)
  with pytest.raises(ValueError, match="update_every"):
    schedules.linear_decay(1e-3, update_every=0)
  with pytest.raises(ValueError, match="lr"):
    schedules.constant(-1.0)


def _config(**fields):
  return ml_collections.ConfigDict(dict(dict(optimizer="adan", lr=1e-3, schedule="constant"), **fields))


def test_make_schedule_from_config():
  schedule = schedules.make_schedule(_config(schedule="linear_decay", end_lr=1e-4, decay_steps=1000,
                                             warmup_steps=100))
  np.testing.assert_allclose(schedule(jnp.array([50, 100, 550, 1000, 2000])),
                             [5e-4, 1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-6)
  np.testing.assert_allclose(schedules.make_schedule(_config(schedule="warmup", warmup_steps=10))(5), 5e-4,
                             rtol=1e-6)


def test_make_optimizer_errors():
  with pytest.raises(ValueError, match="Unknown optimizer 'sgd'"):
    optimizers.make_optimizer(_config(optimizer="sgd"))
  with pytest.raises(ValueError, match="Unknown learning-rate schedule 'cosine'"):
    optimizers.make_optimizer(_config(schedule="cosine"))
  with pytest.raises(ValueError, match="no `lr`"):
    optimizers.make_optimizer(ml_collections.ConfigDict(dict(optimizer="adan")))
  with pytest.raises(ValueError, match="grad_clip"):
    optimizers.make_optimizer(_config(grad_clip=-1.0))


def test_make_optimizer_adan_is_mdt_recipe(golden):
  # grad_clip goes to Adan's own clipping (eps in the denominator): the clipped reference run.
  tx = optimizers.make_optimizer(_config(weight_decay=0.0, grad_clip=1.0))
  _check_trajectory(golden, "wd0.0_clip1.0", "f32", _run(golden, tx, jnp.float32), 1e-6)


def test_make_optimizer_adamw_analytic():
  # b1 = b2 = 0 makes AdamW's first step g / (|g| + eps) elementwise; eps = 1 keeps
  # the gradient's size in the update, so the clipping shows.
  config = _config(optimizer="adamw", lr=0.1, b1=0.0, b2=0.0, eps=1.0, weight_decay=0.5, grad_clip=1.0)
  tx = optimizers.make_optimizer(config)
  params = jnp.array([1.0, -2.0])
  grads = jnp.array([3.0, 4.0])  # norm 5 -> clipped to [0.6, 0.8]
  updates, _ = tx.update(grads, tx.init(params), params)
  clipped = np.array([0.6, 0.8])
  expected = -0.1 * (clipped / (clipped + 1.0) + 0.5 * np.array([1.0, -2.0]))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  # Without clipping: g / (|g| + 1) with g = [3, 4].
  config.grad_clip = 0.0
  tx = optimizers.make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates, -0.1 * (np.array([0.75, 0.8]) + 0.5 * np.array([1.0, -2.0])),
                             rtol=1e-6)
