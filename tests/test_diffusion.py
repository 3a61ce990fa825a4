"""Gaussian diffusion: schedules, respacing, q/p, losses and samplers against the official IDDPM/DiT/EDT code.

Golden numbers come from tests/data/iddpm.npz (official PyTorch outputs, NCHW; transposed to NHWC here),
written by tools/make_iddpm_reference.py from the DiT and EDT diffusion code.
"""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdpm import diffusion as jd

DATA = pathlib.Path(__file__).parent / "data" / "iddpm.npz"
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
# float32 ports of the official float32 computations agree to a few ulp; the bound asked for is 1e-5.
RTOL = 1e-5


@pytest.fixture(scope="module")
def golden():
  with np.load(DATA, allow_pickle=False) as data:
    return dict(data)


@pytest.fixture(scope="module")
def inputs(golden):
  nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
  return dict(x_start=nhwc(golden["input/x_start"]), noise=nhwc(golden["input/noise"]),
              model_output=nhwc(golden["input/model_output"]), sample_noise=nhwc(golden["input/sample_noise"]),
              t=jnp.asarray(golden["input/t"], jnp.int32),
              t_respaced=jnp.asarray(golden["input/t_respaced"], jnp.int32))


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _assert_close(actual, desired, rtol=RTOL):
  """Elementwise |a - d| <= rtol |d| (plus a float32-ulp floor for exact zeros)."""
  np.testing.assert_allclose(np.asarray(actual), desired, rtol=rtol, atol=1e-12)


# -- schedules and respacing -----------------------------------------------------------------------


def test_linear_schedule_and_tables_match_reference_exactly(golden):
  np.testing.assert_array_equal(jd.linear_betas(1000), golden["base/schedule/betas_linear_raw"])
  base = jd.create_diffusion("")
  for key in SCHEDULE_KEYS:
    np.testing.assert_array_equal(getattr(base, key), golden[f"base/schedule/{key}"], err_msg=key)
  np.testing.assert_array_equal(base.timestep_map, np.arange(1000))
  # The linear schedule's end points scale with 1000 / N.
  betas = jd.named_beta_schedule("linear", 250)
  np.testing.assert_allclose([betas[0], betas[-1]], [4e-4, 0.08], rtol=1e-15)


def test_cosine_schedule_reproduces_alpha_bar():
  n = 1000
  betas = jd.named_beta_schedule("squaredcos_cap_v2", n)
  np.testing.assert_array_equal(betas, jd.cosine_betas(n))
  f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
  # Uncapped steps reproduce alpha_bar(s) / alpha_bar(0) at s = (n + 1) / N; the last beta hits the 0.999 cap.
  assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)
  alphas_cumprod = np.cumprod(1 - betas)[:-1]
  expected = f(np.arange(1, n) / n) / f(0.0)
  np.testing.assert_allclose(alphas_cumprod, expected, rtol=1e-12)


def test_space_timesteps(golden):
  kept = jd.space_timesteps(1000, "250")
  np.testing.assert_array_equal(kept, golden["respaced250/timestep_map"])
  assert jd.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  # The reference docstring's example: 300 steps in three sections of 100 with 10, 15, 20 steps.
  kept = jd.space_timesteps(300, [10, 15, 20])
  assert len(kept) == 45
  assert kept[:10] == list(range(0, 100, 11))
  assert {99, 100, 199, 200, 299} <= set(kept)
  # Uneven sections: 1000 = 334 + 333 + 333, each keeping both of its ends.
  kept = jd.space_timesteps(1000, "10,10,10")
  assert len(kept) == 30 and {0, 333, 334, 666, 667, 999} <= set(kept)
  with pytest.raises(ValueError, match="cannot take"):
    jd.space_timesteps(250, "300")
  with pytest.raises(ValueError, match="no integer stride"):
    jd.space_timesteps(10, "ddim6")


