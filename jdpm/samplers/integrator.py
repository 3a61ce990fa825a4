"""Shared pieces of the exponential-integrator samplers: time points and the first-order (DDIM) step.

In lambda = log(alpha / sigma), the diffusion ODE has the exact solutions (h = lambda_t - lambda_s)
  data prediction:  x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{l} x0(l) dl,
  noise prediction: x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-l} eps(l) dl,
and every solver here approximates the integral by a polynomial in lambda through model outputs.
"""

import collections

from jdpm.samplers.plan import m, x_cur

Point = collections.namedtuple("Point", "index t log_alpha alpha sigma lam")
Point.__doc__ = """A time on a grid: its model-evaluation index and its marginals (scalars)."""


def points(view, times, first_index=0):
  """`Point`s for an array of times, numbered from first_index."""
  la, alpha, sigma, lam = view.marginals(times)
  return [Point(first_index + i, times[i], la[i], alpha[i], sigma[i], lam[i]) for i in range(times.shape[0])]


def first_order(xp, s, t, predict_x0):
  """DPM-Solver-1 (DDIM) from s to t as a `Lin` in x_cur and the model output at s.

  With sigma_t = 0 (lambda_t = inf) the noise-prediction coefficient sigma_t * expm1(h) is replaced by
  its limit alpha_t sigma_s / alpha_s, so that a final step to a noise-free time stays finite.
  """
  h = t.lam - s.lam
  if predict_x0:
    return x_cur(t.sigma / s.sigma) + m(s.index, -(t.alpha * xp.expm1(-h)))
  finite = xp.isfinite(h)
  sigma_phi = xp.where(finite, t.sigma * xp.expm1(xp.where(finite, h, 0.0)), t.alpha * s.sigma / s.alpha)
  return x_cur(xp.exp(t.log_alpha - s.log_alpha)) + m(s.index, -sigma_phi)
