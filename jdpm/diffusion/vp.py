"""Variance-preserving noise schedules in continuous time, t in (0, T].

The forward process is q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) with alpha_t^2 + sigma_t^2 = 1, and
lambda_t = log(alpha_t / sigma_t) is the half log-SNR. This is the `NoiseScheduleVP` of the DPM-Solver
and UniPC papers; the fast samplers in `jdpm.samplers` only ever talk to a schedule through it.

Three kinds:
  * ``VPSchedule.discrete(betas)``: a model trained on N discrete steps n = 0..N-1 is placed on the
    continuous grid t_n = (n + 1) / N, and log alpha_t is piecewise linear between those knots (with linear
    extrapolation outside), log alpha_{t_n} = 1/2 sum_{i<=n} log(1 - beta_i).
  * ``VPSchedule.linear(beta_0, beta_1)``: the continuous VP-SDE with beta(t) = beta_0 + t (beta_1 - beta_0),
    log alpha_t = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2.
  * ``VPSchedule.cosine(s=0.008)``: the continuous cosine schedule of improved DDPM, alpha_t proportional to
    cos((t + s) / (1 + s) pi / 2), with T = 0.9946 (at T = 1 sigma/alpha blows up).

All methods accept scalars or arrays of times (any shape) and return arrays of the same shape, computed in the
dtype of the input (float64 under ``jax.enable_x64``).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

_KINDS = ("discrete", "linear", "cosine")


def interpolate(x, xp, yp):
  """Piecewise-linear y = f(x) through the knots (xp, yp), extrapolating with the outermost segments.

  Args:
    x: array of any shape.
    xp: (K,) increasing knot positions, K >= 2.
    yp: (K,) knot values.
  Returns:
    an array shaped like x.
  """
  xp = jnp.asarray(xp, dtype=jnp.result_type(x, float))
  yp = jnp.asarray(yp, dtype=xp.dtype)
  x = jnp.asarray(x, dtype=xp.dtype)
  # Segment i spans [xp[i], xp[i+1]]; points left of xp[0] (right of xp[-1]) use the first (last) segment.
  i = jnp.clip(jnp.searchsorted(xp, x, side="left") - 1, 0, xp.shape[0] - 2)
  x0, x1, y0, y1 = xp[i], xp[i + 1], yp[i], yp[i + 1]
  return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VPSchedule:
  """A VP noise schedule; build it with `discrete`, `linear` or `cosine`.

  Attributes:
    kind: "discrete", "linear" or "cosine".
    T: the largest time the schedule is meant to be used at (1.0, or 0.9946 for cosine).
    total_n: number of discrete training steps the schedule corresponds to (1000 for continuous schedules).
    beta_0, beta_1: the linear schedule's end points (unused otherwise).
    cosine_s: the cosine schedule's offset s (unused otherwise).
    t_array: (N,) knot times (n + 1) / N of a discrete schedule, float64 (empty otherwise).
    log_alpha_array: (N,) log alpha at the knots, float64 (empty otherwise).
  """
  t_array: np.ndarray
  log_alpha_array: np.ndarray
  kind: str = dataclasses.field(metadata=dict(static=True), default="linear")
  T: float = dataclasses.field(metadata=dict(static=True), default=1.0)
  total_n: int = dataclasses.field(metadata=dict(static=True), default=1000)
  beta_0: float = dataclasses.field(metadata=dict(static=True), default=0.1)
  beta_1: float = dataclasses.field(metadata=dict(static=True), default=20.0)
  cosine_s: float = dataclasses.field(metadata=dict(static=True), default=0.008)

  # -- constructors ------------------------------------------------------------------------------

  @classmethod
  def discrete(cls, betas=None, *, alphas_cumprod=None, clip_lambda=None):
    """A discrete-time schedule from its betas (or its cumulative alpha products).

    Args:
      betas: (N,) DDPM betas, e.g. ``np.linspace(1e-4, 0.02, 1000)``.
      alphas_cumprod: (N,) alternative to `betas`: the products prod_{i<=n} (1 - beta_i).
      clip_lambda: if set (DPM-Solver uses -5.1 for cosine-beta models), drop trailing knots whose
        lambda is below it; the remaining knots are re-spaced on (0, 1] as the official code does.
    """
    if (betas is None) == (alphas_cumprod is None):
      raise ValueError("VPSchedule.discrete needs exactly one of `betas` or `alphas_cumprod`.")
    if betas is not None:
      betas = np.asarray(betas, dtype=np.float64)
      if betas.ndim != 1 or betas.size < 2 or np.any(betas <= 0) or np.any(betas >= 1):
        raise ValueError(f"betas must be a 1-D array of >= 2 values in (0, 1); got shape {betas.shape}.")
      log_alphas = 0.5 * np.cumsum(np.log(1.0 - betas))
    else:
      alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
      if alphas_cumprod.ndim != 1 or alphas_cumprod.size < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with >= 2 values; got shape {alphas_cumprod.shape}.")
      log_alphas = 0.5 * np.log(alphas_cumprod)
    if clip_lambda is not None:
      lambdas = log_alphas - 0.5 * np.log(1.0 - np.exp(2.0 * log_alphas))
      n_drop = int(np.searchsorted(lambdas[::-1], clip_lambda))
      if n_drop > 0:
        log_alphas = log_alphas[:-n_drop]
    n = log_alphas.shape[0]
    t_array = np.linspace(0.0, 1.0, n + 1)[1:]
    return cls(t_array=t_array, log_alpha_array=log_alphas, kind="discrete", T=1.0, total_n=n)

  @classmethod
  def linear(cls, beta_0=0.1, beta_1=20.0):
    """The continuous linear VP-SDE (score-SDE defaults beta_0 = 0.1, beta_1 = 20)."""
    if not 0 <= beta_0 < beta_1:
      raise ValueError(f"need 0 <= beta_0 < beta_1; got beta_0={beta_0}, beta_1={beta_1}.")
    empty = np.zeros((0,))
    return cls(t_array=empty, log_alpha_array=empty, kind="linear", T=1.0, beta_0=float(beta_0),
               beta_1=float(beta_1))

  @classmethod
  def cosine(cls, s=0.008):
    """The continuous cosine schedule of improved DDPM (T = 0.9946 as in DPM-Solver/UniPC)."""
    empty = np.zeros((0,))
    return cls(t_array=empty, log_alpha_array=empty, kind="cosine", T=0.9946, cosine_s=float(s))

  # -- marginals ---------------------------------------------------------------------------------

  def marginal_log_mean_coeff(self, t):
    """log alpha_t."""
    t = jnp.asarray(t, dtype=jnp.result_type(t, float))
    if self.kind == "discrete":
      return interpolate(t, self.t_array, self.log_alpha_array)
    if self.kind == "linear":
      return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
    s = self.cosine_s
    log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))
    return jnp.log(jnp.cos((t + s) / (1.0 + s) * math.pi / 2.0)) - log_alpha_0

  def alpha(self, t):
    """alpha_t = sqrt(alpha_bar) in DDPM notation."""
    return jnp.exp(self.marginal_log_mean_coeff(t))

  def sigma(self, t):
    """sigma_t = sqrt(1 - alpha_t^2)."""
    return jnp.sqrt(1.0 - jnp.exp(2.0 * self.marginal_log_mean_coeff(t)))

  def lambda_(self, t):
    """lambda_t = log alpha_t - log sigma_t (half log-SNR)."""
    log_alpha = self.marginal_log_mean_coeff(t)
    return log_alpha - 0.5 * jnp.log(1.0 - jnp.exp(2.0 * log_alpha))

  def inverse_lambda(self, lam):
    """The time t with lambda_t = lam."""
    lam = jnp.asarray(lam, dtype=jnp.result_type(lam, float))
    log_alpha = -0.5 * jnp.logaddexp(0.0, -2.0 * lam)
    if self.kind == "discrete":
      # log alpha decreases with t, so flip both arrays to get increasing knots.
      return interpolate(log_alpha, self.log_alpha_array[::-1], self.t_array[::-1])
    if self.kind == "linear":
      tmp = 2.0 * (self.beta_1 - self.beta_0) * jnp.logaddexp(-2.0 * lam, 0.0)
      delta = self.beta_0**2 + tmp
      return tmp / (jnp.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
    s = self.cosine_s
    log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))
    return jnp.arccos(jnp.exp(log_alpha + log_alpha_0)) * 2.0 * (1.0 + s) / math.pi - s

  # Aliases with the official names, so code written against NoiseScheduleVP reads naturally.
  marginal_alpha = alpha
  marginal_std = sigma
  marginal_lambda = lambda_
