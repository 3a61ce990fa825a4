"""The sampling loop: one `lax.scan` over the per-evaluation coefficient tables of a `plan.Program`.

Per model evaluation j the scan body forms the model input from the current state and a ring buffer of the
last H model outputs, calls the model once, stores its output in slot j mod H and updates the state. All
method-specific arithmetic lives in the tables, so the compiled program depends only on the shapes (x, J, H)
and on a few switches (`Spec`): programs are shared across methods, orders, grids and time ranges.
"""

import functools
import typing

import jax
import jax.numpy as jnp

from jdpm.samplers import thresholding as thresholding_lib


class Spec(typing.NamedTuple):
  """The static part of a sampling run (everything else is in the tables).

  Attributes:
    history: ring-buffer size H.
    thresholding: None, or (ratio, max_val) of dynamic thresholding applied to data predictions.
    stochastic: whether the tables add Gaussian noise (needs an rng).
    denoise_to_zero: one more evaluation at the last time, returning its data prediction.
    record: also return the states after each evaluation and each evaluation's predicted x0.
    progress: pass `progress=` (fraction of evaluations done) to the noise function.
    padded: the tables carry an "active" flag per row; inactive rows (padding up to a common loop length,
      so that several step counts share one compiled program) are skipped with `lax.cond`.
  """
  history: int
  thresholding: typing.Optional[tuple] = None
  stochastic: bool = False
  denoise_to_zero: bool = False
  record: bool = False
  progress: bool = False
  padded: bool = False


def _combine(coeff_x, x, coeffs_hist, hist):
  # An explicit sum (rather than tensordot) keeps full precision on every backend.
  out = coeff_x * x
  for slot in range(hist.shape[0]):
    out = out + coeffs_hist[slot] * hist[slot]
  return out


def run(noise_fn, tables, x_T, rng, spec):
  """Runs the sampling loop (traceable; `run_jit` is the cached compiled version).

  Args:
    noise_fn: (x, t) -> eps with x like x_T and t a (B,) array of times.
    tables: the dict of `plan.to_tables` with per-row entries of length J (J >= the number of real
      evaluations when spec.padded), "predict_x0" (scalar, 1 for data prediction), and when needed
      "active" (J,), "progress" (J,), "progress_final", "t_final", "alpha_final", "sigma_final",
      "final_index" (int, the number of real evaluations: the noise of the last step is drawn with it).
    x_T: (B, ...) starting samples.
    rng: a PRNG key when spec.stochastic, else None.
    spec: a `Spec`.
  Returns:
    (x, record) with x like x_T, and record None or a dict with "states" (J + 1 [+ 1], B, ...) (the state
    after each row, then the result [, then the denoised result]) and "x0" (J [+ 1], B, ...).
  """
  dtype = tables["a_in"].dtype
  x = x_T.astype(dtype)
  # Built from x so that the buffer inherits x's sharding.
  hist = jnp.broadcast_to(jnp.zeros_like(x), (spec.history,) + x.shape)
  num_rows = tables["a_in"].shape[0]
  predict_x0 = tables["predict_x0"] > 0.5

  def evaluate(x_in, t, alpha, sigma, progress):
    t_batch = jnp.full(x_in.shape[:1], t, dtype=dtype)
    kwargs = {"progress": progress} if spec.progress else {}
    eps = noise_fn(x_in, t_batch, **kwargs).astype(dtype)
    x0 = (x_in - sigma * eps) / alpha
    if spec.thresholding is not None:
      x0 = thresholding_lib.dynamic_thresholding(x0, *spec.thresholding)
    return jnp.where(predict_x0, x0, eps), x0

  def noise(j):
    return jax.random.normal(jax.random.fold_in(rng, j), x.shape, dtype)

  def step(carry, row):
    x, hist = carry
    x_in = _combine(row["a_in"], x, row["b_in"], hist)
    if spec.stochastic:
      x_in = x_in + row["n_in"] * noise(row["index"])
    model_out, x0 = evaluate(x_in, row["t"], row["alpha"], row["sigma"], row.get("progress"))
    hist = jax.lax.dynamic_update_index_in_dim(hist, model_out, row["slot"], 0)
    x = row["g_x"] * x + row["g_in"] * x_in
    x = _combine(1.0, x, row["d"], hist)
    return (x, hist), ((x, x0) if spec.record else None)

  def skip(carry, row):
    del row
    return carry, ((carry[0], jnp.zeros_like(carry[0])) if spec.record else None)

  def body(carry, row):
    if spec.padded:
      return jax.lax.cond(row["active"] > 0.5, step, skip, carry, row)
    return step(carry, row)

  per_row = ("a_in", "b_in", "n_in", "t", "alpha", "sigma", "slot", "g_x", "g_in", "d", "active", "progress")
  rows = {k: tables[k] for k in per_row if k in tables}
  rows["index"] = jnp.arange(num_rows)
  (x, hist), recorded = jax.lax.scan(body, (x, hist), rows)

  x = _combine(tables["a_final"], x, tables["b_final"], hist)
  if spec.stochastic:
    x = x + tables["n_final"] * noise(tables["final_index"])
  result = [x]
  if spec.denoise_to_zero:
    progress = tables["progress_final"] if spec.progress else None
    _, denoised = evaluate(x, tables["t_final"], tables["alpha_final"], tables["sigma_final"], progress)
    result.append(denoised)
    x = denoised
  if not spec.record:
    return x.astype(x_T.dtype), None
  states, x0s = recorded
  states = jnp.concatenate([states, jnp.stack(result)], axis=0)
  if spec.denoise_to_zero:
    x0s = jnp.concatenate([x0s, result[-1][None]], axis=0)
  return x.astype(x_T.dtype), {"states": states, "x0": x0s}


@functools.partial(jax.jit, static_argnames=("static_noise_fn", "spec"))
def run_jit(dynamic_noise_fn, tables, x_T, rng, *, static_noise_fn, spec):
  """`run` compiled once per (noise function, shapes, spec).

  The noise function is either a pytree (`dynamic_noise_fn`, e.g. a `jax.tree_util.Partial` or the wrapper of
  `make_noise_fn`, whose arrays then are arguments, not constants) or any hashable callable (`static_noise_fn`).
  """
  noise_fn = static_noise_fn if static_noise_fn is not None else dynamic_noise_fn
  return run(noise_fn, tables, x_T, rng, spec)
