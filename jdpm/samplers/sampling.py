"""The public entry point: `sample(noise_fn, sched, x_T, method=..., ...)`, and `make_plan` behind it.

`make_plan` validates a configuration and turns it into coefficient tables (float64 NumPy on the host
whenever the schedule and time range are concrete); `sample` runs them with the compiled scan of
`engine.run_jit`, which is cached per (noise function, shapes, switches): calling `sample` again with
another step size, grid, order, variant or time range of the same length reuses the compiled program.
"""

import dataclasses
import typing
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.checks import check_choice as _check_choice
from jdpm.samplers import ddim as ddim_lib
from jdpm.samplers import dpm_solver as dpm_solver_lib
from jdpm.samplers import engine
from jdpm.samplers import plan as plan_lib
from jdpm.samplers import schedule_view
from jdpm.samplers import timesteps as timesteps_lib
from jdpm.samplers import unipc as unipc_lib

METHODS = ("unipc", "dpm_solver++", "dpm_solver", "ddim")
# A last step longer in lambda than this many times the previous one, taken at order >= 2, is reported: from
# this ratio on, such steps lost to DDIM in 21-100% of the measured cases (see `timesteps`).
WARN_STEP_RATIO = 3.0
_ALIASES = {"dpmsolver++": "dpm_solver++", "dpmsolver": "dpm_solver", "uni_pc": "unipc"}
SOLVERS = ("multistep", "singlestep", "singlestep_fixed")
PREDICTIONS = ("data", "noise")
_DEFAULT_ORDER = {"unipc": 3, "dpm_solver++": 2, "dpm_solver": 2, "ddim": 1}


class LongFinalStepWarning(UserWarning):
  """The last step is long in lambda and taken at order >= 2 (see `sample`'s lower_order_final)."""


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
  """A validated sampler configuration unrolled into coefficient tables.

  Attributes:
    method: canonical method name.
    timesteps: (S + 1,) outer time grid from t_start to t_end (S steps).
    orders: the order of each outer step (with a traced schedule or time range: before the long-step part of
      lower_order_final=True, which is then decided inside the program).
    eval_times: (J,) times of the model evaluations in the loop.
    num_evals: J, the model evaluations of the loop.
    nfe: number of model evaluations (J, plus one with denoise_to_zero).
    tables: the coefficient tables for `engine.run`.
    spec: the static switches for `engine.run`.
    trajectory_rows: rows of the engine's recorded states that form the trajectory
      (x_T, the state after each outer step, [the denoised result]).
    x0_rows: rows of the engine's recorded data predictions that belong to real evaluations.
  """
  method: str
  timesteps: typing.Any
  orders: tuple
  eval_times: typing.Any
  num_evals: int
  nfe: int
  tables: dict
  spec: engine.Spec
  trajectory_rows: tuple
  x0_rows: tuple



