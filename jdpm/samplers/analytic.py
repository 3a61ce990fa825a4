"""An analytic diffusion model: data with independent Gaussian-mixture coordinates.

For data whose coordinate d has density sum_k w_dk N(mu_dk, s_dk^2), the marginal at time t is again a
mixture, with variances v_dk = alpha_t^2 s_dk^2 + sigma_t^2, so the exact noise prediction
  eps*(x, t)_d = -sigma_t d/dx_d log p_t(x) = sigma_t sum_k r_dk (x_d - alpha_t mu_dk) / v_dk,
  r_dk = softmax_k( log w_dk - log(v_dk) / 2 - (x_d - alpha_t mu_dk)^2 / (2 v_dk) ),
is available in closed form. Samplers can then be compared with the exact ODE solution.
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
