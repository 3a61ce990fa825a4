"""Distributions over training timesteps, as pure functions of an explicit state (usable inside jax.jit).

Every sampler has the same three methods:

  state = sampler.init()
  t, weights = sampler.sample(state, rng, batch_size)   # t: (B,) int32, weights: (B,) float32
  state = sampler.update(state, t, losses)              # losses: (B,) per-example losses at t

For "uniform" and "loss-second-moment" the weights 1 / (N p_t) make the weighted mean loss an unbiased
estimate of the mean over uniform t; "logit-normal" returns unit weights and so trains a differently
weighted objective (see `LogitNormalSampler`). In multi-device training pass the global batch's t and
losses to `update` so every replica keeps the same state.
"""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossHistory:
  """The state of `LossSecondMomentSampler`.

  Attributes:
    history: (N, H) float32, the last H losses seen at each timestep, oldest first.
    counts: (N,) int32, how many of a timestep's H slots are filled.
  """
  history: jax.Array
  counts: jax.Array


@dataclasses.dataclass(frozen=True)
class UniformSampler:
  """Timesteps uniform on 0..N-1 with unit weights; its state is an empty tuple."""
  num_timesteps: int

  def init(self):
    return ()

  def weights(self, state):
    """(N,) unnormalised sampling weights."""
    del state
    return jnp.ones((self.num_timesteps,), jnp.float32)

  def sample(self, state, rng, batch_size):
    """(t, weights): (B,) int32 timesteps and (B,) float32 importance weights (all 1)."""
    return _importance_sample(self.weights(state), rng, batch_size)

  def update(self, state, t, losses):
    del t, losses
    return state


