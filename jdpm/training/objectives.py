"""Training objectives, registered by name: the conditional denoising loss of DiT / MDTv2 / EDT and friends.

An objective plugs into `jdpm.training.step.make_update_fn`: `draw` adds the step's randomness to the batch
(timesteps, noise, condition drops) for the whole global batch at once, `per_example_loss` runs the model.

Each objective registers itself under a name (``@register("denoising")``) and owns

  * one config sub-dict, ``config.<name>`` (optional; its fields override the defaults), read by its
    ``from_config(config, model)``;
  * the batch keys it reads (``batch_keys``), which the data pipeline must yield;
  * the model's example inputs (``init_params``), so that the trainer never assumes ``init(x, t, y)``.

The trainer builds ``create(config, model)``, the objective named by ``config.objective``.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdpm.diffusion import GaussianDiffusion, conditioning, create_diffusion, create_named_schedule_sampler
from jdpm.diffusion.gaussian import MEAN_TYPES  # the values of config.diffusion.prediction

_REGISTRY = {}


def register(name):
  """Class decorator: makes an objective available as ``config.objective = name``."""
  def wrap(cls):
    _REGISTRY[name] = cls
    cls.name = name
    return cls
  return wrap


def names():
  """The registered objective names."""
  return tuple(sorted(_REGISTRY))


def get(name):
  """The objective class registered as `name`."""
  _import_builtin()
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(names())}.")
  return _REGISTRY[name]


def create(config, model):
  """The objective named by ``config.objective`` (default "denoising"), built from `config`."""
  return get(config.get("objective", "denoising")).from_config(config, model)


def _import_builtin():
  # The masking objectives live in their own modules; importing them registers them.
  from jdpm.training import edt_masking, mdt_masking  # pylint: disable=unused-import,import-outside-toplevel


def training_diffusion(config, model=None):
  """The training `GaussianDiffusion` of a config (the variance is learned when the model outputs it)."""
  learn_sigma = getattr(model, "learn_sigma", None)
  if learn_sigma is None:
    learn_sigma = config.model.get("learn_sigma", True)
  prediction = config.diffusion.get("prediction", "epsilon")
  if prediction not in MEAN_TYPES:
    raise ValueError(f"config.diffusion.prediction must be one of {', '.join(MEAN_TYPES)}; got {prediction!r}.")
  return create_diffusion("", noise_schedule=config.diffusion.beta_schedule,
                          diffusion_steps=config.diffusion.num_timesteps, learn_sigma=learn_sigma,
                          predict_v=prediction == "v", predict_xstart=prediction == "x0")


def section(config, name):
  """The objective's config sub-dict ``config.<name>`` as a plain dict ({} when absent)."""
  sub = config.get(name)
  return {} if sub is None else dict(sub.to_dict() if hasattr(sub, "to_dict") else sub)