def test_respaced_schedule_matches_reference(golden):
  respaced = jd.create_diffusion("250")
  np.testing.assert_array_equal(respaced.betas, golden["respaced250/betas"])
  np.testing.assert_array_equal(respaced.alphas_cumprod, golden["respaced250/alphas_cumprod"])
  np.testing.assert_array_equal(respaced.timestep_map, golden["respaced250/timestep_map"])
  # Respacing keeps the marginals: alpha_bar at kept steps is the original one.
  base = jd.create_diffusion("")
  np.testing.assert_allclose(respaced.alphas_cumprod, base.alphas_cumprod[respaced.timestep_map], rtol=1e-13)


def test_float64_coefficients_under_x64():
  base = jd.create_diffusion("")
  rng = np.random.default_rng(0)
  x0, x_t = rng.normal(size=(2, 3, 2, 2, 1))
  t = np.array([0, 500, 999])
  with jax.enable_x64(True):
    mean, variance, log_variance = base.q_posterior_mean_variance(
        jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
    assert mean.dtype == jnp.float64
    coef = lambda table: table[t][:, None, None, None]
    np.testing.assert_allclose(mean, coef(base.posterior_mean_coef1) * x0 + coef(base.posterior_mean_coef2) * x_t,
                               rtol=1e-12)
    np.testing.assert_allclose(log_variance[:, 0, 0, 0], base.posterior_log_variance_clipped[t], rtol=1e-12)
    np.testing.assert_allclose(variance[:, 0, 0, 0], base.posterior_variance[t], rtol=1e-12, atol=0)


# -- q and p against the official outputs ------------------------------------------------------------


def test_q_sample_p_mean_variance_and_p_sample(golden, inputs):
  base = jd.create_diffusion("")
  x_t = base.q_sample(inputs["x_start"], inputs["t"], inputs["noise"])
  _assert_close(x_t, _nhwc(golden["base/q_sample"]))
  model_fn = lambda x, t: inputs["model_output"]
  for clip in (0, 1):
    out = base.p_mean_variance(model_fn, x_t, inputs["t"], clip_denoised=bool(clip))
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
      _assert_close(out[key], _nhwc(golden[f"base/p_mean_variance/clip{clip}/{key}"]))
    out = base.p_sample(model_fn, x_t, inputs["t"], inputs["sample_noise"], clip_denoised=bool(clip))
    for key in ("sample", "pred_xstart"):
      _assert_close(out[key], _nhwc(golden[f"base/p_sample/clip{clip}/{key}"]))
  # At t = 0 no noise is added.
  np.testing.assert_array_equal(out["sample"][0], base.p_mean_variance(
      model_fn, x_t, inputs["t"], clip_denoised=True)["mean"][0])


def test_respaced_p_mean_variance_and_model_timesteps(golden, inputs):
  respaced = jd.create_diffusion("250")
  x_t = jnp.asarray(_nhwc(golden["base/q_sample"]))
  received = []

  def model_fn(x, t):
    received.append(np.asarray(t))
    return inputs["model_output"]

  out = respaced.p_mean_variance(model_fn, x_t, inputs["t_respaced"])
  np.testing.assert_array_equal(received[0], golden["respaced250/model_t_received"])
  for key in ("mean", "variance", "log_variance", "pred_xstart"):
    _assert_close(out[key], _nhwc(golden[f"respaced250/p_mean_variance/clip0/{key}"]))
  out = respaced.p_sample(model_fn, x_t, inputs["t_respaced"], inputs["sample_noise"])
  for key in ("sample", "pred_xstart"):
    _assert_close(out[key], _nhwc(golden[f"respaced250/p_sample/clip0/{key}"]))


def test_fixed_variances():
  betas = jd.linear_betas(1000)
  t = jnp.array([0, 1, 700])
  x = jnp.ones((3, 2, 2, 1))
  model_fn = lambda x, t: jnp.zeros_like(x)
  small = jd.GaussianDiffusion.from_betas(betas, var_type="fixed_small")
  large = jd.GaussianDiffusion.from_betas(betas, var_type="fixed_large")
  log_small = small.p_mean_variance(model_fn, x, t)["log_variance"][:, 0, 0, 0]
  log_large = large.p_mean_variance(model_fn, x, t)["log_variance"][:, 0, 0, 0]
  posterior = small.posterior_variance
  np.testing.assert_allclose(log_small, np.log([posterior[1], posterior[1], posterior[700]]), rtol=1e-6)
  np.testing.assert_allclose(log_large, np.log([posterior[1], betas[1], betas[700]]), rtol=1e-6)
  with pytest.raises(ValueError, match="must return"):
    jd.create_diffusion("").p_mean_variance(model_fn, x, t)


# -- training losses ---------------------------------------------------------------------------------


def test_training_losses_match_reference(golden, inputs):
  """eps-MSE + learned-range VLB (decoder NLL at t = 0), and EDT's Min-SNR-5 weighting."""
  base = jd.create_diffusion("")
  model_fn = lambda x, t: inputs["model_output"]
  args = (model_fn, inputs["x_start"], inputs["t"], inputs["noise"])
  for prefix, gamma in (("base", None), ("edt_minsnr", 5.0)):
    terms = base.training_losses(*args, min_snr_gamma=gamma)
    assert sorted(terms) == ["loss", "mse", "vb"]
    for key in ("mse", "vb", "loss"):
      _assert_close(terms[key], golden[f"{prefix}/training_losses/{key}"])
  # Under jit XLA fuses the KL's cancelling terms (-1 + dlogvar + exp(-dlogvar), ~1e-3 bits here) differently
  # from the eager op-by-op order, which costs a few float32 ulp of the O(1) terms: measured 1.54e-5
  # relative (elementwise; 7.5e-7 of the largest loss), hence 2e-5 here, not RTOL.
  terms = jax.jit(lambda *a: base.training_losses(model_fn, *a, min_snr_gamma=5.0))(*args[1:])
  for key in ("mse", "vb", "loss"):
    _assert_close(terms[key], golden[f"edt_minsnr/training_losses/{key}"], rtol=2e-5)


def test_kl_loss_types_and_rescaled_mse(inputs):
  model_fn = lambda x, t: inputs["model_output"]
  args = (model_fn, inputs["x_start"], inputs["t"], inputs["noise"])
  hybrid = jd.create_diffusion("").training_losses(*args)
  kl = jd.create_diffusion("", use_kl=True).training_losses(*args)
  np.testing.assert_allclose(kl["loss"], 1000 * hybrid["vb"], rtol=1e-6)
  # With 250 steps the rescaled-MSE vb term is scaled by 250 / 1000.
  respaced = jd.create_diffusion("250", rescale_learned_sigmas=True)
  plain = jd.create_diffusion("250")
  t = inputs["t"] // 4
  np.testing.assert_allclose(respaced.training_losses(model_fn, inputs["x_start"], t, inputs["noise"])["vb"],
                             0.25 * plain.training_losses(model_fn, inputs["x_start"], t, inputs["noise"])["vb"],
                             rtol=1e-6)


def test_vb_trains_only_the_variance(inputs):
  base = jd.create_diffusion("")

  def loss_of(output, key):
    return jnp.sum(base.training_losses(lambda x, t: output, inputs["x_start"], inputs["t"], inputs["noise"])[key])

  grad_vb = jax.grad(loss_of)(inputs["model_output"], "vb")
  grad_mse = jax.grad(loss_of)(inputs["model_output"], "mse")
  assert np.all(grad_vb[..., :4] == 0) and np.any(grad_vb[..., 4:] != 0)
  assert np.all(grad_mse[..., 4:] == 0) and np.any(grad_mse[..., :4] != 0)


def test_x0_and_v_prediction_losses():
  """Perfect predictions give zero MSE, and the Min-SNR weights make eps, x0 and v losses identical.

  For an eps prediction e, the equivalent x0 and v predictions have errors (e - eps) / sqrt(snr) and
  (e - eps) / sqrt(alpha_bar), so mse_x0 = mse_eps / snr and mse_v = mse_eps / alpha_bar; min(snr, g) / snr,
  min(snr, g) and min(snr, g) / (snr + 1) turn all three into min(snr, g) mse_x0. With an offset c the x0
  weight is min(snr, g) + c for all three; c = 1 makes the v weight min(1, (g + 1) / (snr + 1)).
  """
  rng = np.random.default_rng(1)
  x0, noise = (jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32) for _ in range(2))
  eps_hat = noise + 0.3 * jnp.asarray(rng.normal(size=noise.shape), jnp.float32)
  var = jnp.asarray(rng.uniform(-1, 1, size=noise.shape), jnp.float32)
  t = jnp.array([1, 30, 400, 900], jnp.int32)
  diffusions = {kind: jd.create_diffusion("", predict_xstart=kind == "x0", predict_v=kind == "v")
                for kind in ("epsilon", "x0", "v")}
  base = diffusions["epsilon"]
  x_t = base.q_sample(x0, t, noise)
  x0_hat = base.predict_xstart_from_eps(x_t, t, eps_hat)
  predictions = {"epsilon": eps_hat, "x0": x0_hat, "v": base.v_target(x0_hat, t, eps_hat)}
  targets = {"epsilon": noise, "x0": x0, "v": base.v_target(x0, t, noise)}
  # v's definition: x0 = sqrt(abar) x_t - sqrt(1 - abar) v.
  np.testing.assert_allclose(base.predict_xstart_from_v(x_t, t, targets["v"]), x0, atol=2e-5)

  terms, weighted, offset = {}, {}, {}
  for kind, diffusion in diffusions.items():
    assert diffusion.mean_type == kind
    perfect = lambda x, tt, kind=kind: jnp.concatenate([targets[kind], -jnp.ones_like(var)], -1)
    out = diffusion.training_losses(perfect, x0, t, noise)
    np.testing.assert_allclose(out["mse"], 0, atol=1e-10)
    # Exact mean and var = -1 (the posterior variance): the KL vanishes for t > 0.
    np.testing.assert_allclose(out["vb"], 0, atol=2e-6)
    model_fn = lambda x, tt, kind=kind: jnp.concatenate([predictions[kind], var], -1)
    terms[kind] = diffusion.training_losses(model_fn, x0, t, noise)
    weighted[kind] = diffusion.training_losses(model_fn, x0, t, noise, min_snr_gamma=5.0)["mse"]
    offset[kind] = diffusion.training_losses(model_fn, x0, t, noise, min_snr_gamma=5.0, min_snr_offset=1.0)["mse"]

  alphas_cumprod = base.alphas_cumprod[np.asarray(t)]
  snr = alphas_cumprod / (1 - alphas_cumprod)
  np.testing.assert_allclose(terms["x0"]["mse"], terms["epsilon"]["mse"] / snr, rtol=1e-4)
  np.testing.assert_allclose(terms["v"]["mse"], terms["epsilon"]["mse"] / alphas_cumprod, rtol=1e-4)
  for kind in ("x0", "v"):
    np.testing.assert_allclose(terms[kind]["vb"], terms["epsilon"]["vb"], rtol=1e-3)
    np.testing.assert_allclose(weighted[kind], weighted["epsilon"], rtol=1e-4)
  np.testing.assert_allclose(weighted["x0"], np.minimum(snr, 5.0) * terms["x0"]["mse"], rtol=1e-4)
  for kind in ("epsilon", "x0", "v"):
    np.testing.assert_allclose(offset[kind], (np.minimum(snr, 5.0) + 1.0) * terms["x0"]["mse"], rtol=1e-4)
  np.testing.assert_allclose(offset["v"], np.minimum(1.0, 6.0 / (snr + 1)) * terms["v"]["mse"], rtol=1e-4)


