"""Learning-rate schedules: `step -> lr` functions usable inside `jax.jit`.

Every schedule takes the number of updates already applied (0 for the first
update, the optax convention) as an int scalar or array and returns the
learning rate as a float array of the same shape. They can be passed as
`learning_rate` to any optax optimizer and to `jdpm.training.optimizers.adan`.

  constant      lr at every step.
  warmup        linear ramp 0 -> lr over `warmup_steps`, then lr.
  linear_decay  EDT's recipe: lr -> end_lr linearly, reached at `decay_steps`,
                then end_lr (optionally after a warmup, optionally staircased).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

Schedule = Callable[[Any], jnp.ndarray]

SCHEDULES = ("constant", "warmup", "linear_decay")


def _check_lr(name, value):
  if not value >= 0:
    raise ValueError(f"{name} must be a number >= 0, got {value!r}.")


def _check_steps(name, value):
  if int(value) != value or value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")


def _as_float(step):
  # Default float dtype: float32, or float64 under `jax.enable_x64`.
  return jnp.asarray(step).astype(jnp.result_type(float))


def constant(lr: float) -> Schedule:
  """The learning rate `lr` at every step."""
  _check_lr("lr", lr)

  def schedule(step):
    return jnp.full(jnp.shape(step), lr, dtype=jnp.result_type(float))

  return schedule


def _warmup_factor(step, warmup_steps):
  """min(step / warmup_steps, 1): 0 at the first update, 1 from `warmup_steps` on."""
  if warmup_steps == 0:
    return jnp.ones_like(_as_float(step))
  return jnp.clip(_as_float(step) / warmup_steps, 0.0, 1.0)


def warmup(lr: float, warmup_steps: int) -> Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps` updates, then constant `lr`.

  Value at step s: lr * min(s / warmup_steps, 1). `warmup_steps=0` gives `constant(lr)`.
  """
  _check_lr("lr", lr)
  _check_steps("warmup_steps", warmup_steps)

  def schedule(step):
    return lr * _warmup_factor(step, warmup_steps)

  return schedule


def linear_decay(lr: float, end_lr: float = 5e-5, decay_steps: int = 400_000,
                 warmup_steps: int = 0, update_every: int = 1) -> Schedule:
  """EDT's schedule: linear decay from `lr` to `end_lr`, then constant `end_lr`.

  Value at step s (a count of updates already applied):
    s < warmup_steps:  lr * s / warmup_steps          (linear warmup from 0)
    otherwise:         lr - (lr - end_lr) * clip((s' - warmup_steps) / (decay_steps - warmup_steps), 0, 1)
  with s' = s rounded down to a multiple of `update_every`. The decay thus starts
  at `warmup_steps` and reaches `end_lr` exactly at step `decay_steps` (absolute,
  warmup included). EDT's training script changes the rate only every 5000
  steps: `update_every=5000` reproduces that staircase; the default 1 is smooth.
  """
  _check_lr("lr", lr)
  _check_lr("end_lr", end_lr)
  _check_steps("warmup_steps", warmup_steps)
  _check_steps("decay_steps", decay_steps)
  if decay_steps <= warmup_steps:
    raise ValueError(
        f"decay_steps ({decay_steps}) must be larger than warmup_steps ({warmup_steps}): "
        "the decay runs from the end of the warmup to step decay_steps.")
  if int(update_every) != update_every or update_every < 1:
    raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}.")

  def schedule(step):
    step = jnp.asarray(step)
    held = (step // update_every) * update_every
    progress = jnp.clip((_as_float(held) - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    decayed = lr - (lr - end_lr) * progress
    return jnp.where(step < warmup_steps, lr * _warmup_factor(step, warmup_steps), decayed)

  return schedule


def config_get(config: Any, name: str, default: Any = None) -> Any:
  """`config.name`, or `default` when the field is missing or None.

  Works for `ml_collections.ConfigDict`, plain attribute objects and mappings.
  """
  if isinstance(config, Mapping):
    value = config.get(name, None)
  else:
    value = getattr(config, name, None)
  return default if value is None else value


def make_schedule(config: Any) -> Schedule:
  """The learning-rate schedule described by `config`.

  Fields read: `lr` (required), `schedule` ("constant" | "warmup" | "linear_decay",
  default "constant"), `warmup_steps` (default 0), `end_lr` (default 5e-5),
  `decay_steps` (default 400_000), `lr_update_every` (default 1).
  """
  lr = config_get(config, "lr")
  if lr is None:
    raise ValueError("The config has no `lr`: set config.lr to the (peak) learning rate.")
  name = config_get(config, "schedule", "constant")
  warmup_steps = config_get(config, "warmup_steps", 0)
  if name == "constant":
    return constant(lr)
  if name == "warmup":
    return warmup(lr, warmup_steps)
  if name == "linear_decay":
    return linear_decay(lr, end_lr=config_get(config, "end_lr", 5e-5),
                        decay_steps=config_get(config, "decay_steps", 400_000),
                        warmup_steps=warmup_steps,
                        update_every=config_get(config, "lr_update_every", 1))
  raise ValueError(f"Unknown learning-rate schedule {name!r}: config.schedule must be one of {SCHEDULES}.")
