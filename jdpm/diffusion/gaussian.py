"""The discrete Gaussian diffusion process of DDPM / improved DDPM, as used to train DiT, MDT and EDT.

Notation: step n = 0..N-1 has beta_n, alpha_bar_n = prod_{i<=n} (1 - beta_i), and

  q(x_n | x_0) = N(sqrt(alpha_bar_n) x_0, (1 - alpha_bar_n) I),
  q(x_{n-1} | x_n, x_0) = N(coef1_n x_0 + coef2_n x_n, posterior_variance_n I).

A denoiser is a function ``model_fn(x, t, **model_kwargs)`` with x: (B, H, W, C) NHWC and t: (B,) int
original timesteps. It returns (B, H, W, C) for fixed variances, or (B, H, W, 2C) when the variance is
learned: the first C channels of the last axis are the mean prediction, the last C the variance values.

What the mean channels predict (``mean_type``):
  * ``"epsilon"``: the noise eps in x_n = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps;
  * ``"x0"``: x_0 itself;
  * ``"v"``: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, so that
    x_0 = sqrt(alpha_bar) x_n - sqrt(1 - alpha_bar) v.

The reverse variance (``var_type``):
  * ``"learned_range"``: values v in [-1, 1] interpolate the log variance between the posterior variance
    (v = -1) and beta_n (v = +1): log var = f log beta_n + (1 - f) log posterior_variance_n, f = (v + 1) / 2;
  * ``"learned"``: the channels are the log variance;
  * ``"fixed_small"``: the posterior variance; ``"fixed_large"``: beta_n (posterior_variance_1 at n = 0).

All coefficient tables are float64 NumPy arrays computed once. Inside the JAX functions a coefficient is
gathered at t and cast to the dtype of the array it multiplies, exactly like the reference implementation,
which casts the float64 tables to float32.

A respaced process (fewer steps, e.g. 250 for sampling) keeps a subset of the original steps, re-derives
beta_i = 1 - alpha_bar[m_i] / alpha_bar[m_{i-1}] and remembers ``timestep_map`` m, so that the model still
receives the original timesteps.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.checks import check_choice as _check_choice
from jdpm.diffusion import betas as betas_lib
from jdpm.diffusion import losses
from jdpm.diffusion import respace

MEAN_TYPES = ("epsilon", "x0", "v")
VAR_TYPES = ("learned_range", "learned", "fixed_small", "fixed_large")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")

_static = dict(static=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """An N-step Gaussian diffusion; build it with `from_betas` or `create_diffusion`.

  The object is an immutable pytree: the tables are its leaves and the three type strings are static, so
  it can be closed over or passed as an argument to a jitted function.

  Attributes (each table is (N,) float64 unless stated):
    betas, log_betas: beta_n and log beta_n.
    alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next: alpha_bar_n, alpha_bar_{n-1} (1 at n = 0),
      alpha_bar_{n+1} (0 at n = N-1).
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
    sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod: functions of alpha_bar used by q and by
      x_0 = sqrt(1/alpha_bar) x_n - sqrt(1/alpha_bar - 1) eps.
    posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2: the
      posterior q(x_{n-1} | x_n, x_0); the log variance at n = 0 (where the variance is 0) is that of n = 1.
    fixed_large_variance, fixed_large_log_variance: beta_n, with posterior_variance_1 at n = 0.
    timestep_map: (N,) int64, the original timestep of each step (0..N-1 unless respaced).
    mean_type, var_type, loss_type: see the module docstring and `training_losses`.
  """
  betas: np.ndarray
  log_betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  alphas_cumprod_next: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  log_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  fixed_large_variance: np.ndarray
  fixed_large_log_variance: np.ndarray
  timestep_map: np.ndarray
  mean_type: str = dataclasses.field(default="epsilon", metadata=_static)
  var_type: str = dataclasses.field(default="learned_range", metadata=_static)
  loss_type: str = dataclasses.field(default="mse", metadata=_static)

  # -- construction ------------------------------------------------------------------------------

  @classmethod
  def from_betas(cls, betas, *, mean_type="epsilon", var_type="learned_range", loss_type="mse",
                 timestep_map=None):
    """Builds every table from the betas, in float64.

    Args:
      betas: (N,) betas in (0, 1], N >= 2.
      mean_type: "epsilon", "x0" or "v".
      var_type: "learned_range", "learned", "fixed_small" or "fixed_large".
      loss_type: "mse", "rescaled_mse", "kl" or "rescaled_kl".
      timestep_map: (N,) ints, the original timestep the model receives at each step (default 0..N-1).
    """
    _check_choice("mean_type", mean_type, MEAN_TYPES)
    _check_choice("var_type", var_type, VAR_TYPES)
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    betas = np.array(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
      raise ValueError(f"betas must be a 1-D array of at least 2 steps; got shape {betas.shape}.")
    if not (np.all(betas > 0) and np.all(betas <= 1)):
      raise ValueError("betas must lie in (0, 1].")
    n = betas.shape[0]
    if timestep_map is None:
      timestep_map = np.arange(n)
    timestep_map = np.asarray(timestep_map, dtype=np.int64)
    if timestep_map.shape != (n,):
      raise ValueError(f"timestep_map must have shape ({n},) like betas; got {timestep_map.shape}.")

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at n = 0; its log there borrows the value of n = 1.
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    # "Fixed large" uses beta_n, except at n = 0 where the posterior variance gives a better decoder.
    fixed_large_variance = np.append(posterior_variance[1], betas[1:])
    return cls(
        betas=betas,
        log_betas=np.log(betas),
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        alphas_cumprod_next=alphas_cumprod_next,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        fixed_large_variance=fixed_large_variance,
        fixed_large_log_variance=np.log(fixed_large_variance),
        timestep_map=timestep_map,
        mean_type=mean_type,
        var_type=var_type,
        loss_type=loss_type,
    )

  def respace(self, use_timesteps):
    """A process over a subset of this one's steps, with the same marginals at those steps (host-side).

    Args:
      use_timesteps: the steps to keep (indices into this process), e.g. from `space_timesteps`.
    Returns:
      a GaussianDiffusion with betas_i = 1 - alpha_bar[m_i] / alpha_bar[m_{i-1}] (alpha_bar[m_{-1}] = 1)
      whose timestep_map gives the original timesteps.
    """
    kept = np.array(sorted(set(int(i) for i in use_timesteps)), dtype=np.int64)
    n = self.num_timesteps
    if kept.size < 2 or kept[0] < 0 or kept[-1] >= n:
      raise ValueError(f"use_timesteps must hold at least 2 distinct steps in [0, {n}); got {kept.size} "
                       f"steps in [{kept.min(initial=0)}, {kept.max(initial=0)}].")
    alphas_cumprod = np.asarray(self.alphas_cumprod, dtype=np.float64)[kept]
    previous = np.append(1.0, alphas_cumprod[:-1])
    return GaussianDiffusion.from_betas(
        1.0 - alphas_cumprod / previous, mean_type=self.mean_type, var_type=self.var_type,
        loss_type=self.loss_type, timestep_map=np.asarray(self.timestep_map)[kept])

  @property
  def num_timesteps(self):
    """N, the number of steps."""
    return self.betas.shape[0]

  @property
  def learns_variance(self):
    """Whether the model outputs 2C channels (mean and variance)."""
    return self.var_type in ("learned", "learned_range")

  # -- forward process ---------------------------------------------------------------------------

  def model_timesteps(self, t):
    """The original timesteps the model receives at steps t: (B,) int32."""
    return jnp.asarray(self.timestep_map)[t].astype(jnp.int32)

  def q_mean_variance(self, x_start, t):
    """q(x_t | x_0): (mean, variance, log_variance), each broadcastable to x_start's shape."""
    _check_t(t, x_start)
    mean = _gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
    # 1 - alpha_bar in float64 when the table is still a host array, as the reference does.
    one_minus = (1.0 - self.alphas_cumprod if isinstance(self.alphas_cumprod, np.ndarray)
                 else 1.0 - jnp.asarray(self.alphas_cumprod))
    variance = _gather(one_minus, t, x_start)
    log_variance = _gather(self.log_one_minus_alphas_cumprod, t, x_start)
    return mean, variance, log_variance

  def q_sample(self, x_start, t, noise):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

    Args:
      x_start: (B, ...) clean data x_0.
      t: (B,) int steps.
      noise: standard normal noise shaped like x_start.
    Returns:
      x_t shaped like x_start.
    """
    _check_t(t, x_start)
    _check_same_shape(x_start=x_start, noise=noise)
    return (_gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

  def q_posterior_mean_variance(self, x_start, x_t, t):
    """q(x_{t-1} | x_t, x_0): (mean, variance, log_variance_clipped); the last two broadcast to x_t."""
    _check_t(t, x_t)
    _check_same_shape(x_start=x_start, x_t=x_t)
    mean = (_gather(self.posterior_mean_coef1, t, x_t) * x_start
            + _gather(self.posterior_mean_coef2, t, x_t) * x_t)
    variance = _gather(self.posterior_variance, t, x_t)
    log_variance = _gather(self.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance

  # -- conversions between predictions -------------------------------------------------------------

  def predict_xstart_from_eps(self, x_t, t, eps):
    """x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps."""
    _check_same_shape(x_t=x_t, eps=eps)
    return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

  def predict_eps_from_xstart(self, x_t, t, pred_xstart):
    """eps = (sqrt(1 / alpha_bar_t) x_t - x_0) / sqrt(1 / alpha_bar_t - 1)."""
    _check_same_shape(x_t=x_t, pred_xstart=pred_xstart)
    return ((_gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart)
            / _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t))

  def predict_xstart_from_v(self, x_t, t, v):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    _check_same_shape(x_t=x_t, v=v)
    return (_gather(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

  def v_target(self, x_start, t, noise):
    """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x_0, the target of a "v" model."""
    _check_same_shape(x_start=x_start, noise=noise)
    return (_gather(self.sqrt_alphas_cumprod, t, x_start) * noise
            - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start)

  def snr(self, t, dtype=jnp.float32):
    """alpha_bar_t / (1 - alpha_bar_t), computed as (sqrt(alpha_bar) / sqrt(1 - alpha_bar))^2 in `dtype`.

    This order of operations, in float32, is the one EDT's Min-SNR weighting uses. Returns (B,).
    """
    alpha = jnp.asarray(self.sqrt_alphas_cumprod)[t].astype(dtype)
    sigma = jnp.asarray(self.sqrt_one_minus_alphas_cumprod)[t].astype(dtype)
    return jnp.square(alpha / sigma)

  # -- reverse process ---------------------------------------------------------------------------

  def split_model_output(self, model_output, x):
    """Splits a model output into (mean prediction, variance values or None) along the last axis."""
    if self.learns_variance:
      expected = x.shape[:-1] + (2 * x.shape[-1],)
      if model_output.shape != expected:
        raise ValueError(f"with var_type={self.var_type!r} the model must return {expected} (mean and variance "
                         f"channels on the last axis) for x of shape {x.shape}; got {model_output.shape}.")
      channels = x.shape[-1]
      return model_output[..., :channels], model_output[..., channels:]
    if model_output.shape != x.shape:
      raise ValueError(f"with var_type={self.var_type!r} the model must return x's shape {x.shape}; "
                       f"got {model_output.shape}.")
    return model_output, None

  def p_mean_variance_from_output(self, model_output, x, t, *, clip_denoised=False, denoised_fn=None):
    """p(x_{t-1} | x_t) and the x_0 prediction, from a model output already computed.

    Args:
      model_output: the model's output at (x, t): shaped like x, or with 2C channels if it learns the variance.
      x: (B, H, W, C) the state x_t.
      t: (B,) int steps of this process.
      clip_denoised: clip the x_0 prediction to [-1, 1] (for pixel-space models; latent models use False).
      denoised_fn: optional function applied to the x_0 prediction before clipping.
    Returns:
      a dict with "mean", "variance", "log_variance" and "pred_xstart", all shaped like x.
    """
    _check_t(t, x)
    mean_output, var_values = self.split_model_output(model_output, x)
    if self.var_type == "learned_range":
      min_log = _gather(self.posterior_log_variance_clipped, t, x)
      max_log = _gather(self.log_betas, t, x)
      frac = (var_values + 1) / 2
      log_variance = frac * max_log + (1 - frac) * min_log
      variance = jnp.exp(log_variance)
    elif self.var_type == "learned":
      log_variance = var_values
      variance = jnp.exp(log_variance)
    elif self.var_type == "fixed_small":
      variance = _gather(self.posterior_variance, t, x)
      log_variance = _gather(self.posterior_log_variance_clipped, t, x)
    else:
      variance = _gather(self.fixed_large_variance, t, x)
      log_variance = _gather(self.fixed_large_log_variance, t, x)

    if self.mean_type == "epsilon":
      pred_xstart = self.predict_xstart_from_eps(x, t, mean_output)
    elif self.mean_type == "v":
      pred_xstart = self.predict_xstart_from_v(x, t, mean_output)
    else:
      pred_xstart = mean_output
    if denoised_fn is not None:
      pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1, 1)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {"mean": mean, "variance": jnp.broadcast_to(variance, x.shape),
            "log_variance": jnp.broadcast_to(log_variance, x.shape), "pred_xstart": pred_xstart}

  def p_mean_variance(self, model_fn, x, t, *, model_kwargs=None, clip_denoised=False, denoised_fn=None):
    """Calls ``model_fn(x, timestep_map[t], **model_kwargs)`` and returns `p_mean_variance_from_output`.

    The reference implementation defaults to clip_denoised=True; here the default is False, which is what
    DiT-style latent models sample with.
    """
    model_output = model_fn(x, self.model_timesteps(t), **(model_kwargs or {}))
    return self.p_mean_variance_from_output(model_output, x, t, clip_denoised=clip_denoised,
                                            denoised_fn=denoised_fn)

  def p_sample(self, model_fn, x, t, noise, *, model_kwargs=None, clip_denoised=False, denoised_fn=None):
    """One ancestral step: x_{t-1} = mean + [t != 0] exp(log_variance / 2) noise.

    Args:
      model_fn: the denoiser (see the module docstring).
      x: (B, H, W, C) the state x_t.
      t: (B,) int steps of this process.
      noise: standard normal noise shaped like x.
      model_kwargs, clip_denoised, denoised_fn: as in `p_mean_variance`.
    Returns:
      a dict with "sample" (x_{t-1}) and "pred_xstart", both shaped like x.
    """
    _check_same_shape(x=x, noise=noise)
    out = self.p_mean_variance(model_fn, x, t, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                               denoised_fn=denoised_fn)
    nonzero = _broadcast_batch((t != 0).astype(x.dtype), x)
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}

  def training_losses(self, model_fn, x_start, t, noise, *, model_kwargs=None, min_snr_gamma=None,
                      min_snr_offset=0.0):
    """Per-example training losses; see `jdpm.diffusion.losses.training_losses`."""
    return losses.training_losses(self, model_fn, x_start, t, noise, model_kwargs=model_kwargs,
                                  min_snr_gamma=min_snr_gamma, min_snr_offset=min_snr_offset)


def create_diffusion(timestep_respacing="", *, noise_schedule="linear", diffusion_steps=1000, learn_sigma=True,
                     sigma_small=False, predict_xstart=False, predict_v=False, use_kl=False,
                     rescale_learned_sigmas=False):
  """The diffusion DiT, MDT and EDT train with (defaults), or one respaced for sampling.

  Args:
    timestep_respacing: "" (all steps; training), or a `space_timesteps` spec such as "250" or "ddim50".
    noise_schedule: "linear" or "squaredcos_cap_v2".
    diffusion_steps: N of the original process.
    learn_sigma: learned-range variance (the model outputs 2C channels); else fixed large (or small).
    sigma_small: with learn_sigma=False, use the posterior variance instead of beta.
    predict_xstart, predict_v: predict x_0 or v instead of eps.
    use_kl: train on the rescaled variational bound alone.
    rescale_learned_sigmas: "rescaled_mse", which scales the vb term by N / 1000.
  Returns:
    a GaussianDiffusion. As in the reference, even "" goes through respacing (of all steps), which
    re-derives the betas from alpha_bar (they then differ from the raw schedule by ~1e-16).
  """
  if predict_xstart and predict_v:
    raise ValueError("choose at most one of predict_xstart and predict_v.")
  betas = betas_lib.named_beta_schedule(noise_schedule, diffusion_steps)
  if use_kl:
    loss_type = "rescaled_kl"
  elif rescale_learned_sigmas:
    loss_type = "rescaled_mse"
  else:
    loss_type = "mse"
  mean_type = "x0" if predict_xstart else ("v" if predict_v else "epsilon")
  if learn_sigma:
    var_type = "learned_range"
  else:
    var_type = "fixed_small" if sigma_small else "fixed_large"
  base = GaussianDiffusion.from_betas(betas, mean_type=mean_type, var_type=var_type, loss_type=loss_type)
  if not timestep_respacing:
    timestep_respacing = [diffusion_steps]
  return base.respace(respace.space_timesteps(diffusion_steps, timestep_respacing))


def _gather(table, t, x):
  """table[t] cast to x's dtype and shaped (B, 1, ..., 1) to broadcast against x."""
  values = jnp.asarray(table)[t].astype(x.dtype)
  return _broadcast_batch(values, x)


def _broadcast_batch(values, x):
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def _check_t(t, x):
  if t.ndim != 1 or t.shape[0] != x.shape[0]:
    raise ValueError(f"t must be a (B,) array of steps with B = x.shape[0] = {x.shape[0]}; got shape {t.shape}.")


def _check_same_shape(**arrays):
  shapes = {name: a.shape for name, a in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"these arrays must share a shape: {shapes}.")


