"""Optimizers: Adan as an optax transformation, and `make_optimizer(config)`.

Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
Optimizing Deep Models", 2022) is the optimizer of the MDT and EDT training
recipes. This implementation follows the authors' PyTorch optimizer step by
step (same clipping, same step-1 convention, same proximal weight decay), so a
run reproduces theirs to rounding.

Adan's default weight decay is proximal: the new parameters are divided by
(1 + lr * wd). That is a multiplicative change of the parameters, which a chain
of additive gradient transformations cannot express, so `adan(...).update`
needs `params` and returns the *parameter delta* `new_params - params`;
`optax.apply_updates(params, updates)` then gives the new parameters. Put Adan
last in an `optax.chain`: a transformation after it would rescale a delta that
already contains the learning rate and the weight decay.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdpm.training import schedules

OPTIMIZERS = ("adamw", "adan")


class AdanState(NamedTuple):
  """Adan's state; every field but `count` has the structure and dtypes of the params.

  The reference implementation stores the negated previous gradient
  (`neg_pre_grad`); this state stores the previous gradient itself.
  """
  count: jax.Array  # int32 scalar: number of updates applied so far.
  exp_avg: optax.Updates  # m: moving average of gradients (beta1).
  exp_avg_sq: optax.Updates  # n: moving average of (g + beta2 * diff)^2 (beta3).
  exp_avg_diff: optax.Updates  # v: moving average of gradient differences (beta2).
  prev_grad: optax.Updates  # previous (clipped) gradient.


def global_norm_clip_factor(grads: optax.Updates, max_norm: float, eps: float = 1e-8) -> jax.Array:
  """Adan's clip factor min(max_norm / (||grads||_2 + eps), 1), a float32 scalar.

  As in the reference optimizer the squared norm is accumulated leaf by leaf in
  float32 (each leaf's own sum is taken in at least float32), so float64 runs use
  exactly the reference's factor. Unlike `optax.clip_by_global_norm`, eps sits in
  the denominator, so the factor is slightly below 1 even at norm == max_norm.
  """
  total = jnp.zeros((), jnp.float32)
  for leaf in jax.tree.leaves(grads):
    leaf = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    total = total + jnp.sum(jnp.square(leaf)).astype(jnp.float32)
  return jnp.minimum(max_norm / (jnp.sqrt(total) + eps), 1.0)


def _one_minus_power(beta: float, k: jax.Array) -> jax.Array:
  """1 - beta**k, computed as -expm1(k log beta).

  The direct form amplifies the rounding of beta by beta / (1 - beta) at small k
  (beta3 = 0.99: about 2e-6 relative error in float32, ten times this form's).
  """
  return -jnp.expm1(k * math.log(beta))


def adan(learning_rate: float | optax.Schedule, b1: float = 0.98, b2: float = 0.92,
         b3: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0, no_prox: bool = False,
         max_grad_norm: float = 0.0) -> optax.GradientTransformation:
  """Adan optimizer; `update(grads, state, params)` returns `new_params - params`.

  Per parameter, at update k = 1, 2, ... (g the gradient, after clipping):
    diff = g - g_prev                      (g_prev := g at k = 1, so diff = 0 there)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) diff
    n = b3 n + (1 - b3) (g + b2 diff)^2
    denom = sqrt(n) / sqrt(1 - b3^k) + eps
    step = lr / (1 - b1^k) * m / denom + lr b2 / (1 - b2^k) * v / denom
    no_prox=False:  p <- (p - step) / (1 + lr wd)     (proximal decay, the default)
    no_prox=True:   p <- p (1 - lr wd) - step          (decoupled decay, as AdamW)

  Args:
    learning_rate: a float, or an optax schedule called with the number of
      updates already applied (0 at the first update).
    b1, b2, b3: decay rates of the averages of the gradient, of the gradient
      difference and of the squared corrected gradient.
    eps: added to the denominator (and to the norm when clipping).
    weight_decay: weight-decay coefficient, applied to every leaf.
    no_prox: use the decoupled form instead of the proximal one.
    max_grad_norm: if > 0, scale all gradients by
      `global_norm_clip_factor(grads, max_grad_norm, eps)` first (MDT uses 1.0).

  Returns:
    An optax GradientTransformation with state `AdanState`. Its `update`
    requires `params` (the current parameters) and returns a parameter delta.
  """
  for name, beta in (("b1", b1), ("b2", b2), ("b3", b3)):
    if not 0.0 <= beta < 1.0:
      raise ValueError(f"adan: {name} must be in [0, 1), got {beta!r}.")
  if not callable(learning_rate) and not learning_rate >= 0.0:
    raise ValueError(f"adan: learning_rate must be >= 0 or a schedule, got {learning_rate!r}.")
  if not eps >= 0.0:
    raise ValueError(f"adan: eps must be >= 0, got {eps!r}.")
  if not weight_decay >= 0.0:
    raise ValueError(f"adan: weight_decay must be >= 0, got {weight_decay!r}.")
  if not max_grad_norm >= 0.0:
    raise ValueError(f"adan: max_grad_norm must be >= 0 (0 disables clipping), got {max_grad_norm!r}.")

  def init_fn(params):
    # Four separate zero trees: a donated state must not alias one buffer twice.
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return AdanState(count=jnp.zeros([], jnp.int32), exp_avg=zeros(), exp_avg_sq=zeros(),
                     exp_avg_diff=zeros(), prev_grad=zeros())

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError("adan needs the current parameters: call update(grads, state, params). "
                       "It returns new_params - params, to be used with optax.apply_updates.")
    if max_grad_norm > 0:
      factor = global_norm_clip_factor(grads, max_grad_norm, eps)
      grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)

    # Scalars in the default float dtype (float64 under x64), cast per leaf below.
    real = jnp.result_type(float)
    k = (state.count + 1).astype(real)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, real)
    step_size = lr / _one_minus_power(b1, k)
    step_size_diff = lr * b2 / _one_minus_power(b2, k)
    sqrt_bias3 = jnp.sqrt(_one_minus_power(b3, k))
    decay = (1.0 - lr * weight_decay) if no_prox else (1.0 + lr * weight_decay)
    first_step = state.count == 0

    def leaf_update(g, p, m, v, n, g_prev):
      dtype = p.dtype
      g = g.astype(dtype)  # the state keeps the params' dtypes from step to step
      diff = jnp.where(first_step, jnp.zeros_like(g), g - g_prev)
      m = m * b1 + (1 - b1) * g
      v = v * b2 + (1 - b2) * diff
      corrected = diff * b2 + g
      n = n * b3 + (1 - b3) * corrected * corrected
      denom = jnp.sqrt(n) / sqrt_bias3.astype(dtype) + eps
      adaptive = (step_size.astype(dtype) * m) / denom + (step_size_diff.astype(dtype) * v) / denom
      if no_prox:
        new_p = p * decay.astype(dtype) - adaptive
      else:
        new_p = (p - adaptive) / decay.astype(dtype)
      return new_p - p, m, v, n, g

    # grads, params and the state trees share one structure: map over it, then
    # split the per-leaf 5-tuples into five trees.
    per_leaf = jax.tree.map(leaf_update, grads, params, state.exp_avg, state.exp_avg_diff,
                            state.exp_avg_sq, state.prev_grad)
    delta, m, v, n, g = jax.tree.transpose(
        jax.tree.structure(params), jax.tree.structure((0,) * 5), per_leaf)
    new_state = AdanState(count=optax.safe_increment(state.count), exp_avg=m, exp_avg_sq=n,
                          exp_avg_diff=v, prev_grad=g)
    return delta, new_state

  return optax.GradientTransformation(init_fn, update_fn)


_ADAMW_DEFAULTS = dict(b1=0.9, b2=0.999, eps=1e-8)
_ADAN_DEFAULTS = dict(b1=0.98, b2=0.92, b3=0.99, eps=1e-8)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """The optax optimizer described by `config` (an ml_collections.ConfigDict or alike).

  Fields read (missing or None means the default):
    optimizer: "adamw" | "adan" (required).
    lr, schedule, warmup_steps, end_lr, decay_steps, lr_update_every: the
      learning-rate schedule, see `schedules.make_schedule`.
    weight_decay: default 0.0 (AdamW: decoupled; Adan: proximal unless `no_prox`).
    b1, b2, b3, eps: default to the optimizer's own (AdamW 0.9, 0.999, -, 1e-8;
      Adan 0.98, 0.92, 0.99, 1e-8). b3 is ignored by AdamW.
    no_prox: Adan only, default False.
    grad_clip: global-norm clipping threshold, 0 = off. AdamW gets
      `optax.clip_by_global_norm` chained before it; Adan uses its own
      `max_grad_norm` (eps in the denominator), as in MDT's recipe.

  Adan's `update` needs `params`; see `adan`.
  """
  get = functools.partial(schedules.config_get, config)
  name = get("optimizer")
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}: config.optimizer must be one of {OPTIMIZERS}.")
  learning_rate = schedules.make_schedule(config)
  weight_decay = get("weight_decay", 0.0)
  grad_clip = get("grad_clip", 0.0)
  if not grad_clip >= 0:
    raise ValueError(f"config.grad_clip must be >= 0 (0 disables clipping), got {grad_clip!r}.")

  if name == "adamw":
    d = _ADAMW_DEFAULTS
    tx = optax.adamw(learning_rate, b1=get("b1", d["b1"]), b2=get("b2", d["b2"]),
                     eps=get("eps", d["eps"]), weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx

  d = _ADAN_DEFAULTS
  return adan(learning_rate, b1=get("b1", d["b1"]), b2=get("b2", d["b2"]), b3=get("b3", d["b3"]),
              eps=get("eps", d["eps"]), weight_decay=weight_decay, no_prox=bool(get("no_prox", False)),
              max_grad_norm=grad_clip)
