"""A sampler as data: every method is a list of model evaluations with linear update rules.

All samplers here (UniPC, DPM-Solver(++) multistep and singlestep, DDIM) advance the state by linear
combinations of the current state and of earlier model outputs, with coefficients that depend only on the
time grid. A `Program` states, for each model evaluation j = 0..J-1:

  x_in_j  = inputs[j]  (x_cur, m_0..m_{j-1})  [+ input_noise[j] * z_j]    where the model is evaluated
  m_j     = model(x_in_j, eval_times[j])       (noise or data prediction)
  x_cur   = updates[j] (x_cur, x_in_j, m_0..m_j)                           the state carried forward

and the result is final(x_cur, m_0..m_{J-1}) [+ final_noise * z_J]. A `Lin` holds one such combination as
{"x": coefficient of x_cur, "in": coefficient of x_in_j, k: coefficient of m_k}.

`to_tables` turns a Program into per-evaluation coefficient arrays over a ring buffer of the last H model
outputs (slot k mod H), which `engine.run` consumes in one `lax.scan`. Programs with the same number of
evaluations and history size share one compiled scan, whatever their coefficients.
"""

import dataclasses

import numpy as np


class Lin(dict):
  """A linear combination: key -> coefficient (keys "x", "in", or an int model-evaluation index)."""

  def __add__(self, other):
    out = Lin(self)
    for key, c in other.items():
      out[key] = out[key] + c if key in out else c
    return out

  def __sub__(self, other):
    return self + (-1.0) * other

  def __rmul__(self, c):
    return Lin({key: c * v for key, v in self.items()})

  def __neg__(self):
    return (-1.0) * self


def x_cur(c=1.0):
  return Lin({"x": c})


def x_in(c=1.0):
  return Lin({"in": c})


def m(k, c=1.0):
  return Lin({k: c})


def select(xp, cond, if_true, if_false):
  """Coefficient-wise `cond ? if_true : if_false` (keys missing on one side count as 0)."""
  if xp is np and np.ndim(cond) == 0:
    return if_true if bool(cond) else if_false
  keys = list(dict.fromkeys(list(if_true) + list(if_false)))
  return Lin({k: xp.where(cond, if_true.get(k, 0.0), if_false.get(k, 0.0)) for k in keys})


@dataclasses.dataclass
class Program:
  """A sampler unrolled into model evaluations (see the module docstring).

  Attributes:
    timesteps: (S + 1,) the outer time grid, t_start first.
    orders: S ints, the order used by each outer step.
    eval_times: J scalars, the time of each model evaluation.
    inputs, updates: J `Lin`s each.
    final: the `Lin` giving the result after the last evaluation.
    input_noise: J scalars (std of fresh Gaussian noise added to x_in), or None for deterministic samplers.
    final_noise: scalar std of the noise added to the result, or None.
    outer_starts: for each outer step, the evaluation j whose updated x_cur is that step's starting state.
  """
  timesteps: object
  orders: list
  eval_times: list
  inputs: list
  updates: list
  final: Lin
  input_noise: list = None
  final_noise: object = None
  outer_starts: list = None

  @property
  def num_evals(self):
    return len(self.eval_times)

  def history_needed(self):
    """Smallest ring buffer that keeps every model output until its last use."""
    need = 1
    for j, (lin_in, lin_up) in enumerate(zip(self.inputs, self.updates)):
      for key in lin_in:
        if isinstance(key, int):
          assert key < j, (j, key)
          need = max(need, j - key)
      for key in lin_up:
        if isinstance(key, int):
          assert key <= j, (j, key)
          need = max(need, j - key + 1)
      assert "in" not in lin_in
    for key in self.final:
      if isinstance(key, int):
        need = max(need, self.num_evals - key)
    return need


def _row(xp, lin, history, dtype_zero):
  coeffs = [dtype_zero] * history
  for key, c in lin.items():
    if isinstance(key, int):
      coeffs[key % history] = coeffs[key % history] + c
  return xp.stack([xp.asarray(c) for c in coeffs])


def to_tables(program, view, history):
  """Coefficient tables for `engine.run` (float64 NumPy on the host, jnp when traced).

  Returns a dict of arrays, leading dimension J where per evaluation:
    t, log_alpha-derived alpha and sigma at t; a_in (J,), b_in (J, H), n_in (J,);
    g_x, g_in (J,), d (J, H); slot (J,) int32; and the final rule a_final (), b_final (H,), n_final ().
  """
  xp = view.xp
  zero = view.asarray(0.0)
  times = xp.stack([view.asarray(t) for t in program.eval_times])
  la = view.log_alpha(times)
  rows = dict(a_in=[], b_in=[], g_x=[], g_in=[], d=[])
  for lin_in, lin_up in zip(program.inputs, program.updates):
    rows["a_in"].append(view.asarray(lin_in.get("x", zero)))
    rows["b_in"].append(_row(xp, lin_in, history, zero))
    rows["g_x"].append(view.asarray(lin_up.get("x", zero)))
    rows["g_in"].append(view.asarray(lin_up.get("in", zero)))
    rows["d"].append(_row(xp, lin_up, history, zero))
  tables = {k: xp.stack(v) for k, v in rows.items()}
  num = program.num_evals
  noise = program.input_noise if program.input_noise is not None else [zero] * num
  tables.update(
      t=times,
      alpha=view.alpha(la),
      sigma=view.sigma(la),
      n_in=xp.stack([view.asarray(v) for v in noise]),
      slot=np.arange(num, dtype=np.int32) % history,
      a_final=view.asarray(program.final.get("x", zero)),
      b_final=_row(xp, program.final, history, zero),
      n_final=view.asarray(program.final_noise if program.final_noise is not None else zero),
  )
  return tables
