"""The jitted update step: loss -> gradients (optionally accumulated over micro-batches) -> optimizer -> EMA.

A training objective supplies three pure functions (see `Objective`); the step knows nothing about diffusion.
All randomness of a step is drawn once for the whole global batch, before any micro-batch split, from
``fold_in(state.rng, state.step)``. That is what makes gradient accumulation equal to the full-batch step
and a resumed run identical to an uninterrupted one.

Frozen parameters (`jdpm.training.freeze`) are the update's third argument: the objective sees them merged
with the trainable ones, but they are never differentiated, never in the optimizer, never changed.
"""

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax

from jdpm.parallel import microbatch
from jdpm.training import freeze
from jdpm.training.state import TrainState


class Objective(Protocol):
  """What the update step needs from a training objective."""

  def draw(self, rng: jax.Array, batch: dict, extra: Any) -> dict:
    """Adds every random quantity of the step (timesteps, noise, label drops, masks) to the batch.

    Each added array must have the global batch as its leading axis.
    """

  def per_example_loss(self, params: Any, batch: dict) -> tuple[jax.Array, dict]:
    """(B,) float32 losses and a dict of (B,) auxiliary per-example values."""

  def update_extra(self, extra: Any, batch: dict, losses: jax.Array, aux: dict) -> Any:
    """The new auxiliary state after the step (e.g. the timestep sampler's loss history)."""


def cast_floats(tree, dtype):
  """Casts every floating leaf of a pytree to `dtype` (None: unchanged)."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_update_fn(objective: Objective, optimizer: optax.GradientTransformation, *,
                   ema_decay: float = 0.9999, ema_warmup: bool = False, grad_accum_steps: int = 1,
                   compute_dtype=None,
                   lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
                   norms_every: int = 1, last_step: int | None = None):
  """Builds ``update(state, batch, frozen=None) -> (state, metrics)``, for `jax.jit` (see `jit_update_fn`).

  Args:
    objective: the training objective.
    optimizer: an optax transformation (gradient clipping, if any, belongs in it).
    ema_decay: EMA decay per step; the EMA starts as a copy of the parameters.
    ema_warmup: use min(ema_decay, (1 + step) / (10 + step)) instead, so that a short run's EMA follows the
      parameters (with adaLN-Zero, an EMA still weighted towards the zero init predicts far too little
      noise); long runs at the papers' scale use a plain decay.
    grad_accum_steps: split the global batch into this many micro-batches, run them one after the other and
      average the gradients: same result as the full batch, a fraction of the activation memory.
    compute_dtype: e.g. jnp.bfloat16 for mixed precision: params and inputs are cast for the forward and
      backward pass; parameters, gradients, optimizer state and the loss stay float32.
    lr_schedule: reported as the "lr" metric when given.
    norms_every, last_step: the grad_norm and param_norm metrics are computed only by the updates that
      reach a step number divisible by `norms_every`, or `last_step`; the others report NaN. The trainer
      logs those steps' metrics only, and the two reductions over every parameter are 20-25 ms of an
      EDT-S/2 training step on a 2-core CPU (1.04-1.06x without them; BENCHMARKS.md, "norms on logged
      steps").
  Returns:
    the update function. Metrics: loss, grad_norm (before clipping), param_norm, lr.
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}.")
  if norms_every < 1:
    raise ValueError(f"norms_every must be >= 1, got {norms_every}.")

  def mean_loss(params, frozen, batch):
    # Only `params` is differentiated; the frozen half enters the model as a constant of the gradient.
    full = freeze.merge(params, frozen)
    losses, aux = objective.per_example_loss(cast_floats(full, compute_dtype), cast_floats(batch, compute_dtype))
    losses = losses.astype(jnp.float32)
    return jnp.mean(losses), (losses, aux)

  grad_fn = jax.grad(mean_loss, has_aux=True)

  def accumulated_grads(params, frozen, batch):
    """Gradients of the batch mean, computed micro-batch by micro-batch."""
    b = jax.tree.leaves(batch)[0].shape[0]
    k = grad_accum_steps
    if b % k:
      raise ValueError(f"global batch {b} is not divisible by grad_accum_steps={k}.")
    # Micro-batch j takes examples j, j+k, j+2k, ...: no communication between devices.
    micro = jax.tree.map(lambda a: microbatch.split_micro_batches(a, k), batch)

    def body(acc, mb):
      g, (losses, aux) = grad_fn(params, frozen, mb)
      return jax.tree.map(jnp.add, acc, g), (losses, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, aux) = jax.lax.scan(body, zeros, micro)
    unsplit = microbatch.join_micro_batches
    return jax.tree.map(lambda g: g / k, grads), (unsplit(losses), jax.tree.map(unsplit, aux))

  def update(state: TrainState, batch: dict, frozen=None):
    rng = jax.random.fold_in(state.rng, state.step)
    batch = objective.draw(rng, batch, state.extra)
    if grad_accum_steps == 1:
      grads, (losses, aux) = grad_fn(state.params, frozen, batch)
    else:
      grads, (losses, aux) = accumulated_grads(state.params, frozen, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay
    if ema_warmup:
      step = state.step.astype(jnp.float32)
      decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    extra = objective.update_extra(state.extra, batch, losses, aux)
    grad_norm, param_norm = _norms(grads, params, state.step + 1, norms_every, last_step)
    metrics = {
        "loss": jnp.mean(losses),
        "grad_norm": grad_norm,
        "param_norm": param_norm,
        "lr": lr_schedule(state.step) if lr_schedule is not None else jnp.float32(jnp.nan),
    }
    metrics.update({k: jnp.mean(v) for k, v in aux.items()})
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                              opt_state=opt_state, extra=extra)
    return new_state, metrics

  return update


def _norms(grads, params, new_step, every, last_step):
  """(‖grads‖₂, ‖params‖₂) where `new_step` is due (see `make_update_fn`), else NaNs."""
  def norms():
    return optax.tree.norm(grads), optax.tree.norm(params)

  if every == 1:
    return norms()
  due = new_step % every == 0
  if last_step is not None:
    due = due | (new_step == last_step)
  nans = lambda: jax.tree.map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype), jax.eval_shape(norms))
  return jax.lax.cond(due, norms, nans)


def jit_update_fn(update, state_shardings, batch_sharding, replicated, frozen_shardings=None):
  """`jax.jit` of an update function with explicit shardings and the state donated (updated in place).

  With `frozen_shardings` the result is called as ``update(state, batch, frozen)`` (the frozen parameters
  are an argument, not constants baked into the program); without, as ``update(state, batch)``.
  """
  if frozen_shardings is None:
    return jax.jit(lambda state, batch: update(state, batch), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return jax.jit(update, in_shardings=(state_shardings, batch_sharding, frozen_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))