def _concrete_float(v):
  try:
    return float(v)
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def make_plan(sched, *, method="unipc", steps=10, order=None, variant="bh2", prediction=None,
              skip_type="time_uniform", lower_order_final=True, t_start=None, t_end=None, solver="multistep",
              solver_type="dpmsolver", denoise_to_zero=False, disable_corrector=(), eta=0.0,
              thresholding=False, thresholding_ratio=0.995, thresholding_max_val=1.0, history_size=None,
              max_evals=None):
  """Validates a sampler configuration and builds its `SamplingPlan` (see `sample` for the arguments)."""
  method = _ALIASES.get(method, method)
  _check_choice("method", method, METHODS)
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
  steps = int(steps)
  order = _DEFAULT_ORDER[method] if order is None else order
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
    raise ValueError(f"order must be an integer >= 1; got {order!r}.")
  order = int(order)
  _check_choice("skip_type", skip_type, timesteps_lib.SKIP_TYPES)
  _check_choice("solver", solver, SOLVERS)

  if prediction is None:
    prediction = "noise" if method in ("dpm_solver", "ddim") else "data"
  _check_choice("prediction", prediction, PREDICTIONS)
  if method == "dpm_solver++" and prediction != "data":
    raise ValueError("dpm_solver++ works on data predictions; use method='dpm_solver' for noise prediction.")
  if method == "dpm_solver" and prediction != "noise":
    raise ValueError("dpm_solver works on noise predictions; use method='dpm_solver++' for data prediction.")
  predict_x0 = prediction == "data"

  if method == "ddim" and order != 1:
    raise ValueError(f"ddim is a first-order method; got order={order} (use dpm_solver(++) or unipc).")
  if method in ("dpm_solver++", "dpm_solver") and order > dpm_solver_lib.MAX_ORDER:
    raise ValueError(f"{method} supports orders 1 to 3; got order={order} (unipc supports any order).")
  if method != "dpm_solver++" and method != "dpm_solver" and solver != "multistep":
    raise ValueError(f"solver={solver!r} is for dpm_solver / dpm_solver++ only; {method} is multistep.")
  if solver == "multistep" and steps < order:
    raise ValueError(f"multistep {method} needs steps >= order; got steps={steps}, order={order}.")
  if solver == "singlestep_fixed" and steps < order:
    raise ValueError(f"singlestep_fixed needs steps >= order; got steps={steps}, order={order}.")
  if method == "unipc":
    _check_choice("variant", variant, unipc_lib.VARIANTS)
  elif tuple(disable_corrector):
    raise ValueError("disable_corrector applies to method='unipc' only.")
  _check_choice("solver_type", solver_type, dpm_solver_lib.SOLVER_TYPES)
  eta = float(eta)
  if eta < 0:
    raise ValueError(f"eta must be >= 0; got {eta}.")
  if eta > 0 and method != "ddim":
    raise ValueError("eta > 0 (stochastic sampling) is available for method='ddim' only.")
  if thresholding and not predict_x0:
    raise ValueError("dynamic thresholding acts on data predictions; use prediction='data' "
                     "(or method='dpm_solver++').")
  disable_corrector = tuple(int(i) for i in disable_corrector)
  lower_order_final = timesteps_lib.check_lower_order_final(lower_order_final)

  t_start = sched.T if t_start is None else t_start
  t_end = 1.0 / sched.total_n if t_end is None else t_end
  start, end = _concrete_float(t_start), _concrete_float(t_end)
  if end is not None and not end > 0:
    raise ValueError(f"t_end must be > 0 (sigma vanishes at t = 0); got t_end={end}.")
  if start is not None and end is not None and not end < start:
    raise ValueError(f"sampling runs from t_start down to t_end, so t_end < t_start is needed; "
                     f"got t_start={start}, t_end={end}.")

  host = schedule_view.is_concrete(sched) and start is not None and end is not None
  view = schedule_view.ScheduleView(sched, host)
  if host:
    t_start, t_end = start, end
    with np.errstate(invalid="ignore"):
      sigma_start, sigma_end = view.sigma(view.log_alpha(np.array([start, end])))
    for name, t, sigma in (("t_start", start, sigma_start), ("t_end", end, sigma_end)):
      if not np.isfinite(sigma):
        raise ValueError(f"the schedule is undefined at {name}={t} (log alpha > 0 there; a discrete schedule "
                         f"with N steps is extrapolated below t = 1/N = {1.0 / sched.total_n}).")
    if not sigma_start > 0:
      raise ValueError(f"sigma(t_start) = 0 at t_start={start}; sampling must start from a noisy time.")
  common = dict(steps=steps, predict_x0=predict_x0, skip_type=skip_type, t_start=t_start, t_end=t_end)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    if method == "unipc":
      program = unipc_lib.program(view, order=order, variant=variant, lower_order_final=lower_order_final,
                                  disable_corrector=disable_corrector, **common)
    elif method == "ddim" and eta > 0:
      program = ddim_lib.stochastic_program(view, eta=eta, **common)
    elif solver == "multistep":
      program = dpm_solver_lib.multistep_program(view, order=order, lower_order_final=lower_order_final,
                                                 solver_type=solver_type, **common)
    else:
      program = dpm_solver_lib.singlestep_program(view, order=order, solver_type=solver_type,
                                                  fixed=solver == "singlestep_fixed", **common)
    history = program.history_needed()
    if history_size is not None:
      if history_size < history:
        raise ValueError(f"history_size={history_size} is too small; this configuration needs {history}.")
      history = int(history_size)
    tables = plan_lib.to_tables(program, view, history)
    la_end = view.log_alpha(view.asarray(t_end))
    tables.update(t_final=view.asarray(t_end), alpha_final=view.alpha(la_end), sigma_final=view.sigma(la_end))

  if host and solver == "multistep" and method != "ddim":
    _warn_long_final_step(view, program, lower_order_final, t_end)

  num_evals = program.num_evals
  nfe = num_evals + int(bool(denoise_to_zero))
  rows = num_evals
  if max_evals is not None:
    if max_evals < num_evals:
      raise ValueError(f"max_evals={max_evals} is too small; this configuration needs {num_evals} evaluations.")
    rows = int(max_evals)
    tables = _pad_rows(tables, rows, view)
    tables["active"] = (np.arange(rows) < num_evals).astype(np.float64)
  tables["predict_x0"] = np.float64(predict_x0)
  tables["progress"] = np.arange(rows, dtype=np.float64) / nfe
  tables["progress_final"] = np.float64(num_evals / nfe)
  tables["final_index"] = np.int32(num_evals)
  spec = engine.Spec(
      history=history,
      thresholding=(float(thresholding_ratio), float(thresholding_max_val)) if thresholding else None,
      stochastic=program.input_noise is not None, denoise_to_zero=bool(denoise_to_zero),
      padded=max_evals is not None)
  traj = tuple(program.outer_starts) + (rows,) + ((rows + 1,) if denoise_to_zero else ())
  x0_rows = tuple(range(num_evals)) + ((rows,) if denoise_to_zero else ())
  eval_times = view.xp.stack([view.asarray(t) for t in program.eval_times])
  return SamplingPlan(method=method, timesteps=program.timesteps, orders=tuple(program.orders),
                      eval_times=eval_times, num_evals=num_evals, nfe=nfe, tables=tables, spec=spec,
                      trajectory_rows=traj, x0_rows=x0_rows)