@dataclasses.dataclass(frozen=True)
class LossSecondMomentSampler:
  """Importance sampling of timesteps by the root mean square of their recent losses (improved DDPM).

  Until every timestep has `history_per_term` losses recorded, t is uniform. Then
  p_t = (1 - uniform_prob) sqrt(mean(history_t^2)) / sum_s sqrt(mean(history_s^2)) + uniform_prob / N.

  Attributes:
    num_timesteps: N.
    history_per_term: H, losses kept per timestep.
    uniform_prob: the probability mass spread uniformly, so no timestep is ever starved.
  """
  num_timesteps: int
  history_per_term: int = 10
  uniform_prob: float = 0.001

  def init(self):
    """An empty history."""
    return LossHistory(history=jnp.zeros((self.num_timesteps, self.history_per_term), jnp.float32),
                       counts=jnp.zeros((self.num_timesteps,), jnp.int32))

  def warmed_up(self, state):
    """Whether every timestep has a full history (a scalar bool)."""
    return jnp.all(state.counts == self.history_per_term)

  def weights(self, state):
    """(N,) sampling probabilities (uniform ones before warm-up)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))
    total = jnp.sum(rms)
    # All-zero losses carry no information: stay uniform rather than divide by zero.
    usable = self.warmed_up(state) & (total > 0)
    mixed = rms / jnp.where(total > 0, total, 1.0) * (1 - self.uniform_prob)
    mixed = mixed + self.uniform_prob / self.num_timesteps
    return jnp.where(usable, mixed, jnp.ones_like(rms))

  def sample(self, state, rng, batch_size):
    """(t, weights): (B,) int32 timesteps drawn from `weights` and (B,) float32 weights 1 / (N p_t)."""
    return _importance_sample(self.weights(state), rng, batch_size)

  def update(self, state, t, losses):
    """Records the losses in order: a full history drops its oldest entry, as the reference does.

    Args:
      state: a LossHistory.
      t: (B,) int timesteps (the global batch in multi-device training).
      losses: (B,) per-example losses at those timesteps.
    Returns:
      the new LossHistory.
    """
    t = jnp.asarray(t, jnp.int32).reshape(-1)
    losses = jax.lax.stop_gradient(jnp.asarray(losses)).astype(state.history.dtype).reshape(-1)
    if t.shape != losses.shape:
      raise ValueError(f"t and losses must have the same length; got {t.shape} and {losses.shape}.")
    size = self.history_per_term

    # Sequential, because a timestep may occur several times in one batch.
    def record(carry, item):
      history, counts = carry
      step, loss = item
      row, count = history[step], counts[step]
      shifted = jnp.concatenate([row[1:], loss[None]])
      filled = row.at[jnp.minimum(count, size - 1)].set(loss)
      full = count == size
      history = history.at[step].set(jnp.where(full, shifted, filled))
      counts = counts.at[step].set(jnp.where(full, count, count + 1))
      return (history, counts), None

    (history, counts), _ = jax.lax.scan(record, (state.history, state.counts), (t, losses))
    return LossHistory(history=history, counts=counts)


@dataclasses.dataclass(frozen=True)
class LogitNormalSampler:
  """Timesteps whose fraction t/N is logit-normal (SD3's timestep density), with unit weights.

  Unlike the two samplers above, this one changes the objective instead of estimating the uniform one: the
  loss at t counts in proportion to p_t, which concentrates training on the middle noise levels (where
  the layout of an image is decided) and spends little on the nearly clean and nearly pure-noise ends.
  p_t is the logit-normal density at u = (t + 1/2) / N, normalised over 0..N-1; the median of t is about
  N sigmoid(mean). Its state is an empty tuple.

  Attributes:
    num_timesteps: N.
    mean, std: of logit(t / N).
  """
  num_timesteps: int
  mean: float = 0.0
  std: float = 1.0

  def __post_init__(self):
    if not self.std > 0:
      raise ValueError(f"the logit-normal timestep density needs std > 0; got {self.std}.")

  def init(self):
    return ()

  def weights(self, state):
    """(N,) unnormalised sampling weights: the logit-normal density at the timesteps' centres."""
    del state
    u = (jnp.arange(self.num_timesteps, dtype=jnp.float32) + 0.5) / self.num_timesteps
    z = (jnp.log(u) - jnp.log1p(-u) - self.mean) / self.std
    return jnp.exp(-0.5 * z * z) / (u * (1 - u))

  def sample(self, state, rng, batch_size):
    """(t, weights): (B,) int32 timesteps drawn from `weights`, and (B,) float32 unit weights."""
    t, _ = _draw(self.weights(state), rng, batch_size)
    return t, jnp.ones((batch_size,), jnp.float32)

  def update(self, state, t, losses):
    del t, losses
    return state


SAMPLER_NAMES = ("uniform", "loss-second-moment", "logit-normal")


def create_named_schedule_sampler(name, num_timesteps, logit_normal=(0.0, 1.0)):
  """"uniform" or "loss-second-moment" (the names of the reference code), or "logit-normal".

  Args:
    name: one of SAMPLER_NAMES.
    num_timesteps: N.
    logit_normal: (mean, std) of logit(t / N) for "logit-normal" (ignored by the others).
  """
  if name == "uniform":
    return UniformSampler(num_timesteps)
  if name == "loss-second-moment":
    return LossSecondMomentSampler(num_timesteps)
  if name == "logit-normal":
    mean, std = logit_normal
    return LogitNormalSampler(num_timesteps, float(mean), float(std))
  raise ValueError(f"unknown schedule sampler {name!r}; use one of {', '.join(map(repr, SAMPLER_NAMES))}.")


def _draw(weights, rng, batch_size):
  """(t, p): (B,) int32 timesteps drawn in proportion to the (N,) `weights`, and the (N,) probabilities."""
  p = weights / jnp.sum(weights)
  t = jax.random.choice(rng, p.shape[0], (batch_size,), p=p)
  return t.astype(jnp.int32), p


def _importance_sample(weights, rng, batch_size):
  """(t, weights 1 / (N p_t)): the draw of `_draw` with the weights that keep the uniform objective."""
  t, p = _draw(weights, rng, batch_size)
  return t, (1.0 / (p.shape[0] * p[t])).astype(jnp.float32)
