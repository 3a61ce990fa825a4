"""DDIM (Song et al., ICLR 2021), deterministic (eta = 0) or stochastic (eta > 0).

From s to t (t less noisy), with x0 = (x_s - sigma_s eps) / alpha_s:
  x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z,   c = eta (sigma_t / sigma_s) sqrt(1 - alpha_s^2 / alpha_t^2),
z ~ N(0, I). eta = 0 is the deterministic DDIM, which equals first-order DPM-Solver; eta = 1 gives the
ancestral DDPM posterior on the chosen grid. The deterministic case is built by
`dpm_solver.multistep_program` with order 1 so that it matches DPM-Solver-1 to the last bit.
"""

from jdpm.samplers import integrator
from jdpm.samplers import timesteps as timesteps_lib
from jdpm.samplers.plan import Program, m, x_cur, x_in


def stochastic_step(xp, s, t, eta, predict_x0):
  """(update `Lin` in x_cur and m(s), noise std c) of one DDIM step with eta > 0."""
  noise_std = eta * (t.sigma / s.sigma) * xp.sqrt(-xp.expm1(2.0 * (s.log_alpha - t.log_alpha)))
  kept = xp.sqrt(xp.maximum(t.sigma**2 - noise_std**2, 0.0))
  if predict_x0:
    lin = x_cur(kept / s.sigma) + m(s.index, t.alpha - s.alpha * kept / s.sigma)
  else:
    lin = x_cur(xp.exp(t.log_alpha - s.log_alpha)) + m(s.index, kept - t.alpha * s.sigma / s.alpha)
  return lin, noise_std


def stochastic_program(view, *, steps, eta, predict_x0, skip_type, t_start, t_end):
  """Stochastic DDIM as a `Program` with per-step noise (steps evaluations)."""
  grid = timesteps_lib.time_grid(view, skip_type, t_start, t_end, steps)
  pts = integrator.points(view, grid)
  inputs, updates, noise = [x_cur()], [x_in()], [view.asarray(0.0)]
  final = final_noise = None
  for i in range(1, steps + 1):
    lin, std = stochastic_step(view.xp, pts[i - 1], pts[i], eta, predict_x0)
    if i < steps:
      inputs.append(lin)
      updates.append(x_in())
      noise.append(std)
    else:
      final, final_noise = lin, std
  return Program(timesteps=grid, orders=[1] * steps, eval_times=[p.t for p in pts[:steps]], inputs=inputs,
                 updates=updates, final=final, input_noise=noise, final_noise=final_noise,
                 outer_starts=list(range(steps)))