def _warn_long_final_step(view, program, lower_order_final, t_end):
  """Warns when the last step is over WARN_STEP_RATIO times longer in lambda than the previous one and is
  taken at order >= 2 (only possible with lower_order_final "authors" or False)."""
  if len(program.orders) < 2 or program.orders[-1] < 2:
    return
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    lam = view.lam(view.log_alpha(np.asarray(program.timesteps[-3:])))
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    if h <= WARN_STEP_RATIO * h_prev:
      return
  warnings.warn(
      f"The last step (to t_end={t_end:g}) is {h / h_prev:.1f}x longer in lambda than the step before it "
      f"(h = {h:.2f}) and lower_order_final={lower_order_final!r} takes it at order {program.orders[-1]}: "
      f"extrapolating the model outputs that far is unreliable (errors up to ~190x DDIM's were measured on "
      f"analytic data). lower_order_final=True takes such a step at first order; skip_type='logSNR' has "
      f"no long last step.", LongFinalStepWarning, stacklevel=3)


_PER_ROW = ("a_in", "b_in", "n_in", "t", "alpha", "sigma", "slot", "g_x", "g_in", "d")


def _pad_rows(tables, rows, view):
  """Pads the per-evaluation tables to `rows` rows (the padding is never evaluated)."""
  out = dict(tables)
  for k in _PER_ROW:
    v = tables[k]
    pad = rows - v.shape[0]
    if k == "slot":
      out[k] = np.concatenate([v, np.zeros(pad, np.int32)])
    else:
      filler = view.xp.ones_like(v[:1]) if k in ("alpha", "t") else view.xp.zeros_like(v[:1])
      out[k] = view.xp.concatenate([v] + [filler] * pad)
  return out


