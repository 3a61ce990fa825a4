"""Discrete DDPM beta schedules, as float64 NumPy arrays.

A schedule of N steps is the array beta_0..beta_{N-1}; step n adds noise of variance beta_n, so that
alpha_bar_n = prod_{i<=n} (1 - beta_i). The names follow improved DDPM / DiT:

  * ``"linear"``: Ho et al.'s 1e-4 -> 0.02 over 1000 steps, with both ends scaled by 1000 / N so that
    the schedule stays similar for any N.
  * ``"squaredcos_cap_v2"`` (alias ``"cosine"``): improved DDPM's alpha_bar(s) = cos((s + 0.008) / 1.008 *
    pi / 2)^2 on s in [0, 1], discretised by `betas_for_alpha_bar` with betas capped at 0.999.
"""

import math

import numpy as np

_COSINE_OFFSET = 0.008


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
  """The linear schedule rescaled to `num_timesteps` steps.

  Args:
    num_timesteps: N, the number of diffusion steps.
    beta_start, beta_end: the end points for N = 1000; both are multiplied by 1000 / N.
  Returns:
    (N,) float64 betas.
  """
  num_timesteps = _check_num_timesteps(num_timesteps)
  scale = 1000 / num_timesteps
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta=0.999):
  """Betas that reproduce a continuous alpha_bar(s), s in [0, 1], at s = (n + 1) / N.

  beta_n = min(1 - alpha_bar((n + 1) / N) / alpha_bar(n / N), max_beta); the cap keeps the last steps
  away from beta = 1, where the reverse process is singular.

  Args:
    num_timesteps: N.
    alpha_bar: a Python function of a float s in [0, 1] returning a float.
    max_beta: the largest allowed beta.
  Returns:
    (N,) float64 betas.
  """
  num_timesteps = _check_num_timesteps(num_timesteps)
  betas = np.empty((num_timesteps,), dtype=np.float64)
  for n in range(num_timesteps):
    ratio = alpha_bar((n + 1) / num_timesteps) / alpha_bar(n / num_timesteps)
    betas[n] = min(1.0 - ratio, max_beta)
  return betas


def cosine_alpha_bar(s):
  """Improved DDPM's cosine alpha_bar(s) for s in [0, 1] (a Python float)."""
  return math.cos((s + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2


def cosine_betas(num_timesteps, max_beta=0.999):
  """Improved DDPM's cosine schedule ("squaredcos_cap_v2"), (N,) float64."""
  return betas_for_alpha_bar(num_timesteps, cosine_alpha_bar, max_beta=max_beta)


def named_beta_schedule(name, num_timesteps):
  """A schedule by name: "linear", or "squaredcos_cap_v2" (also "cosine").

  Returns:
    (N,) float64 betas.
  """
  if name == "linear":
    return linear_betas(num_timesteps)
  if name in ("squaredcos_cap_v2", "cosine"):
    return cosine_betas(num_timesteps)
  raise ValueError(f"unknown beta schedule {name!r}; use 'linear' or 'squaredcos_cap_v2' (alias 'cosine').")


def _check_num_timesteps(num_timesteps):
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer; got {num_timesteps!r}.")
  return int(num_timesteps)
