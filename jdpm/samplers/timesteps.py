"""Time grids for the fast samplers, the orders of multistep steps, and DPM-Solver's singlestep allocation.

Grids run from t_start (noisy) down to t_end. Three spacings, as in DPM-Solver and UniPC:
  * "logSNR": uniform in lambda = log(alpha / sigma) (recommended for low-resolution pixel models),
  * "time_uniform": uniform in t (recommended for high-resolution and latent models),
  * "time_quadratic": uniform in sqrt(t), then squared (DDIM's low-resolution choice).

The final-step rule of the multistep methods (`lower_order_final`). A multistep step of order k
extrapolates the model outputs of the last k grid points, spaced h_{i-1}, h_{i-2}, .. in lambda, over its
own length h_i; the extrapolated terms grow like (h_i / h_{i-1})^(k-1), while a first-order step only
holds the last output (its error is bounded by how much the data prediction changes). Time grids end
with a step much longer in lambda than the others (lambda ~ -log(t) / 2 near t = 0), the more so the
smaller t_end: h_last / h_prev ~ 3.5-5 at t_end = 1e-3 (10-50 steps), ~ 9 at 1e-6, ~ 20 at 1e-12.
Measured on an analytic Gaussian mixture (exact ODE solution; 3 schedules, 3 grids, t_end 1e-3 .. 1e-12,
10-50 steps, DPM-Solver(++) orders 2 and 3 with a full-order last step), such a step never lost to DDIM
while h_last / h_prev < 2, lost in 1 of 36 cases between 2 and 3, and in 21-100% of the cases above 3
(more often the longer the step), by up to 190x. Hence:
  True (default): any step longer than LONG_STEP_RATIO = 2 times the previous one (on these grids only the
    last step ever is) is taken at first order, on top of the authors' short-grid rule below;
  "authors": the authors' rule only: UniPC always lowers the final steps (step i uses
    min(order, steps + 1 - i)), DPM-Solver multistep only on grids of fewer than 10 steps;
  False: the final steps keep the full order (for convergence studies).
diffusers lowers DPM-Solver++'s last steps below 15 steps; at 10-14 steps on logSNR grids, whose steps are
all equally long, that cost accuracy here (DPM-Solver++(3M), 10 steps: max error 0.14 instead of 0.085),
so the short-grid threshold stays the authors' 10.
"""

import numpy as np

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
LOWER_ORDER_FINAL = (True, "authors", False)
# A step longer in lambda than LONG_STEP_RATIO times the previous one is taken at first order (True).
LONG_STEP_RATIO = 2.0


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


def check_lower_order_final(value):
  """The canonical `lower_order_final`: True, "authors" or False (NumPy booleans and 0 / 1 accepted)."""
  if isinstance(value, str) and value == "authors":
    return value
  if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
    return bool(value)
  raise ValueError(f"lower_order_final must be True, 'authors' or False; got {value!r}.")


def multistep_orders(steps, order, lower_order_final, short_grid):
  """The order of each of the `steps` steps of a multistep method, before the long-step rule.

  Steps i = 1, 2, .. < order warm up with order i (no earlier outputs yet). On a short grid, fewer than
  `short_grid` steps (None: any grid), the later steps use min(order, steps + 1 - i) when lower_order_final
  is True or "authors", as in the authors' code; with False they keep the full order.
  Args:
    steps, order: the number of steps and the method's order.
    lower_order_final: True, "authors" or False (see the module docstring).
    short_grid: the authors' threshold (DPM-Solver: 10; UniPC: None).
  Returns:
    a list of `steps` ints.
  """
  short = lower_order_final is not False and (short_grid is None or steps < short_grid)
  # Warm-up first, as in the authors' loops (with order > 3 and few steps the two rules overlap).
  return [i if i < order else min(order, steps + 1 - i) if short else order for i in range(1, steps + 1)]


def long_steps(xp, lams):
  """Which steps are long in lambda: h_i > LONG_STEP_RATIO * h_{i-1}, or h_i not finite (sigma_end = 0).

  Args:
    lams: the S + 1 lambdas of the grid (scalars, NumPy or traced).
  Returns:
    a list of S booleans (NumPy or traced); the first step is never long.
  """
  out = [xp.asarray(False)]
  for i in range(1, len(lams) - 1):
    h, h_prev = lams[i + 1] - lams[i], lams[i] - lams[i - 1]
    out.append(xp.logical_not(h <= LONG_STEP_RATIO * h_prev))
  return out
