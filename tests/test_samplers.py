"""jdpm.samplers: the public `sample` call, compilation (one trace, jit, sharding), robustness, DDIM with
eta > 0, thresholding, and the denoiser wrapper `make_noise_fn` (CFG, channel subset, guidance window).

Numbers are checked against the official results in samplers_gmm.npz, against closed-form identities
between the methods, or against small NumPy re-implementations.

Reference data: samplers_gmm.npz, written by tools/make_sampler_reference.py from the official UniPC and
DPM-Solver code.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jdpm
from jdpm.diffusion import VPSchedule

# Some configurations here keep a long last step at full order (lower_order_final=False), which `sample`
# reports; the final-step rule itself is tested in test_sampler_final_step.py.
pytestmark = pytest.mark.filterwarnings("ignore::jdpm.samplers.sampling.LongFinalStepWarning")

sample = jdpm.samplers.sample
DOC_CALL = dict(method="unipc", steps=10, order=3, variant="bh2", prediction="data", skip_type="logSNR",
                lower_order_final=True, t_start=1.0, t_end=1e-3)
DOC_KEY = "linear/unipc/bh2/data/o3/logSNR/n10/lof1"


@pytest.fixture(scope="module")
def golden(data_dir):
  with np.load(data_dir / "samplers_gmm.npz") as f:
    return dict(f)


def _linear():
  return VPSchedule.linear(beta_0=0.1, beta_1=20.0)


def _gmm(golden, sched, eps=jdpm.samplers.gaussian_mixture_eps):
  return jax.tree_util.Partial(eps, sched, golden["gmm/means"], golden["gmm/stds"], golden["gmm/weights"])


@jax.jit
def _data_prediction(sched, noise_fn, x, t):
  """(x - sigma_t eps(x, t)) / alpha_t at a scalar time t, compiled (eager op-by-op dispatch is slow)."""
  t = jnp.full(x.shape[:1], t, x.dtype)
  return (x - sched.sigma(t)[:, None] * noise_fn(x, t)) / sched.alpha(t)[:, None]


@jax.jit
def _alpha_sigma(sched, t):
  return sched.alpha(t), sched.sigma(t)


@jax.jit
def _call(noise_fn, x, t, progress=None):
  return noise_fn(x, t) if progress is None else noise_fn(x, t, progress=progress)


# -- the documented call ---------------------------------------------------------------------------


def test_documented_call_reproduces_official_unipc(golden):
  sched = _linear()
  with jax.enable_x64(True):
    noise_fn = lambda x, t: jdpm.samplers.gaussian_mixture_eps(  # noqa: E731  (a plain closure)
        sched, golden["gmm/means"], golden["gmm/stds"], golden["gmm/weights"], x, t)
    x0 = jdpm.samplers.sample(noise_fn, sched, jnp.asarray(golden["x_T"]), **DOC_CALL)
    assert x0.dtype == jnp.float64
    np.testing.assert_allclose(x0, golden[DOC_KEY], rtol=1e-9, atol=1e-10)
  # Default float32: tables are still built in float64, only the loop runs in float32.
  x0_32 = sample(_gmm(golden, sched), sched, jnp.asarray(golden["x_T"], jnp.float32), **DOC_CALL)
  assert x0_32.dtype == jnp.float32
  np.testing.assert_allclose(x0_32, golden[DOC_KEY], rtol=0, atol=2e-4)


# -- compilation -----------------------------------------------------------------------------------


def test_one_trace_per_shape_and_config(golden):
  """Same shapes and switches -> one trace, whatever the method, grid, order, variant or time range."""
  sched = _linear()
  counted = chex.assert_max_traces(jdpm.samplers.gaussian_mixture_eps, n=1)
  noise_fn = _gmm(golden, sched, counted)
  with jax.enable_x64(True):
    x_T = jnp.asarray(golden["x_T"])
    x1 = sample(noise_fn, sched, x_T, **DOC_CALL)
    sample(noise_fn, sched, 0.5 * x_T, **{**DOC_CALL, "t_end": 2e-3, "skip_type": "time_uniform",
                                           "variant": "bh1", "prediction": "noise"})
    x2 = jax.jit(lambda x: sample(noise_fn, sched, x, **DOC_CALL))(x_T)
    np.testing.assert_array_equal(x1, x2)
    # With a padded loop and ring buffer, other methods and step counts share one program as well.
    chex.clear_trace_counter()
    shared = dict(history_size=4, max_evals=10, t_start=1.0, t_end=1e-3)
    sample(noise_fn, sched, x_T, method="dpm_solver++", steps=7, order=3, solver="singlestep", **shared)
    sample(noise_fn, sched, x_T, method="unipc", steps=10, order=3, **shared)
    sample(noise_fn, sched, x_T, method="ddim", steps=5, **shared)
  chex.clear_trace_counter()


def test_inside_jit_with_traced_schedule(golden):
  """The schedule may itself be a jit argument: the tables are then built in jnp inside the program."""
  def run(sched, x_T):
    return sample(jdpm.samplers.gaussian_mixture_noise_fn(sched, golden["gmm/means"], golden["gmm/stds"],
                                                          golden["gmm/weights"]), sched, x_T,
                  **{**DOC_CALL, "steps": 5})
  with jax.enable_x64(True):
    x0 = jax.jit(run)(_linear(), jnp.asarray(golden["x_T"]))
    np.testing.assert_allclose(x0, golden["linear/unipc/bh2/data/o3/logSNR/n5/lof1"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mesh_kind", ["make_mesh", "Mesh"])
def test_batch_sharded_x_T(golden, mesh_kind):
  assert len(jax.devices()) == 8
  if mesh_kind == "make_mesh":
    mesh = jax.make_mesh((8,), ("data",))  # Explicit axes
  else:
    mesh = Mesh(np.array(jax.devices()), ("data",))  # Auto axes
  sched = _linear()
  noise_fn = _gmm(golden, sched)
  with jax.enable_x64(True):
    sharded = jax.device_put(jnp.asarray(golden["x_T"]), NamedSharding(mesh, P("data")))
    x0 = sample(noise_fn, sched, sharded, **DOC_CALL)
    assert x0.sharding.spec[0] == "data"
    np.testing.assert_allclose(x0, golden[DOC_KEY], rtol=1e-9, atol=1e-10)
    if mesh_kind == "make_mesh":
      x0_jit = jax.jit(lambda x: sample(noise_fn, sched, x, **DOC_CALL))(sharded)
      np.testing.assert_array_equal(x0_jit, x0)
    x0, info = sample(noise_fn, sched, sharded, method="ddim", eta=1.0, rng=jax.random.key(0), steps=4,
                      return_trajectory=True)
    assert info["trajectory"].shape == (5, 16, 8) and np.isfinite(np.asarray(x0)).all()
    assert x0.sharding.spec[0] == "data"


# -- trajectory and per-step predictions ------------------------------------------------------------


def test_trajectory_and_x0_predictions(golden):
  sched = _linear()
  noise_fn = _gmm(golden, sched)
  with jax.enable_x64(True):
    x_T = jnp.asarray(golden["x_T"])
    x0, info = sample(noise_fn, sched, x_T, method="dpm_solver++", order=2, steps=6, skip_type="logSNR",
                      t_start=1.0, t_end=1e-3, return_trajectory=True)
    traj, preds, times = info["trajectory"], info["x0_pred"], np.asarray(info["timesteps"])
    assert traj.shape == (7, 16, 8) and preds.shape == (6, 16, 8) and info["nfe"] == 6
    np.testing.assert_array_equal(traj[0], x_T)
    np.testing.assert_array_equal(traj[-1], x0)
    # DPM-Solver++ evaluates the model at every grid state: x0_pred[j] is the data prediction there.
    for j in range(6):
      expected = _data_prediction(sched, noise_fn, traj[j], times[j])
      np.testing.assert_allclose(preds[j], expected, rtol=1e-12, atol=1e-12)
    # With denoise_to_zero the last entry is the data prediction at t_end (one more evaluation).
    xd, info = sample(noise_fn, sched, x_T, method="dpm_solver++", order=2, steps=6, skip_type="logSNR",
                      t_start=1.0, t_end=1e-3, denoise_to_zero=True, return_trajectory=True)
    assert info["nfe"] == 7 and info["trajectory"].shape == (8, 16, 8)
    np.testing.assert_allclose(xd, _data_prediction(sched, noise_fn, x0, 1e-3), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(info["x0_pred"][-1], xd)


# -- identities between methods ---------------------------------------------------------------------


def test_unipc_without_corrector_reduces_to_dpm_solver(golden):
  """UniP-1 is DDIM / DPM-Solver-1; UniP-2 with B(h) = expm1(-h) and rho = 1/2 is DPM-Solver++(2M)."""
  sched = _linear()
  noise_fn = _gmm(golden, sched)
  grid = dict(steps=10, skip_type="time_uniform", t_start=1.0, t_end=1e-3, lower_order_final=False,
              history_size=3, max_evals=10)
  off = tuple(range(10))
  with jax.enable_x64(True):
    x_T = jnp.asarray(golden["x_T"])
    ddim = sample(noise_fn, sched, x_T, method="ddim", **grid)
    uni1 = sample(noise_fn, sched, x_T, method="unipc", order=1, prediction="noise", disable_corrector=off,
                  **grid)
    np.testing.assert_allclose(uni1, ddim, rtol=1e-12, atol=1e-12)
    dpm2 = sample(noise_fn, sched, x_T, method="dpm_solver++", order=2, **grid)
    uni2 = sample(noise_fn, sched, x_T, method="unipc", order=2, variant="bh2", disable_corrector=off, **grid)
    np.testing.assert_allclose(uni2, dpm2, rtol=1e-12, atol=1e-12)
    # ... and the corrector does change the result.
    assert np.abs(np.asarray(sample(noise_fn, sched, x_T, method="unipc", order=2, **grid)) - dpm2).max() > 1e-4


# -- robustness ------------------------------------------------------------------------------------

ROBUST_CONFIGS = (
    [dict(method="unipc", order=o, variant=v, prediction=p)
     for o in (1, 2, 3) for v in ("bh1", "bh2") for p in ("data", "noise")]
    + [dict(method=m, order=o) for m in ("dpm_solver++", "dpm_solver") for o in (1, 2, 3)]
    + [dict(method=m, order=o, solver=s) for m in ("dpm_solver++", "dpm_solver") for o in (2, 3)
       for s in ("singlestep", "singlestep_fixed")]
    + [dict(method=m, order=2, solver_type="taylor") for m in ("dpm_solver++", "dpm_solver")]
    + [dict(method="ddim")])


@pytest.mark.parametrize("sched_name, t_end", [("linear", 1e-5), ("cosine", 1e-5), ("discrete", 1e-3)])
def test_finite_down_to_small_t_end_float32(golden, sched_name, t_end):
  """Every method / order / variant / prediction, with denoise_to_zero, down to t_end = 1e-5 (discrete
  schedules are defined down to t = 1/N = 1e-3 only; below, `sample` raises a ValueError)."""
  sched = {"linear": _linear(), "discrete": VPSchedule.discrete(np.linspace(1e-4, 0.02, 1000)),
           "cosine": VPSchedule.cosine()}[sched_name]
  noise_fn = _gmm(golden, sched)
  x_T = golden["x_T"]
  for skip in ("logSNR", "time_uniform"):
    for kwargs in ROBUST_CONFIGS:
      run = functools.partial(sample, noise_fn, sched, steps=10, skip_type=skip, t_end=t_end,
                              denoise_to_zero=True, history_size=4, max_evals=10, **kwargs)
      x0 = np.asarray(run(jnp.asarray(x_T, jnp.float32)))
      assert np.isfinite(x0).all(), (sched_name, skip, kwargs)
      if sched_name == "linear":
        # float32 follows the float64 solution (its tables are float64 in both cases). Some official
        # configurations are far off the data here (DPM-Solver++(3M) on a uniform grid reaches |x| = 16
        # with 10 steps, as the authors' code does), so the check is against float64, not the data.
        with jax.enable_x64(True):
          x0_64 = np.asarray(run(jnp.asarray(x_T)))
        np.testing.assert_allclose(x0, x0_64, rtol=0, atol=2e-3 * max(1.0, np.abs(x0_64).max()),
                                   err_msg=f"{skip} {kwargs}")
  x0 = sample(noise_fn, sched, jnp.asarray(x_T, jnp.float32), method="ddim", eta=1.0, rng=jax.random.key(1),
              steps=10, t_end=t_end, denoise_to_zero=True)
  assert np.isfinite(np.asarray(x0)).all()
  if sched_name == "discrete":
    with pytest.raises(ValueError, match="undefined at t_end"):
      sample(noise_fn, sched, jnp.asarray(x_T, jnp.float32), steps=10, t_end=1e-5)


def test_last_step_to_sigma_zero_stays_finite(golden):
  """sigma(t_end) = 0 (lambda = inf): bh1 and noise prediction must not produce inf * 0 = NaN.

  The last step degenerates to x = alpha(t_end) * (the last data prediction).
  """
  sched = _linear()
  noise_fn = _gmm(golden, sched)
  t_end = 1e-20
  with jax.enable_x64(True):
    assert float(sched.sigma(t_end)) == 0.0
    x_T = jnp.asarray(golden["x_T"])
    for kwargs in ROBUST_CONFIGS:
      for denoise in (False, True):
        x0 = sample(noise_fn, sched, x_T, steps=8, skip_type="time_uniform", t_end=t_end, denoise_to_zero=denoise,
                    history_size=4, max_evals=8, **kwargs)
        assert np.isfinite(np.asarray(x0)).all(), kwargs
    alpha_end = float(sched.alpha(t_end))
    # (UniPC with noise prediction evaluates its last output at the uncorrected state: not this identity.)
    for kwargs in (dict(method="unipc", order=3, variant="bh1", prediction="data"),
                   dict(method="dpm_solver", order=2), dict(method="ddim")):
      x0, info = sample(noise_fn, sched, x_T, steps=8, skip_type="time_uniform", t_end=t_end,
                        return_trajectory=True, history_size=4, max_evals=8, **kwargs)
      np.testing.assert_allclose(x0, alpha_end * np.asarray(info["x0_pred"][-1]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
      sample(noise_fn, sched, x_T, steps=8, skip_type="logSNR", t_end=t_end)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"),
    (dict(steps=-3), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(method="heun"), "method"),
    (dict(t_start=0.5, t_end=0.5), "t_end < t_start"),
    (dict(t_start=0.1, t_end=0.5), "t_end < t_start"),
    (dict(t_end=0.0), "t_end must be > 0"),
    (dict(method="dpm_solver++", order=4), "orders 1 to 3"),
    (dict(method="dpm_solver", solver="singlestep", order=4), "orders 1 to 3"),
    (dict(method="ddim", order=2), "first-order"),
    (dict(order=0), "order"),
    (dict(steps=2, order=3), "steps >= order"),
    (dict(skip_type="karras"), "skip_type"),
    (dict(variant="vary_coeff"), "variant"),
    (dict(prediction="v"), "prediction"),
    (dict(method="dpm_solver", prediction="data"), "dpm_solver\\+\\+"),
    (dict(method="unipc", solver="singlestep"), "multistep"),
    (dict(method="dpm_solver++", solver_type="heun"), "solver_type"),
    (dict(method="ddim", eta=1.0), "rng"),
    (dict(method="unipc", eta=1.0), "ddim"),
    (dict(prediction="noise", thresholding=True), "thresholding"),
    (dict(method="dpm_solver++", disable_corrector=(1,)), "unipc"),
    (dict(history_size=1), "history_size"),
    (dict(max_evals=3), "max_evals"),
])
def test_clear_errors(golden, kwargs, message):
  sched = _linear()
  with pytest.raises(ValueError, match=message):
    sample(_gmm(golden, sched), sched, jnp.zeros((2, 8)), **kwargs)


# -- DDIM with eta > 0 -----------------------------------------------------------------------------


def test_stochastic_ddim_step():
  """One DDIM step with eta: x_t - alpha_t x0 - sqrt(sigma_t^2 - c^2) eps = c z with z ~ N(0, I),
  c = eta sigma_t / sigma_s sqrt(1 - alpha_s^2 / alpha_t^2)."""
  sched = _linear()
  means, stds, weights = np.array([[0.3]]), np.array([[0.5]]), np.array([[1.0]])
  noise_fn = jdpm.samplers.gaussian_mixture_noise_fn(sched, means, stds, weights)
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.key(0), (8192, 1), jnp.float64)
    s, t, eta = 0.6, 0.4, 0.7
    x_t = sample(noise_fn, sched, x_T, method="ddim", eta=eta, rng=jax.random.key(3), steps=1, t_start=s,
                 t_end=t)
    x_again = sample(noise_fn, sched, x_T, method="ddim", eta=eta, rng=jax.random.key(3), steps=1, t_start=s,
                     t_end=t)
    np.testing.assert_array_equal(x_t, x_again)
    (a_s, s_s), (a_t, s_t) = _alpha_sigma(sched, s), _alpha_sigma(sched, t)
    # Gaussian data: closed-form noise and data predictions.
    var_s = a_s**2 * 0.5**2 + s_s**2
    eps = s_s * (x_T - a_s * 0.3) / var_s
    x0 = (x_T - s_s * eps) / a_s
    c = eta * s_t / s_s * np.sqrt(1.0 - a_s**2 / a_t**2)
    z = (np.asarray(x_t) - a_t * x0 - np.sqrt(s_t**2 - c**2) * eps) / c
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.04
    deterministic = sample(noise_fn, sched, x_T, method="ddim", steps=1, t_start=s, t_end=t)
    np.testing.assert_allclose(deterministic, a_t * x0 + s_t * eps, rtol=1e-12, atol=1e-12)


def test_stochastic_ddim_moments_on_gaussian_data():
  """For N(mu, s^2) data the exact model is linear in x, so the sampler's output is Gaussian with moments
  given by a recursion over the grid: x_t = alpha_t mu + K (x_s - alpha_s mu) + c z, with
  K = (alpha_t alpha_s s^2 + sqrt(sigma_t^2 - c^2) sigma_s) / v_s and v_s = alpha_s^2 s^2 + sigma_s^2."""
  sched = _linear()
  mu, std, eta, steps = 0.3, 0.5, 1.0, 20
  noise_fn = jdpm.samplers.gaussian_mixture_noise_fn(sched, [[mu]], [[std]], [[1.0]])
  x_T = jax.random.normal(jax.random.key(5), (16384, 1))
  x0 = np.asarray(sample(noise_fn, sched, x_T, method="ddim", eta=eta, rng=jax.random.key(6), steps=steps,
                         t_end=1e-3))
  times = np.asarray(jdpm.samplers.make_plan(sched, method="ddim", steps=steps, t_end=1e-3).timesteps)
  with jax.enable_x64(True):
    alpha, sigma = (np.asarray(v) for v in _alpha_sigma(sched, jnp.asarray(times)))
  mean, var = 0.0, 1.0
  for i in range(steps):
    a_s, s_s, a_t, s_t = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
    c = eta * s_t / s_s * np.sqrt(1.0 - a_s**2 / a_t**2)
    v_s = a_s**2 * std**2 + s_s**2
    gain = (a_t * a_s * std**2 + np.sqrt(s_t**2 - c**2) * s_s) / v_s
    mean, var = a_t * mu + gain * (mean - a_s * mu), gain**2 * var + c**2
  # 16384 samples: standard errors ~0.004 (mean) and ~0.003 (std).
  assert abs(x0.mean() - mean) < 0.015 and abs(x0.std() - np.sqrt(var)) < 0.012, (x0.mean(), x0.std(), mean, var)
  # The deterministic sampler (eta = 0) is a different, also exactly predictable, map.
  assert abs(np.sqrt(var) - std) > 0.02


# -- thresholding ----------------------------------------------------------------------------------


def test_dynamic_thresholding_matches_numpy():
  x0 = np.random.RandomState(0).randn(3, 4, 4, 2) * np.array([0.2, 2.0, 4.0])[:, None, None, None]
  out = jdpm.samplers.dynamic_thresholding(jnp.asarray(x0), 0.9, 1.0)
  s = np.maximum(np.quantile(np.abs(x0).reshape(3, -1), 0.9, axis=1), 1.0)[:, None, None, None]
  np.testing.assert_allclose(out, np.clip(x0, -s, s) / s, rtol=1e-6)
  np.testing.assert_allclose(out[0], x0[0], rtol=1e-6)  # within [-1, 1] already: untouched


def test_thresholded_dpm_solver_pp_matches_manual_loop(golden):
  sched = _linear()
  noise_fn = _gmm(golden, sched)
  with jax.enable_x64(True):
    x_T = jnp.asarray(golden["x_T"])
    x0, info = sample(noise_fn, sched, x_T, method="dpm_solver++", order=1, steps=4, skip_type="time_uniform",
                      t_start=1.0, t_end=1e-3, thresholding=True, thresholding_ratio=0.9,
                      thresholding_max_val=0.8, return_trajectory=True)
    assert np.abs(np.asarray(info["x0_pred"])).max() <= 1.0 + 1e-12
    times = np.linspace(1.0, 1e-3, 5)
    x = np.asarray(x_T)
    for i in range(4):
      s, t = times[i], times[i + 1]
      (a_s, s_s), (a_t, s_t) = _alpha_sigma(sched, s), _alpha_sigma(sched, t)
      pred = np.asarray(_data_prediction(sched, noise_fn, jnp.asarray(x), s))
      thr = np.maximum(np.quantile(np.abs(pred), 0.9, axis=1), 0.8)[:, None]
      pred = np.clip(pred, -thr, thr) / thr
      h = np.log(a_t / s_t) - np.log(a_s / s_s)
      x = s_t / s_s * x - a_t * np.expm1(-h) * pred
    np.testing.assert_allclose(x0, x, rtol=1e-10, atol=1e-12)
    plain = sample(noise_fn, sched, x_T, method="dpm_solver++", order=1, steps=4, skip_type="time_uniform",
                   t_start=1.0, t_end=1e-3)
    assert np.abs(np.asarray(plain) - x).max() > 1e-2


# -- make_noise_fn ---------------------------------------------------------------------------------


def _toy_mean(x, t_input, labels, w=0.7, b=0.2):
  """The first C output channels of `_toy_apply`, written out in NumPy."""
  x = np.asarray(x, np.float64)
  return (w * (1 + t_input / 1000) * x
          + (0.1 * np.asarray(labels, np.float64) + b)[:, None, None, None] * np.arange(1, x.shape[-1] + 1.0))


def _toy_apply(calls, variables, x, t_input, y):
  """A tiny learned-sigma 'network': (B, H, W, C) -> (B, H, W, 2C), recording its batch sizes."""
  jax.debug.callback(functools.partial(calls.append, x.shape[0]))
  scale = variables["w"] * (1.0 + t_input / 1000.0)[:, None, None, None]
  label = (0.1 * y.astype(x.dtype) + variables["b"])[:, None, None, None]
  mean = scale * x + label * jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
  return jnp.concatenate([mean, 100.0 + 0.0 * mean], axis=-1)


def test_make_noise_fn_cfg_channels_time_and_learned_sigma():
  sched = VPSchedule.discrete(np.linspace(1e-4, 0.02, 1000))
  calls = []
  variables = {"w": jnp.float32(0.7), "b": jnp.float32(0.2)}
  y = jnp.array([3, 5])
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  t = jnp.array([0.5, 0.5])
  noise_fn = jdpm.samplers.make_noise_fn(functools.partial(_toy_apply, calls), variables, sched, y=y,
                                         learned_sigma=True, guidance_scale=4.0, null_label=10,
                                         guided_channels=3)
  eps = _call(noise_fn, x, t)
  t_in = (0.5 - 1.0 / 1000) * 1000.0  # discrete model time 499
  cond, uncond = _toy_mean(x, t_in, y), _toy_mean(x, t_in, [10, 10])
  expected = np.concatenate([uncond[..., :3] + 4.0 * (cond[..., :3] - uncond[..., :3]), cond[..., 3:]], -1)
  np.testing.assert_allclose(eps, expected, rtol=1e-5, atol=1e-5)
  assert calls == [4]  # one batched call for both halves

  # x0- and v-prediction networks are converted to noise predictions.
  for model_type in ("x0", "v"):
    fn = jdpm.samplers.make_noise_fn(functools.partial(_toy_apply, []), variables, sched, y=y,
                                     learned_sigma=True, model_type=model_type)
    alpha, sigma = (float(v) for v in _alpha_sigma(sched, 0.5))
    x64 = np.asarray(x, np.float64)
    want = (x64 - alpha * cond) / sigma if model_type == "x0" else alpha * cond + sigma * x64
    np.testing.assert_allclose(_call(fn, x, t), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("outside", ["cond", "uncond"])
def test_guidance_window_costs_one_call_outside(golden, outside):
  sched = _linear()
  calls = []
  variables = {"w": jnp.float32(0.7), "b": jnp.float32(0.2)}
  y = jnp.array([3, 5])
  noise_fn = jdpm.samplers.make_noise_fn(functools.partial(_toy_apply, calls), variables, sched, y=y,
                                         learned_sigma=True, guidance_scale=3.0, null_label=10,
                                         guidance_window=(0.0, 0.4), outside_window=outside)
  assert noise_fn.uses_progress
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4))
  t = jnp.full((2,), 0.3)
  # A continuous schedule: the network sees t itself.
  cond, uncond = _toy_mean(x, 0.3, y), _toy_mean(x, 0.3, [10, 10])
  guided = uncond + 3.0 * (cond - uncond)
  single = cond if outside == "cond" else uncond
  np.testing.assert_allclose(_call(noise_fn, x, t, jnp.float32(0.2)), guided, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_call(noise_fn, x, t, jnp.float32(0.5)), single, rtol=1e-5, atol=1e-6)

  calls.clear()
  x0 = sample(noise_fn, sched, x, method="dpm_solver++", steps=10, t_end=1e-3)
  jax.effects_barrier()
  assert np.isfinite(np.asarray(x0)).all()
  # The first 40% of the 10 evaluations see the doubled batch, the other 6 one batch.
  assert calls == [4] * 4 + [2] * 6


def test_guidance_scale_is_not_baked_into_the_program():
  sched = _linear()
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4))
  chex.clear_trace_counter()
  apply = functools.partial(chex.assert_max_traces(_toy_apply, n=1), [])
  outputs = []
  for scale in (2.0, 5.0):
    fn = jdpm.samplers.make_noise_fn(apply, {"w": jnp.float32(0.7), "b": jnp.float32(0.2)}, sched,
                                     y=jnp.array([3, 5]), learned_sigma=True, guidance_scale=scale, null_label=10)
    outputs.append(sample(fn, sched, x, method="unipc", steps=5, t_end=1e-3))
  chex.clear_trace_counter()
  assert np.abs(np.asarray(outputs[0]) - np.asarray(outputs[1])).max() > 1e-2


def test_make_noise_fn_errors():
  sched = _linear()
  apply = functools.partial(_toy_apply, [])
  with pytest.raises(ValueError, match="null_label"):
    jdpm.samplers.make_noise_fn(apply, {}, sched, y=jnp.zeros(2, int), guidance_scale=2.0)
  with pytest.raises(ValueError, match="model_type"):
    jdpm.samplers.make_noise_fn(apply, {}, sched, model_type="score_fn")
  with pytest.raises(ValueError, match="guidance_window"):
    jdpm.samplers.make_noise_fn(apply, {}, sched, y=jnp.zeros(2, int), guidance_scale=2.0, null_label=1,
                                guidance_window=(0.5, 0.2))


def test_power_cosine_guidance_schedule_in_noise_fn():
  """MDTv2's schedule: per-sample scale 1 + (s - 1) (1 - cos(pi (1 - t_in/N)^pow)) / 2 on the model time."""
  from jdpm.diffusion import VPSchedule
  from jdpm.samplers import make_noise_fn

  sched = VPSchedule.discrete(np.linspace(1e-4, 0.02, 1000))

  def apply_fn(variables, x, t_in, y):  # cond output 1 + x, uncond output x: eps = x + scale
    return x + (y != 10).astype(x.dtype)[:, None]

  noise_fn = make_noise_fn(apply_fn, {}, sched, y=jnp.array([1, 2, 3]), guidance_scale=3.8, null_label=10,
                           scale_pow=4.0)
  t = jnp.array([1.0, 0.5, 0.001])
  eps = noise_fn(jnp.zeros((3, 2)), t)
  t_in = (np.asarray(t) - 1e-3) * 1000
  expected = 1 + 2.8 * 0.5 * (1 - np.cos(np.pi * (1 - t_in / 1000) ** 4))
  np.testing.assert_allclose(eps[:, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(eps[:, 1], expected, rtol=1e-6)
