"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction), multistep and singlestep, orders 1-3.

Multistep (Lu et al. 2022, "DPM-Solver++"): each step reuses the model outputs of the previous grid points;
the first steps warm up with orders 1, 2, ... The final steps follow `lower_order_final` (see
`timesteps`): "authors" lowers them to min(order, steps remaining) on grids of fewer than 10 steps, as the
authors' code does (so that results match theirs); True (the default) also takes any step more than twice as
long in lambda as the previous one (the last step of time grids) at first order. NFE = steps.

Singlestep (Lu et al. 2022, "DPM-Solver"): each outer step s -> t evaluates the model at s and at
intermediate times s_1, s_2 placed at fractions r_1, r_2 of the step in lambda (taken from the spacing of
the time grid, so 1/3, 2/3 or 1/2 on logSNR grids). "singlestep" is DPM-Solver-fast, which mixes orders to
use exactly `steps` evaluations; "singlestep_fixed" takes steps // order steps of the given order.

solver_type "dpmsolver" uses the paper's difference quotients, "taylor" the Taylor-expansion variant (the
multistep third-order update is the same for both).
"""

from jdpm.samplers import integrator
from jdpm.samplers import timesteps as timesteps_lib
from jdpm.samplers.plan import Lin, Program, m, select, x_cur, x_in

SOLVER_TYPES = ("dpmsolver", "taylor")
MAX_ORDER = 3
AUTHORS_SHORT_GRID = 10


def _phis(xp, h, predict_x0):
  """(phi_1, phi_2, phi_3) of the DPM-Solver updates (signs as in the data / noise formulas)."""
  if predict_x0:
    phi_1 = xp.expm1(-h)
    phi_2 = phi_1 / h + 1.0
  else:
    phi_1 = xp.expm1(h)
    phi_2 = phi_1 / h - 1.0
  return phi_1, phi_2, phi_2 / h - 0.5


def multistep_step(xp, history, target, order, predict_x0, solver_type):
  """One multistep DPM-Solver(++) step of order 1-3 from history[0] to target, as a `Lin`."""
  s = history[0]
  base = integrator.first_order(xp, s, target, predict_x0)
  if order == 1:
    return base
  h = target.lam - s.lam
  finite = xp.isfinite(h)
  h = xp.where(finite, h, 1.0)
  c_t = target.alpha if predict_x0 else target.sigma
  phi_1, phi_2, phi_3 = _phis(xp, h, predict_x0)
  r0 = (s.lam - history[1].lam) / h
  d1_0 = (1.0 / r0) * (m(s.index) - m(history[1].index))
  if order == 2:
    if solver_type == "dpmsolver":
      correction = (-0.5 * (c_t * phi_1)) * d1_0
    elif predict_x0:
      correction = (c_t * phi_2) * d1_0
    else:
      correction = (-(c_t * phi_2)) * d1_0
  else:
    r1 = (history[1].lam - history[2].lam) / h
    d1_1 = (1.0 / r1) * (m(history[1].index) - m(history[2].index))
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    sign = 1.0 if predict_x0 else -1.0
    correction = (sign * (c_t * phi_2)) * d1 - (c_t * phi_3) * d2
  return select(xp, finite, base + correction, base)


def multistep_program(view, *, steps, order, predict_x0, skip_type, t_start, t_end, lower_order_final,
                      solver_type):
  """Multistep DPM-Solver(++) as a `Program` (steps evaluations)."""
  grid = timesteps_lib.time_grid(view, skip_type, t_start, t_end, steps)
  pts = integrator.points(view, grid)
  xp = view.xp
  nominal = timesteps_lib.multistep_orders(steps, order, lower_order_final, AUTHORS_SHORT_GRID)
  long_steps = timesteps_lib.long_steps(xp, [p.lam for p in pts]) if lower_order_final is True else None
  inputs, updates, orders = [x_cur()], [x_in()], []
  final = None
  for i in range(1, steps + 1):
    step_order = nominal[i - 1]
    lin = multistep_step(xp, pts[i - 1::-1], pts[i], step_order, predict_x0, solver_type)
    if long_steps is not None and step_order > 1:
      # A long step extrapolates the last outputs far beyond their spacing: take it at first order.
      lin = select(xp, long_steps[i - 1], integrator.first_order(xp, pts[i - 1], pts[i], predict_x0), lin)
      if view.host and long_steps[i - 1]:
        step_order = 1
    orders.append(step_order)
    if i < steps:
      inputs.append(lin)
      updates.append(x_in())
    else:
      final = lin
  return Program(timesteps=grid, orders=orders, eval_times=[p.t for p in pts[:steps]], inputs=inputs,
                 updates=updates, final=final, outer_starts=list(range(steps)))


def _singlestep_stages(xp, s, t, h, stage_pts, order, r1, r2, predict_x0, solver_type, index):
  """Stage inputs and the completion of one singlestep step of order 2 or 3.

  Model outputs: m(index) at s, m(index + 1) at s_1, m(index + 2) at s_2; h = lambda_t - lambda_s (finite).
  Returns (list of stage-input `Lin`s for s_1 [, s_2], completion `Lin`), with x_cur = x_s.
  """
  c_t = t.alpha if predict_x0 else t.sigma
  sign = 1.0 if predict_x0 else -1.0
  m_s, m_1 = m(index), m(index + 1)

  def stage_base(point, r):
    # DPM-Solver-1 from s to an intermediate point at fraction r of the step.
    if predict_x0:
      return x_cur(point.sigma / s.sigma) + m(index, -(point.alpha * xp.expm1(-r * h)))
    return x_cur(xp.exp(point.log_alpha - s.log_alpha)) + m(index, -(point.sigma * xp.expm1(r * h)))

  phi_1, phi_2, phi_3 = _phis(xp, h, predict_x0)
  base = integrator.first_order(xp, s, t, predict_x0)
  p1 = stage_pts[0]
  if order == 2:
    if solver_type == "dpmsolver":
      completion = base + (-(0.5 / r1) * (c_t * phi_1)) * (m_1 - m_s)
    else:
      completion = base + (sign * (1.0 / r1) * (c_t * phi_2)) * (m_1 - m_s)
    return [stage_base(p1, r1)], completion
  p2 = stage_pts[1]
  m_2 = m(index + 2)
  if predict_x0:
    phi_22 = xp.expm1(-r2 * h) / (r2 * h) + 1.0
  else:
    phi_22 = xp.expm1(r2 * h) / (r2 * h) - 1.0
  stage_2 = stage_base(p2, r2) + (sign * (r2 / r1) * (p2.sigma if not predict_x0 else p2.alpha) * phi_22) * (m_1 - m_s)
  if solver_type == "dpmsolver":
    completion = base + (sign * (1.0 / r2) * (c_t * phi_2)) * (m_2 - m_s)
  else:
    d1_0 = (1.0 / r1) * (m_1 - m_s)
    d1_1 = (1.0 / r2) * (m_2 - m_s)
    d1 = (1.0 / (r2 - r1)) * (r2 * d1_0 - r1 * d1_1)
    d2 = (2.0 / (r2 - r1)) * (d1_1 - d1_0)
    completion = base + (sign * (c_t * phi_2)) * d1 - (c_t * phi_3) * d2
  return [stage_base(p1, r1), stage_2], completion


def singlestep_program(view, *, steps, order, predict_x0, skip_type, t_start, t_end, solver_type, fixed):
  """Singlestep DPM-Solver(++) as a `Program` (DPM-Solver-fast, or fixed order when `fixed`)."""
  xp = view.xp
  outer, orders = timesteps_lib.singlestep_grid(view, skip_type, t_start, t_end, steps, order, fixed)
  if not orders:
    raise ValueError(f"singlestep_fixed needs steps >= order; got steps={steps}, order={order}.")
  num = len(orders)
  outer_pts = integrator.points(view, outer)

  # Stage fractions r1, r2 from the spacing (in lambda) of each step's own `order`-interval grid.
  fractions = [(None, None)] * num
  for o in sorted(set(orders) - {1}):
    ks = [k for k in range(num) if orders[k] == o]
    ks_arr = xp.asarray(ks)
    inner = timesteps_lib.time_grid(view, skip_type, outer[ks_arr], outer[ks_arr + 1], o)
    lam_inner = view.lam(view.log_alpha(inner))
    span = lam_inner[:, -1] - lam_inner[:, 0]
    r1s = (lam_inner[:, 1] - lam_inner[:, 0]) / span
    r2s = (lam_inner[:, 2] - lam_inner[:, 0]) / span if o == 3 else [None] * len(ks)
    for n, k in enumerate(ks):
      fractions[k] = (r1s[n], r2s[n])

  # Intermediate times s_j = inverse_lambda(lambda_s + r_j h), all at once.
  targets, owners = [], []
  finite = []
  for k in range(num):
    s, t = outer_pts[k], outer_pts[k + 1]
    h = t.lam - s.lam
    ok = xp.isfinite(h)
    finite.append(ok)
    for r in fractions[k]:
      if r is not None:
        # An infinite last step (sigma_t = 0) is taken at first order; its stages are parked at s.
        targets.append(xp.where(ok, s.lam + r * xp.where(ok, h, 0.0), s.lam))
        owners.append(k)
  stage_pts = {}
  if targets:
    stage_times = view.inverse_lambda(xp.stack([xp.asarray(v) for v in targets]))
    for n, p in enumerate(integrator.points(view, stage_times)):
      stage_pts.setdefault(owners[n], []).append(p)

  inputs, updates, eval_times, starts = [], [], [], []
  previous = x_cur()
  for k, o in enumerate(orders):
    index = len(eval_times)
    s, t = outer_pts[k]._replace(index=index), outer_pts[k + 1]
    starts.append(index)
    inputs.append(previous)
    updates.append(x_in())
    eval_times.append(s.t)
    base = integrator.first_order(xp, s, t, predict_x0)
    if o == 1:
      previous = base
      continue
    r1, r2 = fractions[k]
    h_ok = finite[k]
    if not (view.host and h_ok):
      # Fractions of an infinite step are 0 or NaN; any distinct values keep the unused stages finite.
      r1 = xp.where(h_ok, r1, 0.5)
      r2 = None if r2 is None else xp.where(h_ok, r2, 0.75)
    # With an infinite step the stages still run (fixed NFE) but must stay finite: use h = 1 there.
    h = xp.where(h_ok, t.lam - s.lam, 1.0)
    stages, completion = _singlestep_stages(xp, s, t, h, stage_pts[k], o, r1, r2, predict_x0, solver_type,
                                           index)
    for stage, point in zip(stages, stage_pts[k]):
      inputs.append(stage)
      updates.append(x_cur())
      eval_times.append(point.t)
    previous = select(xp, h_ok, completion, base)
  return Program(timesteps=outer, orders=list(orders), eval_times=eval_times, inputs=inputs,
                 updates=updates, final=previous, outer_starts=starts)
