"""The DP-IR reverse process: the full chain, the jump to an intermediate step tau, and strided (DDIM) ladders.

Notation: a discrete VP process of N steps with alpha_bar_n (n = 0..N-1, as in
`jdpm.diffusion.GaussianDiffusion`); x_n = sqrt(alpha_bar_n) x0 + sqrt(1 - alpha_bar_n) eps.

A reverse step from n to m < n with a clean estimate x0_hat is the DDIM step

  x_m = sqrt(ab_m) x0_hat + sqrt(1 - ab_m - s^2) eps_hat + s z,
  eps_hat = (x_n - sqrt(ab_n) x0_hat) / sqrt(1 - ab_n),  s^2 = eta^2 (1 - ab_m)/(1 - ab_n) (1 - ab_n/ab_m),

which for eta = 1 is exactly the DDPM posterior q(x_m | x_n, x0 = x0_hat) of the process restricted
to the visited steps (for m = n - 1, the ordinary DDPM posterior; eta = 0 is deterministic DDIM).

The jump: with x0 held at x0_IR, chaining the posteriors from T = N-1 down to tau gives again a
Gaussian, q(x_tau | x_T, x0_IR), with

  mean = sqrt(ab_tau) (1 - ab_T/ab_tau) / (1 - ab_T) x0_IR + sqrt(ab_T/ab_tau) (1 - ab_tau)/(1 - ab_T) x_T,
  var  = (1 - ab_tau) (1 - ab_T/ab_tau) / (1 - ab_T)

(`jump_moments`), the eta = 1 step from T to tau. It costs no network evaluation: x0_IR is computed
once. The network (denoiser + fusion) is then evaluated at every ladder step <= tau, so the number
of function evaluations (NFE) is exactly the number of those steps; the last step (to "n = -1",
alpha_bar = 1) returns x0_hat.

This module is pure JAX (no Flax): ``x0_fn(x_n, n)`` is any function returning E[x0 | ...].
"""

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.diffusion.respace import space_timesteps


def ladder(num_timesteps, steps=None, tau=None):
  """The descending steps at which the network is evaluated.

  Args:
    num_timesteps: N.
    steps: None for every step (the full chain), or K for K steps spread evenly over 0..N-1, both
      ends included (improved DDPM's respacing; the DDIM strides).
    tau: None, or the jump target: only the ladder steps <= tau are kept (tau itself need not be a
      ladder step; the jump then lands on the largest kept step).
  Returns:
    (K',) int64, descending; its length is the NFE.
  """
  n = int(num_timesteps)
  kept = np.arange(n) if steps is None else np.asarray(space_timesteps(n, [int(steps)]))
  if tau is not None:
    if not 0 <= tau < n:
      raise ValueError(f"tau must lie in [0, {n - 1}]; got {tau}.")
    kept = kept[kept <= tau]
  return kept[::-1].astype(np.int64)


def nfe(num_timesteps, steps=None, tau=None):
  """The number of network evaluations of `sample` with these settings."""
  return int(ladder(num_timesteps, steps, tau).shape[0])


def jump_moments(abar_from, abar_to):
  """(coef_x0, coef_x, variance) of q(x_to | x_from, x0) for alpha_bar values abar_to > abar_from."""
  # Plain arithmetic: float64 for NumPy inputs, the array's dtype for JAX inputs.
  ratio = abar_from / abar_to
  coef_x0 = abar_to ** 0.5 * (1.0 - ratio) / (1.0 - abar_from)
  coef_x = ratio ** 0.5 * (1.0 - abar_to) / (1.0 - abar_from)
  variance = (1.0 - abar_to) * (1.0 - ratio) / (1.0 - abar_from)
  return coef_x0, coef_x, variance


def reverse_step(x_n, x0_hat, abar_n, abar_m, noise, eta=1.0):
  """One reverse step from alpha_bar abar_n to abar_m (> abar_n); see the module docstring."""
  eps_hat = (x_n - jnp.sqrt(abar_n) * x0_hat) / jnp.sqrt(1.0 - abar_n)
  var = eta ** 2 * (1.0 - abar_m) / (1.0 - abar_n) * (1.0 - abar_n / abar_m)
  return (jnp.sqrt(abar_m) * x0_hat + jnp.sqrt(jnp.maximum(1.0 - abar_m - var, 0.0)) * eps_hat
          + jnp.sqrt(var) * noise)


def jump(x_T, x0, abar_T, abar_tau, noise):
  """A sample of q(x_tau | x_T, x0) (the closed form of chaining the posteriors with x0 fixed)."""
  coef_x0, coef_x, var = jump_moments(abar_T, abar_tau)
  return coef_x0 * x0 + coef_x * x_T + jnp.sqrt(var) * noise


def sample(x0_fn, alphas_cumprod, x_T, rng, *, steps=None, tau=None, x0_jump=None, eta=1.0, scan=True):
  """Runs the reverse process and returns (x0, nfe).

  Args:
    x0_fn: ``x0_fn(x_n, n) -> x0_hat`` with x_n (B, ...) and n an int32 scalar step.
    alphas_cumprod: (N,) alpha_bar_n of the process.
    x_T: (B, ...) the starting point at step N-1 (standard normal noise).
    rng: a PRNG key for the reverse noise (and the jump).
    steps: None (every step) or K evenly spaced steps (DDIM strides); see `ladder`.
    tau: None (no jump) or the jump target; needs `x0_jump`.
    x0_jump: the clean estimate the jump holds fixed (DP-IR: x0_IR), shaped like x_T.
    eta: 1 for the DDPM posterior (stochastic), 0 for deterministic DDIM steps.
    scan: run the steps in one `jax.lax.scan` (one trace of x0_fn); False runs a Python loop
      (eager calls, for counting evaluations or debugging).
  Returns:
    (x0_hat of the last step, the NFE: the number of x0_fn evaluations).
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  n = abar.shape[0]
  steps_desc = ladder(n, steps, tau)
  if steps_desc.size == 0:
    raise ValueError(f"no ladder step at or below tau={tau}.")
  rng_jump, rng_steps = jax.random.split(rng)
  x = x_T
  if tau is not None:
    if x0_jump is None:
      raise ValueError("the jump to tau needs x0_jump (the restorer's estimate x0_IR).")
    if steps_desc[0] < n - 1:
      x = jump(x_T, x0_jump, abar[n - 1], abar[steps_desc[0]], jax.random.normal(rng_jump, x_T.shape, x_T.dtype))
  # Step k goes from steps_desc[k] to steps_desc[k + 1], and the last to alpha_bar = 1.
  abar_n = abar[steps_desc].astype(np.float32)
  abar_m = np.append(abar[steps_desc[1:]], 1.0).astype(np.float32)
  keys = jax.random.split(rng_steps, steps_desc.size)

  def body(x, inputs):
    t, a_n, a_m, key = inputs
    x0_hat = x0_fn(x, t)
    last = a_m >= 1.0
    noise = jax.random.normal(key, x.shape, x.dtype)
    x_next = jnp.where(last, x0_hat, reverse_step(x, x0_hat, a_n, jnp.minimum(a_m, 1.0 - 1e-7), noise, eta))
    return x_next, None

  inputs = (jnp.asarray(steps_desc, jnp.int32), jnp.asarray(abar_n), jnp.asarray(abar_m), keys)
  if scan:
    x, _ = jax.lax.scan(body, x, inputs)
  else:
    for k in range(steps_desc.size):
      x, _ = body(x, jax.tree.map(lambda a, k=k: a[k], inputs))
  return x, int(steps_desc.size)
