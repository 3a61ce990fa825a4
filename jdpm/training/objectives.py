"""Training objectives: the class-conditional denoising loss of DiT / MDTv2 / EDT.

An objective plugs into `jdpm.training.step.make_update_fn`: `draw` adds the step's randomness to the batch
(timesteps, noise, label drops) for the whole global batch at once, `per_example_loss` runs the model.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdpm.diffusion import GaussianDiffusion, create_named_schedule_sampler


@dataclasses.dataclass(frozen=True)
class DenoisingObjective:
  """eps-prediction (+ learned variance) loss of a class-conditional denoiser.

  Attributes:
    model: a Flax denoiser called as ``model.apply(variables, x, t, y, force_drop_ids=...)``.
    diffusion: the training `GaussianDiffusion` (1000 steps).
    timestep_sampler: "uniform" or "loss-second-moment" (importance sampling of t by the loss history).
    class_dropout_prob: probability of replacing the label by the null class (classifier-free guidance).
    min_snr_gamma: Min-SNR-gamma weighting of the mse term (EDT/MDTv2 use 5); 0 = off.
  Batch: {"image": (B, H, W, C) float in [-1, 1] (or latents), "label": (B,) int}.
  """
  model: nn.Module
  diffusion: GaussianDiffusion
  timestep_sampler: str = "uniform"
  class_dropout_prob: float = 0.1
  min_snr_gamma: float = 0.0

  @property
  def sampler(self):
    return create_named_schedule_sampler(self.timestep_sampler, self.diffusion.num_timesteps)

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

  def model_fn(self, params, batch):
    """``model_fn(x_t, t)`` for the diffusion losses, with this batch's labels and label drops."""
    def fn(x_t, t):
      return self.model.apply({"params": params}, x_t, t, batch["label"], force_drop_ids=batch["drop"])
    return fn

  def per_example_loss(self, params, batch):
    terms = self.diffusion.training_losses(self.model_fn(params, batch), batch["image"], batch["t"],
                                           batch["noise"].astype(batch["image"].dtype),
                                           min_snr_gamma=self.min_snr_gamma or None)
    losses = terms["loss"].astype(jnp.float32)
    aux = {k: v.astype(jnp.float32) for k, v in terms.items() if k != "loss"}
    return losses * batch["weights"], dict(aux, raw_loss=losses)

  def full_plus_masked_loss(self, params, full_batch, masked_batch):
    """The masking objectives' loss: this objective's loss on a full pass plus on a masked pass.

    Returns (B,) losses and the full pass's auxiliary values, the masked pass's as ``masked_*``,
    ``loss_full`` and ``loss_masked`` (unweighted), and ``raw_loss`` = their sum, which the timestep
    sampler's loss history sees (as the official training loops).
    """
    full_losses, full_aux = DenoisingObjective.per_example_loss(self, params, full_batch)
    masked_losses, masked_aux = DenoisingObjective.per_example_loss(self, params, masked_batch)
    aux = {k: v for k, v in full_aux.items() if k != "raw_loss"}
    aux.update({f"masked_{k}": v for k, v in masked_aux.items() if k != "raw_loss"})
    aux.update(loss_full=full_aux["raw_loss"], loss_masked=masked_aux["raw_loss"],
               raw_loss=full_aux["raw_loss"] + masked_aux["raw_loss"])
    return full_losses + masked_losses, aux

  def update_extra(self, extra, batch, losses, aux):
    return self.sampler.update(extra, batch["t"], jax.lax.stop_gradient(aux["raw_loss"]))
