"""An analytic diffusion model: data with independent Gaussian-mixture coordinates.

For data whose coordinate d has density sum_k w_dk N(mu_dk, s_dk^2), the marginal at time t is again a
mixture, with variances v_dk = alpha_t^2 s_dk^2 + sigma_t^2, so the exact noise prediction
  eps*(x, t)_d = -sigma_t d/dx_d log p_t(x) = sigma_t sum_k r_dk (x_d - alpha_t mu_dk) / v_dk,
  r_dk = softmax_k( log w_dk - log(v_dk) / 2 - (x_d - alpha_t mu_dk)^2 / (2 v_dk) ),
is available in closed form. Samplers can then be compared with the exact ODE solution
(`gaussian_mixture_ode_solution`; in closed form for a single Gaussian, where the flow is linear).
"""

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_mixture_eps(sched, means, stds, weights, x, t):
  """The exact noise prediction of a per-coordinate Gaussian mixture.

  Args:
    sched: a `VPSchedule`.
    means, stds, weights: (D, K) mixture parameters per coordinate (weights sum to 1 over K).
    x: (B, D) noisy samples.
    t: (B,) continuous times.
  Returns:
    (B, D) eps*(x, t).
  """
  log_alpha = sched.marginal_log_mean_coeff(t)[:, None, None]
  alpha = jnp.exp(log_alpha)
  sigma = jnp.sqrt(1.0 - jnp.exp(2.0 * log_alpha))
  var = alpha**2 * stds**2 + sigma**2
  diff = x[:, :, None] - alpha * means
  logits = jnp.log(weights) - 0.5 * jnp.log(var) - diff**2 / (2.0 * var)
  resp = jax.nn.softmax(logits, axis=-1)
  return sigma[..., 0] * jnp.sum(resp * diff / var, axis=-1)


def gaussian_mixture_noise_fn(sched, means, stds, weights):
  """noise_fn(x, t) of `gaussian_mixture_eps`, as a pytree (its arrays are arguments of compiled samplers).

  The parameters are kept as float64 NumPy arrays, so the function computes in the precision in force
  where it is called (float64 under `jax.enable_x64`).
  """
  params = [np.asarray(v, dtype=np.float64) for v in (means, stds, weights)]
  return jax.tree_util.Partial(gaussian_mixture_eps, sched, *params)


def gaussian_mixture_x0(means, stds, weights, x, lam):
  """The exact data prediction E[x_0 | x_lam] of per-coordinate mixtures, in float64 NumPy.

  Args:
    means, stds, weights: (D, K) mixture parameters per coordinate.
    x: (..., D) noisy samples at half log-SNR lam (any VP schedule: alpha^2 = sigmoid(2 lam)).
    lam: a scalar lambda = log(alpha / sigma).
  Returns:
    an array shaped like x.
  """
  alpha, sigma = np.sqrt(_sigmoid(2.0 * lam)), np.sqrt(_sigmoid(-2.0 * lam))
  var = alpha**2 * stds**2 + sigma**2
  diff = x[..., None] - alpha * means
  logits = np.log(weights) - 0.5 * np.log(var) - diff**2 / (2.0 * var)
  resp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  resp /= resp.sum(axis=-1, keepdims=True)
  return np.sum(resp * (means + alpha * stds**2 / var * diff), axis=-1)


def _sigmoid(z):
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def ode_solution(x0_fn, x, lam_start, lam_end, rtol=1e-12):
  """The probability-flow ODE solution from lam_start to lam_end (half log-SNRs), to ~rtol (needs scipy).

  In lambda the ODE reads dx/dlam = alpha x0(x, lam) - alpha^2 x, whatever the schedule, so one solution
  serves every schedule with the same lambda range.

  Args:
    x0_fn: (x, lam) -> the data prediction at x, float64 NumPy (e.g. `gaussian_mixture_x0`, or a guided
      combination of two of them).
    x: (B, D) samples at lam_start.
    lam_start, lam_end: floats, lam_start < lam_end (finite).
  Returns:
    (B, D) float64 samples at lam_end.
  """
  from scipy import integrate  # only the reference solutions need scipy (a test dependency)

  x = np.asarray(x, dtype=np.float64)

  def rhs(lam, y):
    alpha2 = _sigmoid(2.0 * lam)
    y = y.reshape(x.shape)
    return (np.sqrt(alpha2) * x0_fn(y, lam) - alpha2 * y).ravel()

  sol = integrate.solve_ivp(rhs, (float(lam_start), float(lam_end)), x.ravel(), method="DOP853", rtol=rtol,
                            atol=rtol * 0.1)
  if not sol.success:
    raise RuntimeError(f"the reference ODE solve failed: {sol.message}")
  return sol.y[:, -1].reshape(x.shape)


def gaussian_mixture_ode_solution(means, stds, weights, x, lam_start, lam_end, rtol=1e-12):
  """`ode_solution` for per-coordinate mixtures (D, K): DOP853 at rtol 1e-12 agrees with the references of
  tests/data/samplers_gmm.npz to ~1e-13."""
  params = [np.asarray(v, dtype=np.float64) for v in (means, stds, weights)]
  return ode_solution(lambda y, lam: gaussian_mixture_x0(*params, y, lam), x, lam_start, lam_end, rtol)


def gaussian_ode_solution(mean, std, x, lam_start, lam_end):
  """Closed-form probability-flow ODE solution for N(mean, std^2) data (the flow is affine), float64.

  x_end = alpha_end mean + sqrt(v_end / v_start) (x - alpha_start mean), v = alpha^2 std^2 + sigma^2;
  lam_end may be inf (sigma = 0).
  """
  def marginal(lam):
    alpha2 = _sigmoid(2.0 * np.float64(lam))
    return np.sqrt(alpha2), alpha2 * std**2 + (1.0 - alpha2)

  (a_s, v_s), (a_e, v_e) = marginal(lam_start), marginal(lam_end)
  return a_e * mean + np.sqrt(v_e / v_s) * (np.asarray(x, dtype=np.float64) - a_s * mean)