class _ByIdentity:
  """Makes an unhashable callable usable as a static jit argument (compared by identity)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __hash__(self):
    return id(self.fn)

  def __eq__(self, other):
    return isinstance(other, _ByIdentity) and other.fn is self.fn


def _to_jax(v):
  if not isinstance(v, np.ndarray):
    return v
  # An explicit, canonicalized dtype: jnp.asarray alone may hand back a float64 copy made under x64.
  return jnp.array(v, dtype=jax.dtypes.canonicalize_dtype(v.dtype))


def _split_noise_fn(noise_fn):
  """(dynamic pytree or None, static callable or None)."""
  if not callable(noise_fn):
    raise ValueError(f"noise_fn must be a callable (x, t) -> eps; got {type(noise_fn).__name__}.")
  if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(noise_fn)):
    # NumPy leaves become jax arrays here, in the precision in force (float64 only under x64).
    return jax.tree_util.tree_map(_to_jax, noise_fn), None
  try:
    hash(noise_fn)
  except TypeError:
    return None, _ByIdentity(noise_fn)
  return None, noise_fn


def sample(noise_fn, sched, x_T, *, method="unipc", steps=10, order=None, variant="bh2", prediction=None,
           skip_type="time_uniform", lower_order_final=True, t_start=None, t_end=None, solver="multistep",
           solver_type="dpmsolver", denoise_to_zero=False, disable_corrector=(), eta=0.0, rng=None,
           thresholding=False, thresholding_ratio=0.995, thresholding_max_val=1.0, return_trajectory=False,
           history_size=None, max_evals=None):
  """Solves the diffusion ODE (or, with DDIM eta > 0, the SDE) from x_T at t_start down to t_end.

  The whole loop is one compiled XLA program (a `lax.scan`), cached per (noise_fn, shapes, switches);
  `sample` may also be called inside `jax.jit` and on sharded x_T (the batch dimension is never mixed).

  Args:
    noise_fn: (x, t) -> eps, the noise prediction, with x like x_T and t a (B,) array of continuous times in
      (0, T]. A plain function is compiled into the program (its closed-over arrays become constants); a
      pytree callable (`jax.tree_util.Partial`, or the result of `make_noise_fn`) is passed as an argument.
      If it has `uses_progress = True` it is called as noise_fn(x, t, progress=p), p = evaluations done / NFE.
    sched: a `jdpm.diffusion.VPSchedule`.
    x_T: (B, ...) samples at t_start, usually standard normal.
    method: "unipc", "dpm_solver++" (data prediction), "dpm_solver" (noise prediction) or "ddim".
    steps: number of steps (= model evaluations, except singlestep_fixed: order * (steps // order)).
    order: solver order (default: 3 for unipc, 2 for dpm_solver(++), 1 for ddim). UniPC accepts any order
      (order p uses UniP-p and UniC-p); DPM-Solver 1 to 3.
    variant: UniPC's B(h): "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1).
    prediction: "data" or "noise"; UniPC only (default "data"); fixed for the other methods.
    skip_type: "time_uniform", "logSNR" or "time_quadratic" spacing of the time grid.
    lower_order_final: the final-step rule of the multistep methods (details and measurements in
      `jdpm.samplers.timesteps`). True (default): the authors' rule, and any step more than twice as long in
      lambda as the previous one is taken at first order: the last step of time grids, which grows as t_end
      shrinks (3.5-5x the previous one at t_end = 1e-3, ~20x at 1e-12) and which a full-order multistep step
      would extrapolate over (errors up to 190x DDIM's). "authors": the authors' rule exactly (UniPC lowers
      the final steps to min(order, steps remaining) always, DPM-Solver multistep only when steps < 10).
      False: never lower. With "authors" or False, a last step over 3x longer than the previous one kept at
      order >= 2 emits a `LongFinalStepWarning`. Multistep methods only (singlestep DPM-Solver keeps the
      authors' order allocation).
    t_start, t_end: time range (defaults: sched.T and 1 / sched.total_n); 0 < t_end < t_start.
    solver: for dpm_solver(++): "multistep", "singlestep" (DPM-Solver-fast order mix, NFE = steps) or
      "singlestep_fixed" (steps // order steps of the given order).
    solver_type: DPM-Solver's "dpmsolver" or "taylor" high-order formulas.
    denoise_to_zero: finish with the data prediction at t_end (one more evaluation).
    disable_corrector: UniPC: 0-based indices of steps whose result is not corrected.
    eta: DDIM stochasticity (0 = deterministic); eta > 0 needs rng.
    rng: PRNG key for eta > 0.
    thresholding: dynamic thresholding of data predictions (thresholding_ratio quantile, at least
      thresholding_max_val); needs prediction="data".
    return_trajectory: also return a dict with "trajectory" (S + 1 [+ 1], B, ...) (x_T and the state after
      each outer step [and the denoised result]), "x0_pred" (NFE, B, ...) (the data prediction of every
      model evaluation), "timesteps" (S + 1,) and "nfe".
    history_size: pad the ring buffer of model outputs to this size, and
    max_evals: compile the loop for this many model evaluations, skipping the unused ones at run time:
      with both set, every configuration that fits (any method, order, grid or step count) shares one
      compiled program, e.g. for sweeps over NFE.
  Returns:
    x_0 like x_T, or (x_0, info) with return_trajectory.
  """
  plan = make_plan(sched, method=method, steps=steps, order=order, variant=variant, prediction=prediction,
                   skip_type=skip_type, lower_order_final=lower_order_final, t_start=t_start, t_end=t_end,
                   solver=solver, solver_type=solver_type, denoise_to_zero=denoise_to_zero,
                   disable_corrector=disable_corrector, eta=eta, thresholding=thresholding,
                   thresholding_ratio=thresholding_ratio, thresholding_max_val=thresholding_max_val,
                   history_size=history_size, max_evals=max_evals)
  if plan.spec.stochastic and rng is None:
    raise ValueError("eta > 0 draws fresh noise at every step; pass rng=jax.random.key(...).")
  x_T = _to_jax(x_T) if isinstance(x_T, np.ndarray) else jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T must have a leading batch dimension; got shape {x_T.shape}.")
  dtype = jnp.result_type(x_T.dtype, jnp.float32)
  tables = {k: _cast(v, dtype) for k, v in plan.tables.items()}
  spec = plan.spec._replace(record=bool(return_trajectory),
                            progress=bool(getattr(noise_fn, "uses_progress", False)))
  dynamic, static = _split_noise_fn(noise_fn)
  x, record = engine.run_jit(dynamic, tables, x_T, rng if spec.stochastic else None,
                             static_noise_fn=static, spec=spec)
  if not return_trajectory:
    return x
  trajectory = record["states"][np.asarray(plan.trajectory_rows)].astype(x_T.dtype)
  x0_pred = record["x0"][np.asarray(plan.x0_rows)]
  return x, {"trajectory": trajectory, "x0_pred": x0_pred, "timesteps": plan.timesteps, "nfe": plan.nfe}


def _cast(v, dtype):
  # Host tables stay NumPy (the compiled call transfers them at once); traced ones are cast in jnp.
  if isinstance(v, (np.ndarray, np.generic)):
    return v if v.dtype.kind == "i" else np.asarray(v, dtype=dtype)
  return v if jnp.issubdtype(v.dtype, jnp.integer) else v.astype(dtype)
