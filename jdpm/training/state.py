"""The train state: one pytree holding everything a training run needs to continue exactly."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training.

  Attributes:
    step: () int32, number of updates applied so far.
    params: model parameters (float32).
    ema_params: exponential moving average of `params`; sampling and evaluation use these by default.
    opt_state: optimizer state.
    rng: the run's base PRNG key; step k uses ``fold_in(rng, k)`` so a resumed run draws the same numbers.
    extra: small auxiliary state of the loss (e.g. the timestep importance sampler's loss history), or ().
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  extra: Any = ()


def create_train_state(params, optimizer: optax.GradientTransformation, rng, extra=()) -> TrainState:
  """A fresh state whose EMA starts as a copy of the parameters (the DiT/EDT warm start)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params),
                    rng=rng, extra=extra)
