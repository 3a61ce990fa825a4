"""UniPC (Zhao et al., NeurIPS 2023): the UniP-p predictor and UniC-p corrector, B(h) variants bh1 / bh2.

One step from s = t_{i-1} to t = t_i with order p uses the model outputs m at s and at the p - 1 earlier
grid points s_k (most recent first). With h = lambda_t - lambda_s, r_k = (lambda_{s_k} - lambda_s) / h,
D_k = (m_{s_k} - m_s) / r_k and hh = -h (data prediction) or h (noise prediction):

  base      = DPM-Solver-1 from s to t
  predictor = base - c_t B(h) sum_k rho^p_k D_k                       (UniP-p, order p)
  corrector = base - c_t B(h) (sum_k rho^c_k D_k + rho^c_p (m_t - m_s)) (UniC-p, order p + 1)

where c_t = alpha_t (data) or sigma_t (noise), B(h) = hh (bh1) or expm1(hh) (bh2), and the rho solve
  sum_k rho_k r_k^{n-1} = n! phi_{n+1}(hh) hh / B(h),   n = 1..p (corrector: the p x p system with r_p = 1;
  predictor: its leading (p-1) x (p-1) block), with h phi_{n+1} from the recursion
  h phi_1 = expm1(hh), h phi_{n+1} = h phi_n / hh - 1 / n!.
As in the authors' code, order-2 predictors and order-1 correctors use the fixed rho = 1/2.

m_t, the model output at the predicted x_t, is reused as the history value of t, so the corrector costs no
extra evaluation; the last step has no corrector. Warm-up steps use orders 1, 2, ..; with
lower_order_final True or "authors" the last steps use min(order, steps remaining), as in the authors' code;
True (the default) also takes any step more than twice as long in lambda as the previous one at first order
(predictor UniP-1 and corrector UniC-1; see `timesteps`).
"""

from jdpm.samplers import integrator
from jdpm.samplers import timesteps as timesteps_lib
from jdpm.samplers.plan import Lin, Program, m, select, x_cur, x_in

VARIANTS = ("bh1", "bh2")


def step(xp, history, target, order, variant, predict_x0, use_corrector):
  """One UniPC step.

  Args:
    xp: numpy or jax.numpy.
    history: `Point`s of the last `order` (or more) evaluations, most recent first.
    target: the `Point` at t; its index is the evaluation index of m_t (used by the corrector).
    order: the step's order p >= 1.
    variant: "bh1" or "bh2".
    predict_x0: data prediction (True) or noise prediction (False).
    use_corrector: whether to also return the corrector.
  Returns:
    (predictor `Lin`, corrector `Lin` or None).
  """
  s = history[0]
  base = integrator.first_order(xp, s, target, predict_x0)
  h = target.lam - s.lam
  finite = xp.isfinite(h)
  # An infinite step (sigma_t = 0) has no meaningful higher-order terms: it falls back to `base`.
  h = xp.where(finite, h, 1.0)
  rks, diffs = [], []
  for k in range(1, order):
    rk = (history[k].lam - s.lam) / h
    rks.append(rk)
    diffs.append((1.0 / rk) * (m(history[k].index) - m(s.index)))
  rks = xp.stack([xp.asarray(r) for r in rks] + [xp.ones_like(xp.asarray(h))])

  hh = -h if predict_x0 else h
  h_phi_1 = xp.expm1(hh)
  h_phi_k = h_phi_1 / hh - 1.0
  factorial = 1.0
  b_h = hh if variant == "bh1" else xp.expm1(hh)
  rows, rhs = [], []
  for n in range(1, order + 1):
    rows.append(rks**(n - 1))
    rhs.append(h_phi_k * factorial / b_h)
    factorial *= n + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  lhs, rhs = xp.stack(rows), xp.stack(rhs)

  scale = -((target.alpha if predict_x0 else target.sigma) * b_h)
  predictor = base
  if order >= 2:
    rhos_p = [0.5] if order == 2 else list(xp.linalg.solve(lhs[:-1, :-1], rhs[:-1]))
    correction = Lin()
    for rho, diff in zip(rhos_p, diffs):
      correction = correction + rho * diff
    predictor = select(xp, finite, base + scale * correction, base)
  if not use_corrector:
    return predictor, None
  rhos_c = [0.5] if order == 1 else list(xp.linalg.solve(lhs, rhs))
  correction = Lin()
  for rho, diff in zip(rhos_c[:-1], diffs):
    correction = correction + rho * diff
  correction = correction + rhos_c[-1] * (m(target.index) - m(s.index))
  corrector = select(xp, finite, base + scale * correction, base)
  return predictor, corrector


def program(view, *, steps, order, variant, predict_x0, skip_type, t_start, t_end, lower_order_final,
            disable_corrector=()):
  """UniPC multistep as a `Program` (steps evaluations).

  Args:
    disable_corrector: 0-based indices of steps whose result is not corrected (the last step never is).
  """
  grid = timesteps_lib.time_grid(view, skip_type, t_start, t_end, steps)
  pts = integrator.points(view, grid)
  xp = view.xp
  inputs, updates, orders = [x_cur()], [x_in()], []
  final = None
  nominal = timesteps_lib.multistep_orders(steps, order, lower_order_final, None)
  long_steps = timesteps_lib.long_steps(xp, [p.lam for p in pts]) if lower_order_final is True else None
  for i in range(1, steps + 1):
    step_order = nominal[i - 1]
    use_corrector = i < steps and (i - 1) not in disable_corrector
    history = pts[i - 1::-1]
    predictor, corrector = step(xp, history, pts[i], step_order, variant, predict_x0, use_corrector)
    if long_steps is not None and step_order > 1:
      # A long step extrapolates the last outputs far beyond their spacing: take it at first order.
      low_p, low_c = step(xp, history, pts[i], 1, variant, predict_x0, use_corrector)
      predictor = select(xp, long_steps[i - 1], low_p, predictor)
      corrector = corrector if corrector is None else select(xp, long_steps[i - 1], low_c, corrector)
      if view.host and long_steps[i - 1]:
        step_order = 1
    orders.append(step_order)
    if i < steps:
      inputs.append(predictor)
      updates.append(corrector if use_corrector else x_in())
    else:
      final = predictor
  return Program(timesteps=grid, orders=orders, eval_times=[p.t for p in pts[:steps]], inputs=inputs,
                 updates=updates, final=final, outer_starts=list(range(steps)))
