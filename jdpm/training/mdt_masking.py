"""MDTv2's mask latent modelling objective: the denoising loss of a full pass plus a masked pass.

Each step, as the official training loop (sail-sg/MDT ``train_util.py``), trains on

  loss = w(t) · L(full pass) + w(t) · L(masked pass)

with the same timesteps t for both passes and, in each pass, its own noise draw and label drops
(the official loop calls ``training_losses`` twice, and each call draws new noise and new label
drops). L is the usual ε-MSE (+ learned-variance bound) of `DenoisingObjective`, with MDTv2's
Min-SNR-5 weighting when ``min_snr_gamma=5``; w(t) are the timestep sampler's weights, and a
loss-aware sampler records the sum of both losses.

The masked pass drops tokens MAE-style: each example keeps a uniformly random subset of
``floor(N · (1 − r))`` of its N tokens, r ~ U(mask_ratio, mask_ratio + 0.2) (official:
mask_ratio = 0.3). Only the kept tokens enter the encoder; the side-interpolater predicts the
dropped ones from a learnable mask token (see `jdpm.models.mdt`).

Static shapes. The number of kept tokens changes from step to step, but a compiled step needs
fixed shapes. The encoder therefore always runs on K = floor(N · (1 − mask_ratio)) token slots,
the largest keep count the ratio range allows (179 of 256 tokens for mask_ratio 0.3): a row's
kept tokens fill its first slots and the remaining slots hold dropped tokens that no token
attends to (their attention logits get a −1e30 bias) and whose outputs are discarded. Every kept
token's computation is then exactly the official one on the kept tokens only, for any keep count
and without recompilation; the cost is that of the largest keep count (about 17% more encoder
work in the masked pass than the official average of 0.6 N tokens).

Fidelity. The official code draws one ratio per forward call, i.e. per GPU and micro-batch. By
default one ratio is drawn per step for the whole global batch (``per_example_ratio=False``);
``per_example_ratio=True`` draws one per example instead. Everything else (keep count, uniform
subsets, loss terms, noise and label-drop draws, the decoder's unmasked long skip) follows the
official code.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jdpm.training import objectives

def draw_token_mask(rng, batch_size, num_tokens, min_ratio, ratio_span=0.2, max_keep=None,
                    per_example_ratio=False):
  """Random MAE-style token masks, as MDTv2's ``random_masking``.

  Args:
    rng: PRNG key.
    batch_size: B.
    num_tokens: N.
    min_ratio: the smallest mask ratio; ratios are r ~ U(min_ratio, min_ratio + ratio_span).
    ratio_span: width of the ratio range (official: 0.2).
    max_keep: optional cap on the keep count (the model's static slot count); keep counts are
      clipped to [1, max_keep].
    per_example_ratio: one ratio per example instead of one for the whole batch.

  Returns:
    (B, N) bool mask, True = dropped. Row b keeps floor(N · (1 − r_b)) tokens chosen uniformly
    at random.
  """
  if not (0.0 <= min_ratio and ratio_span >= 0.0 and min_ratio + ratio_span < 1.0):
    raise ValueError(f"Mask ratios U({min_ratio}, {min_ratio + ratio_span}) must lie in [0, 1).")
  rng_ratio, rng_order = jax.random.split(rng)
  shape = (batch_size,) if per_example_ratio else (1,)
  ratio = min_ratio + ratio_span * jax.random.uniform(rng_ratio, shape)
  num_keep = jnp.floor(num_tokens * (1.0 - ratio)).astype(jnp.int32)
  num_keep = jnp.clip(num_keep, 1, max_keep or num_tokens)
  # A uniformly random order of the tokens; the first num_keep in that order are kept.
  scores = jax.random.uniform(rng_order, (batch_size, num_tokens))
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  return rank >= num_keep[:, None]


@objectives.register("mdt_masking")
@dataclasses.dataclass(frozen=True)
class MaskedDenoisingObjective(objectives.MaskedPassObjective):
  """`DenoisingObjective` on a full pass plus an MDTv2 masked pass (see the module docstring).

  Attributes (besides those of `DenoisingObjective`):
    mask_ratio_span: ratios are drawn from U(model.mask_ratio, model.mask_ratio + span).
    per_example_ratio: draw one mask ratio per example instead of one per step.

  ``model`` must be an `MDTv2` (or any denoiser with ``mask_ratio``, ``input_size``,
  ``patch_size`` and a ``mask=`` call argument) created with a ``mask_ratio``.
  Config sub-dict ``config.mdt_masking``: mask_ratio_span, per_example_ratio.
  Batch after `draw`: that of `DenoisingObjective` plus ``"masked"``: {"token_mask": (B, N) bool
  (True = dropped), "noise": (B, H, W, C), "drop": (B,)} for the masked pass.
  """
  mask_ratio_span: float = 0.2
  per_example_ratio: bool = False

  def __post_init__(self):
    super().__post_init__()
    if getattr(self.model, "mask_ratio", None) is None:
      raise ValueError("MaskedDenoisingObjective needs a model created with mask_ratio (MDTv2's "
                       "official training uses mask_ratio=0.3).")

  @property
  def num_tokens(self):
    return (self.model.input_size // self.model.patch_size) ** 2

  def draw(self, rng, batch, extra):
    rng_full, rng_mask, rng_noise, rng_drop = jax.random.split(rng, 4)
    batch = objectives.DenoisingObjective.draw(self, rng_full, batch, extra)
    b = batch["image"].shape[0]
    token_mask = draw_token_mask(rng_mask, b, self.num_tokens, self.model.mask_ratio,
                                 self.mask_ratio_span, self.model.default_keep_slots,
                                 self.per_example_ratio)
    noise = jax.random.normal(rng_noise, batch["image"].shape, jnp.float32)
    drop = (jax.random.uniform(rng_drop, (b,)) < self.class_dropout_prob).astype(jnp.int32)
    return dict(batch, masked=dict(token_mask=token_mask, noise=noise, drop=drop))

  def masked_call_kwargs(self, masked):
    return dict(mask=masked["token_mask"])

  def per_example_loss(self, params, batch):
    losses, aux = super().per_example_loss(params, batch)
    aux["mask_ratio"] = jnp.mean(batch["masked"]["token_mask"].astype(jnp.float32), axis=1)
    return losses, aux


__all__ = ["MaskedDenoisingObjective", "draw_token_mask"]