def test_discretized_gaussian_log_likelihood_sums_to_one():
  """Over all 256 pixel values the bin probabilities of any Gaussian sum to 1 (tails included)."""
  x = jnp.linspace(-1, 1, 256)[:, None]
  means = jnp.array([[-0.3, 0.0, 0.8]])
  log_scales = jnp.log(jnp.array([[0.01, 0.2, 0.5]]))
  log_p = jd.discretized_gaussian_log_likelihood(jnp.broadcast_to(x, (256, 3)), means=jnp.broadcast_to(
      means, (256, 3)), log_scales=jnp.broadcast_to(log_scales, (256, 3)))
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_p), axis=0), 1.0, atol=1e-5)


# -- timestep samplers -------------------------------------------------------------------------------


def _reference_update(history, counts, ts, losses):
  """The reference sampler's update, written out in NumPy."""
  history, counts = history.copy(), counts.copy()
  size = history.shape[1]
  for t, loss in zip(ts, losses):
    if counts[t] == size:
      history[t, :-1] = history[t, 1:]
      history[t, -1] = loss
    else:
      history[t, counts[t]] = loss
      counts[t] += 1
  return history, counts


def test_loss_second_moment_sampler():
  n, batch = 8, 16
  sampler = jd.create_named_schedule_sampler("loss-second-moment", n)
  assert sampler == jd.LossSecondMomentSampler(n, history_per_term=10, uniform_prob=0.001)
  sample = jax.jit(sampler.sample, static_argnums=2)
  update = jax.jit(sampler.update)
  state = sampler.init()
  ref_history, ref_counts = np.zeros((n, 10)), np.zeros((n,), np.int64)
  rng = np.random.default_rng(2)
  warmed_at = None
  for step in range(20):
    t, weights = sample(state, jax.random.key(step), batch)
    if not sampler.warmed_up(state):
      np.testing.assert_array_equal(weights, 1.0)
    elif warmed_at is None:
      warmed_at = step
    # Timesteps repeat within a batch; losses depend on t so the distribution is far from uniform.
    losses = (np.asarray(t) + 1.0) ** 2 * rng.uniform(0.5, 1.5, size=batch)
    state = update(state, t, jnp.asarray(losses, jnp.float32))
    ref_history, ref_counts = _reference_update(ref_history, ref_counts, np.asarray(t), losses)
    np.testing.assert_array_equal(state.counts, ref_counts)
    np.testing.assert_allclose(state.history, ref_history, rtol=1e-7)
  assert warmed_at is not None and bool(sampler.warmed_up(state))

  rms = np.sqrt(np.mean(ref_history**2, axis=-1))
  expected = rms / rms.sum() * (1 - 0.001) + 0.001 / n
  probs = sampler.weights(state)
  np.testing.assert_allclose(probs, expected, rtol=1e-5)
  draws = 200_000
  t, weights = sample(state, jax.random.key(99), draws)
  np.testing.assert_allclose(weights, 1.0 / (n * expected[np.asarray(t)]), rtol=1e-5)
  frequencies = np.bincount(np.asarray(t), minlength=n) / draws
  # 5 binomial standard errors per timestep.
  np.testing.assert_array_less(np.abs(frequencies - expected), 5 * np.sqrt(expected * (1 - expected) / draws))