@register("denoising")
@dataclasses.dataclass(frozen=True)
class DenoisingObjective:
  """eps-prediction (+ learned variance) loss of a conditional denoiser.

  Attributes:
    model: a Flax denoiser called as ``model.apply(variables, x, t, cond)``.
    diffusion: the training `GaussianDiffusion` (1000 steps).
    timestep_sampler: "uniform", "loss-second-moment" (importance sampling of t by the loss history) or
      "logit-normal" (t / N logit-normal: reweights the loss towards the middle noise levels).
    timestep_logit_normal: (mean, std) of logit(t / N) for the "logit-normal" sampler.
    class_dropout_prob: probability of replacing an example's condition by the null condition
      (classifier-free guidance), drawn per example.
    min_snr_gamma: Min-SNR-gamma weighting of the mse term (EDT/MDTv2 use 5); 0 = off.
    min_snr_offset: added to the Min-SNR weight of the x_0 error (`jdpm.diffusion.losses.min_snr_weight`).
    condition_keys: the batch keys that form the condition: one key gives that array (class labels for
      DiT), several give a dict {key: batch[key]} (e.g. ("label", "context")); () for an unconditional
      model.
    null: the null condition (see `jdpm.diffusion.conditioning`); default: the model's `null_condition`
      (the null class of DiT / EDT / MDTv2).
  Batch: {"image": (B, H, W, C) float in [-1, 1] (or latents), and the condition keys, e.g. "label" (B,)}.
  Config sub-dict ``config.denoising`` (optional): condition_keys. The other fields come from
  ``config.diffusion`` (timestep_sampler, timestep_logit_normal, min_snr_gamma, min_snr_offset) and
  ``config.model.class_dropout_prob``.
  """
  model: nn.Module
  diffusion: GaussianDiffusion
  timestep_sampler: str = "uniform"
  timestep_logit_normal: tuple = (0.0, 1.0)
  class_dropout_prob: float = 0.1
  min_snr_gamma: float = 0.0
  min_snr_offset: float = 0.0
  condition_keys: tuple = ("label",)
  null: Any = None

  def __post_init__(self):
    object.__setattr__(self, "condition_keys", tuple(self.condition_keys))
    if self.null is None and self.condition_keys:
      object.__setattr__(self, "null", getattr(self.model, "null_condition", None))
    if self.min_snr_offset and not self.min_snr_gamma:
      raise ValueError(f"min_snr_offset={self.min_snr_offset} is added to the Min-SNR weight, but Min-SNR is off "
                       f"(min_snr_gamma=0): set config.diffusion.min_snr_gamma (e.g. 5) or drop the offset.")
    if self.min_snr_offset and self.diffusion.mean_type == "epsilon":
      # The noise error's weight is (min(SNR, gamma) + offset) / SNR: about 25,000 x offset at the last step of
      # the linear schedule.
      raise ValueError(f"min_snr_offset={self.min_snr_offset} with noise prediction gives the noisiest steps "
                       f"weights of thousands: use it with config.diffusion.prediction='v' or 'x0', or drop it.")
    if self.class_dropout_prob > 0 and self.condition_keys and self.null is None:
      raise ValueError(f"class_dropout_prob={self.class_dropout_prob} needs a null condition: give null= or "
                       f"a model with a null_condition (for DiT/EDT/MDTv2: class_dropout_prob > 0).")

  @classmethod
  def from_config(cls, config, model, **kwargs):
    """Builds the objective from a training config (see ``configs/*.py``)."""
    own = section(config, cls.name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(own) - fields)
    if unknown:
      raise ValueError(f"config.{cls.name} has unknown fields {unknown}; known: {sorted(fields - {'model'})}.")
    args = dict(diffusion=training_diffusion(config, model), timestep_sampler=config.diffusion.timestep_sampler,
                timestep_logit_normal=tuple(config.diffusion.get("timestep_logit_normal", (0.0, 1.0))),
                class_dropout_prob=config.model.get("class_dropout_prob", 0.1),
                min_snr_gamma=config.diffusion.get("min_snr_gamma", 0.0),
                min_snr_offset=config.diffusion.get("min_snr_offset", 0.0))
    args.update(own)
    args.update(kwargs)
    return cls(model, **args)

  @property
  def batch_keys(self):
    """The data keys this objective reads."""
    return ("image",) + self.condition_keys

  @property
  def sampler(self):
    return create_named_schedule_sampler(self.timestep_sampler, self.diffusion.num_timesteps,
                                         logit_normal=self.timestep_logit_normal)

  def condition(self, batch):
    """The condition pytree of a batch (None for an unconditional objective)."""
    if not self.condition_keys:
      return None
    if len(self.condition_keys) == 1:
      return batch[self.condition_keys[0]]
    return {k: batch[k] for k in self.condition_keys}

  def init_params(self, rng, example):
    """The model's initial "params" from an example batch (leaves with a leading batch axis)."""
    x = jnp.zeros_like(example["image"], jnp.float32)
    t = jnp.zeros(x.shape[:1], jnp.int32)
    return self.model.init(rng, x, t, self.condition(example))["params"]

  def init_extra(self) -> Any:
    """The timestep sampler's state, kept in `TrainState.extra`."""
    return self.sampler.init()

  def draw(self, rng, batch, extra):
    b = batch["image"].shape[0]
    rng_t, rng_noise, rng_drop = jax.random.split(rng, 3)
    t, weights = self.sampler.sample(extra, rng_t, b)
    noise = jax.random.normal(rng_noise, batch["image"].shape, jnp.float32)
    drop = (jax.random.uniform(rng_drop, (b,)) < self.class_dropout_prob).astype(jnp.int32)
    return dict(batch, t=t, weights=weights, noise=noise, drop=drop)

  def model_fn(self, params, batch, **call_kwargs):
    """``model_fn(x_t, t)`` for the diffusion losses, with this batch's condition and condition drops."""
    cond = self.condition(batch)
    if cond is not None and self.null is not None:
      cond = conditioning.drop(cond, self.null, batch["drop"])

    def fn(x_t, t):
      return self.model.apply({"params": params}, x_t, t, cond, **call_kwargs)
    return fn

  def pass_loss(self, params, batch, **call_kwargs):
    """One denoising pass with the batch's noise and drops: per-example (weighted loss, raw loss, aux)."""
    terms = self.diffusion.training_losses(self.model_fn(params, batch, **call_kwargs), batch["image"],
                                           batch["t"], batch["noise"].astype(batch["image"].dtype),
                                           min_snr_gamma=self.min_snr_gamma or None,
                                           min_snr_offset=self.min_snr_offset)
    losses = terms["loss"].astype(jnp.float32)
    aux = {k: v.astype(jnp.float32) for k, v in terms.items() if k != "loss"}
    return losses * batch["weights"], losses, aux

  def per_example_loss(self, params, batch):
    weighted, raw, aux = self.pass_loss(params, batch)
    return weighted, dict(aux, raw_loss=raw)

  def update_extra(self, extra, batch, losses, aux):
    return self.sampler.update(extra, batch["t"], jax.lax.stop_gradient(aux["raw_loss"]))


@dataclasses.dataclass(frozen=True)
class MaskedPassObjective(DenoisingObjective):
  """Base of the masking objectives (EDT, MDTv2): the denoising loss of a full pass plus a masked pass.

  Subclasses put the masked pass's own randomness into ``batch["masked"]`` in their `draw` — always
  "noise" and "drop", plus their masks — and say how the model is called on it (``masked_call_kwargs``).

  Metrics (besides the base ones): the full pass's auxiliary values, the masked pass's as ``masked_*``,
  ``loss_full`` and ``loss_masked`` (unweighted), and ``raw_loss`` = their sum, which the timestep
  sampler's loss history sees (as the official training loops).
  """

  def masked_call_kwargs(self, masked) -> dict:
    """The model's extra call arguments for the masked pass (its masks)."""
    raise NotImplementedError

  def per_example_loss(self, params, batch):
    masked = batch["masked"]
    full_batch = {k: v for k, v in batch.items() if k != "masked"}
    masked_batch = dict(full_batch, noise=masked["noise"], drop=masked["drop"])
    full_losses, full_raw, full_aux = self.pass_loss(params, full_batch)
    masked_losses, masked_raw, masked_aux = self.pass_loss(params, masked_batch,
                                                           **self.masked_call_kwargs(masked))
    aux = dict(full_aux)
    aux.update({f"masked_{k}": v for k, v in masked_aux.items()})
    aux.update(loss_full=full_raw, loss_masked=masked_raw, raw_loss=full_raw + masked_raw)
    return full_losses + masked_losses, aux
