"""Time grids for the fast samplers, and DPM-Solver's singlestep order allocation.

Grids run from t_start (noisy) down to t_end. Three spacings, as in DPM-Solver and UniPC:
  * "logSNR": uniform in lambda = log(alpha / sigma) (recommended for low-resolution pixel models),
  * "time_uniform": uniform in t (recommended for high-resolution and latent models),
  * "time_quadratic": uniform in sqrt(t), then squared (DDIM's low-resolution choice).
"""

import numpy as np

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


def linspace(xp, start, stop, num):
  """num >= 2 evenly spaced values from start to stop, rounded as torch.linspace rounds them.

  The first half is computed forward from `start`, the second half backward from `stop`, so both end
  points are exact. `start` and `stop` may be arrays of shape S; the result has shape S + (num,).
  """
  start = xp.asarray(start)[..., None]
  stop = xp.asarray(stop)[..., None]
  i = xp.arange(num, dtype=start.dtype)
  step = (stop - start) / (num - 1)
  return xp.where(i < num // 2, start + step * i, stop - step * (num - 1 - i))


def time_grid(view, skip_type, t_start, t_end, num_steps):
  """The num_steps + 1 times from t_start to t_end.

  Args:
    view: a `ScheduleView`.
    skip_type: one of SKIP_TYPES.
    t_start, t_end: scalars, or arrays of equal shape S for several grids at once.
    num_steps: number of intervals N >= 1.
  Returns:
    an array of shape S + (N + 1,).
  """
  xp = view.xp
  t_start, t_end = view.asarray(t_start), view.asarray(t_end)
  if skip_type == "logSNR":
    lam_start = view.lam(view.log_alpha(t_start))
    lam_end = view.lam(view.log_alpha(t_end))
    if view.host and not np.all(np.isfinite(lam_end)):
      raise ValueError(f"skip_type='logSNR' needs sigma(t_end) > 0, but sigma vanishes at t_end={t_end}; "
                       "use a larger t_end or skip_type='time_uniform'.")
    return view.inverse_lambda(linspace(xp, lam_start, lam_end, num_steps + 1))
  if skip_type == "time_uniform":
    return linspace(xp, t_start, t_end, num_steps + 1)
  if skip_type == "time_quadratic":
    return linspace(xp, t_start**0.5, t_end**0.5, num_steps + 1)**2
  raise ValueError(f"Unknown skip_type {skip_type!r}; use one of {SKIP_TYPES}.")


def singlestep_orders(steps, order):
  """DPM-Solver-fast: the orders of the singlestep steps that use exactly `steps` model evaluations.

  order 3: steps // 3 + 1 steps, third order except a final (2, 1), (1) or (2) depending on steps % 3;
  order 2: steps // 2 second-order steps, plus one first-order step when steps is odd;
  order 1: `steps` first-order steps.
  """
  if order == 3:
    k = steps // 3 + 1
    if steps % 3 == 0:
      return [3] * (k - 2) + [2, 1]
    if steps % 3 == 1:
      return [3] * (k - 1) + [1]
    return [3] * (k - 1) + [2]
  if order == 2:
    return [2] * (steps // 2) + [1] * (steps % 2)
  if order == 1:
    return [1] * steps
  raise ValueError(f"singlestep DPM-Solver supports order 1, 2 or 3; got order={order}.")


def singlestep_grid(view, skip_type, t_start, t_end, steps, order, fixed):
  """Outer time grid and per-step orders of singlestep DPM-Solver.

  Args:
    fixed: False for the "fast" order allocation (`singlestep_orders`, exactly `steps` evaluations);
      True for `steps // order` steps of order `order`.
  Returns:
    (timesteps_outer (K + 1,), orders: list of K ints).
  """
  if fixed:
    orders = [order] * (steps // order)
    return time_grid(view, skip_type, t_start, t_end, len(orders)), orders
  orders = singlestep_orders(steps, order)
  if skip_type == "logSNR":
    # Uniform in lambda over the outer steps, whatever their orders (as in the DPM-Solver paper).
    return time_grid(view, skip_type, t_start, t_end, len(orders)), orders
  # Otherwise the outer steps sit on the `steps`-interval grid, each spanning as many intervals as its order.
  fine = time_grid(view, skip_type, t_start, t_end, steps)
  index, starts = 0, [0]
  for o in orders:
    index += o
    starts.append(index)
  return fine[view.xp.asarray(starts)], orders