def test_uniform_sampler():
  sampler = jd.create_named_schedule_sampler("uniform", 1000)
  t, weights = sampler.sample(sampler.init(), jax.random.key(0), 4096)
  np.testing.assert_array_equal(weights, 1.0)
  assert t.dtype == jnp.int32 and 0 <= int(t.min()) and int(t.max()) < 1000
  assert abs(float(t.mean()) - 499.5) < 5 * 288.7 / 64  # 5 standard errors of the mean of U{0..999}.


def test_logit_normal_sampler():
  n, mean, std = 1000, -0.85, 1.0
  sampler = jd.create_named_schedule_sampler("logit-normal", n, logit_normal=(mean, std))
  assert sampler == jd.LogitNormalSampler(n, mean, std)
  # The logit-normal density at the timesteps' centres, independently of the implementation.
  u = (np.arange(n) + 0.5) / n
  density = np.exp(-0.5 * ((np.log(u / (1 - u)) - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi) * u * (1 - u))
  expected = density / density.sum()
  probs = np.asarray(sampler.weights(sampler.init()), np.float64)
  np.testing.assert_allclose(probs / probs.sum(), expected, rtol=1e-4, atol=1e-9)  # float32 in the far tails
  draws = 400_000
  t, weights = jax.jit(sampler.sample, static_argnums=2)(sampler.init(), jax.random.key(3), draws)
  np.testing.assert_array_equal(weights, 1.0)  # a reweighting of the loss, not an importance sample
  t = np.asarray(t)
  # Quantiles of t / N are sigmoid(mean + std z_q); 400k draws pin them to about one step.
  for q, z in ((0.1, -1.2816), (0.5, 0.0), (0.9, 1.2816)):
    assert abs(np.quantile(t, q) - n / (1 + np.exp(-(mean + std * z)))) <= 2
  with pytest.raises(ValueError, match="std > 0"):
    jd.LogitNormalSampler(n, 0.0, 0.0)
  with pytest.raises(ValueError, match="logit-normal"):
    jd.create_named_schedule_sampler("lognormal", n)


# -- DDPM sampling -----------------------------------------------------------------------------------


def _analytic_model(sampling, base, mu, s):
  """The exact eps and reverse variance for data N(mu, s^2) per channel, in the learned-range form.

  x_t | x_0 ~ N(sqrt(ab) x_0, 1 - ab) gives x_t ~ N(sqrt(ab) mu, v) with v = ab s^2 + 1 - ab, so
  E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / v and Var[x_0 | x_t] = s^2 (1 - ab) / v. The reverse step
  q(x_{i-1} | x_i) is Gaussian with variance posterior_variance_i + coef1_i^2 Var[x_0 | x_i], which the
  model encodes as frac in log var = frac log beta_i + (1 - frac) log posterior_variance_clipped_i.
  """
  timestep_map = jnp.asarray(sampling.timestep_map)
  tables = {name: jnp.asarray(getattr(sampling, name)) for name in (
      "posterior_variance", "posterior_mean_coef1", "posterior_log_variance_clipped", "log_betas")}
  original_alphas_cumprod = jnp.asarray(base.alphas_cumprod)

  @chex.assert_max_traces(n=1)
  def model_fn(x, t):
    ab = original_alphas_cumprod[t][:, None, None, None]
    v = ab * s**2 + 1 - ab
    eps = jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / v
    i = jnp.searchsorted(timestep_map, t)  # back from the original timestep to the sampling step
    pick = lambda name: tables[name][i][:, None, None, None]
    variance = pick("posterior_variance") + pick("posterior_mean_coef1") ** 2 * s**2 * (1 - ab) / v
    frac = ((jnp.log(variance) - pick("posterior_log_variance_clipped"))
            / (pick("log_betas") - pick("posterior_log_variance_clipped")))
    return jnp.concatenate([eps, 2 * frac - 1], axis=-1)

  return model_fn


@pytest.mark.parametrize("respacing", ["100", ""])
def test_ddpm_sampling_recovers_gaussian_data(respacing):
  """DDPM with the exact model samples N(mu, s^2): 4096 draws per channel, 5-standard-error bounds."""
  chex.clear_trace_counter()  # The counter is keyed by model_fn's source, shared by both parameters.
  base = jd.create_diffusion("")
  sampling = jd.create_diffusion(respacing)
  mu = jnp.array([0.7, -1.2])
  s = jnp.array([0.5, 0.2])
  model_fn = _analytic_model(sampling, base, mu, s)
  n = 4096
  x_T = jax.random.normal(jax.random.key(0), (n, 1, 1, 2))
  x0 = jd.ddpm_sample(model_fn, sampling, x_T, jax.random.key(1))
  # The last step returns E[x_0 | x_1] without noise, whose variance is s^2 - Var[x_0 | x_1] (~1e-4 less).
  ab = base.alphas_cumprod[0]
  expected_std = np.sqrt(s**2 - s**2 * (1 - ab) / (ab * s**2 + 1 - ab))
  mean, std = np.mean(x0, axis=(0, 1, 2)), np.std(x0, axis=(0, 1, 2))
  np.testing.assert_array_less(np.abs(mean - mu), 5 * s / np.sqrt(n))
  np.testing.assert_array_less(np.abs(std - expected_std), 5 * s / np.sqrt(2 * n))
  # A second call with new noise reuses the compiled program: model_fn was traced once in all.
  x0_again = jd.ddpm_sample(model_fn, sampling, x_T, jax.random.key(2))
  assert not np.allclose(x0_again, x0)
  np.testing.assert_array_less(np.abs(np.mean(x0_again, axis=(0, 1, 2)) - mu), 5 * s / np.sqrt(n))


def test_diffusion_package_imports_no_flax():
  for path in (pathlib.Path(jd.__file__).parent).glob("*.py"):
    source = path.read_text()
    assert "import flax" not in source and "from flax" not in source, path.name
