"""Evaluating a VP schedule while the coefficient tables of a sampler are built.

The tables (times, alpha, sigma, solver coefficients) are computed once per call of `sample`, before the
sampling loop. When the schedule and the time range are concrete (the usual case, also inside `jax.jit`
when the schedule is closed over) they are computed on the host in float64 NumPy, whatever the dtype of
the samples: the float64 tables are exact to ~1e-16 and are cast to the working dtype only at the end.
When the schedule itself is traced (passed as an argument of a jitted function) the same code runs on
jnp arrays in the current default precision.

Only `marginal_log_mean_coeff` and `inverse_lambda` are taken from the schedule; alpha, sigma and lambda
are derived from log alpha with the same expressions as `VPSchedule`:
  alpha = exp(log_alpha),  sigma = sqrt(1 - exp(2 log_alpha)),  lambda = log_alpha - log(1 - exp(2 log_alpha)) / 2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*trees):
  """True when no leaf of the given pytrees is a tracer."""
  leaves = jax.tree_util.tree_leaves(trees)
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


@functools.partial(jax.jit, static_argnames="name")
def _evaluate(sched, t, *, name):
  return getattr(sched, name)(t)


def _host_evaluate(sched, name, t):
  """float64 NumPy evaluation of one schedule method, run eagerly even while an outer jit traces."""
  t = np.asarray(t, dtype=np.float64)
  flat = t.reshape(-1)
  # Pad to a power of two so that the handful of compiled evaluators is reused across step counts.
  size = max(64, 1 << max(flat.size - 1, 0).bit_length())
  padded = np.concatenate([flat, np.full(size - flat.size, flat[0] if flat.size else 0.5)])
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    out = np.asarray(_evaluate(sched, padded, name=name), dtype=np.float64)
  return out[:flat.size].reshape(t.shape)


class ScheduleView:
  """The schedule as seen by the table builders: NumPy float64 on the host, or jnp when traced.

  Attributes:
    xp: the array namespace the builders use (`numpy` or `jax.numpy`).
    host: whether values are concrete float64 NumPy arrays.
  """

  def __init__(self, sched, host):
    self.sched = sched
    self.host = host
    self.xp = np if host else jnp

  def asarray(self, v):
    if self.host:
      return np.asarray(v, dtype=np.float64)
    return jnp.asarray(v, dtype=jnp.result_type(float))

  def log_alpha(self, t):
    """log alpha_t for an array of times."""
    if self.host:
      return _host_evaluate(self.sched, "marginal_log_mean_coeff", t)
    return self.sched.marginal_log_mean_coeff(self.asarray(t))

  def inverse_lambda(self, lam):
    """The times t with lambda_t = lam, for an array of lam."""
    if self.host:
      return _host_evaluate(self.sched, "inverse_lambda", lam)
    return self.sched.inverse_lambda(self.asarray(lam))

  def alpha(self, log_alpha):
    return self.xp.exp(log_alpha)

  def sigma(self, log_alpha):
    return self.xp.sqrt(1.0 - self.xp.exp(2.0 * log_alpha))

  def lam(self, log_alpha):
    return log_alpha - 0.5 * self.xp.log(1.0 - self.xp.exp(2.0 * log_alpha))

  def marginals(self, t):
    """(log_alpha, alpha, sigma, lambda) at the times t."""
    la = self.log_alpha(t)
    return la, self.alpha(la), self.sigma(la), self.lam(la)
