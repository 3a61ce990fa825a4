"""EDT's token relation-enhanced masking training.

Every step runs the denoiser twice on the same clean images x0 and timesteps t:

* a full pass, exactly the plain denoising loss (`DenoisingObjective`), and
* a masked pass with its own noise and label drops, in which the EDT down-sampling modules drop
  tokens: each token entering the first down-sampling is dropped with probability
  p ~ U(0.4, 0.5), each token entering the second with p ~ U(0.1, 0.2). The first stage has seen
  every token, so the later stages must rebuild the dropped ones from their relations to the
  kept ones. For EDT-XL, additionally 15–25 % of the first stage's tokens are replaced by their
  position embedding before its fifth block.

The loss per example is the sum of both diffusion losses (times the timestep sampler's weight),
and the loss-aware timestep sampler is updated with that sum, as in the reference training
script. Dropping happens inside the model (see ``jdpm.models.edt.DownSample``): the long skips
keep each down stage's full input, so the up path fuses complete skips with features computed
from the kept tokens.

All randomness (ratios and keep masks included) is drawn in `draw` for the whole global batch,
so gradient accumulation and resumed runs see the same masks. The reference draws one ratio per
forward call (per device and micro-batch); here each example draws its own ratio, which has the
same distribution per example and does not depend on how the batch is split.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jdpm.training import objectives

# Drop-probability ranges (low, high) of the reference recipe.
DOWN_MASK_RATIOS = ((0.4, 0.5), (0.1, 0.2))
MID_MASK_RATIO = (0.15, 0.25)  # EDT-XL only.


def _check_range(name, bounds):
  low, high = bounds
  if not 0.0 <= low <= high < 1.0:
    raise ValueError(f"{name} must be a (low, high) drop-probability range with "
                     f"0 <= low <= high < 1, got {bounds!r}.")
  return float(low), float(high)


def draw_keep_mask(rng, batch_size, num_tokens, ratio_range):
  """Random token keep masks with a per-example drop probability.

  Args:
    rng: a PRNG key.
    batch_size: B.
    num_tokens: N.
    ratio_range: (low, high); each example draws p ~ U(low, high) and drops each of its tokens
      independently with probability p (keeps it where u >= p, u ~ U(0, 1), as the reference).

  Returns:
    (keep, ratio): (B, N) bool keep mask and the (B,) float32 drop probabilities.
  """
  low, high = _check_range("ratio_range", ratio_range)
  rng_ratio, rng_tokens = jax.random.split(rng)
  ratio = jax.random.uniform(rng_ratio, (batch_size,), jnp.float32, low, high)
  u = jax.random.uniform(rng_tokens, (batch_size, num_tokens), jnp.float32)
  return u >= ratio[:, None], ratio


@objectives.register("edt_masking")
@dataclasses.dataclass(frozen=True)
class EDTMaskingObjective(objectives.MaskedPassObjective):
  """Full pass + masked pass denoising loss of an ``jdpm.models.EDT`` model.

  Attributes (besides those of `DenoisingObjective`):
    down_mask_ratios: one (low, high) drop-probability range per down-sampling module, or None
      to leave that module unmasked; fewer entries than modules leave the rest unmasked.
    mid_mask_ratio: (low, high) fraction of first-stage tokens replaced by the position table
      before block ``model.mid_mask_block``; None (the default) turns this off. The reference
      uses (0.15, 0.25) for EDT-XL only (``MID_MASK_RATIO``).

  Config sub-dict ``config.edt_masking``: down_mask_ratios, mid_mask_ratio.
  Batch after `draw`: the `DenoisingObjective` fields for the full pass plus ``"masked"``:
  {"noise": like image, "drop": (B,) int, "down_keep": tuple of (B, n_k²) bool or None,
  "down_ratio": (B, n_down) float32, and with mid masking "mid_keep": (B, N) bool,
  "mid_ratio": (B,) float32}.
  Metrics (besides the base ones): ``loss_full`` and ``loss_masked`` (unweighted per-pass
  losses; ``raw_loss`` is their sum).
  """
  down_mask_ratios: tuple = DOWN_MASK_RATIOS
  mid_mask_ratio: tuple | None = None

  def __post_init__(self):
    super().__post_init__()
    if not hasattr(self.model, "down_grid_sizes"):
      raise ValueError(f"EDTMaskingObjective needs an EDT model (with down-sampling modules), got "
                       f"{type(self.model).__name__}.")
    ratios = tuple(None if r is None else _check_range("down_mask_ratios entry", r)
                   for r in self.down_mask_ratios)
    if len(ratios) > self.model.num_down:
      raise ValueError(f"down_mask_ratios has {len(ratios)} entries but the model has "
                       f"{self.model.num_down} down-sampling modules.")
    object.__setattr__(self, "down_mask_ratios", ratios)
    if self.mid_mask_ratio is not None:
      object.__setattr__(self, "mid_mask_ratio", _check_range("mid_mask_ratio",
                                                              self.mid_mask_ratio))
      if not 0 <= self.model.mid_mask_block < self.model.stages_depth[0]:
        raise ValueError(f"mid_mask_ratio needs block {self.model.mid_mask_block} in the first "
                         f"stage, which has {self.model.stages_depth[0]} blocks.")

  @classmethod
  def from_config(cls, config, model, **kwargs):
    """Builds the objective from a training config (see ``configs/edt.py``): the `DenoisingObjective`
    fields, and ``config.edt_masking.down_mask_ratios`` / ``mid_mask_ratio`` when present."""
    own = objectives.section(config, cls.name)
    if own.get("down_mask_ratios") is not None:
      own["down_mask_ratios"] = tuple(None if r is None else tuple(r) for r in own["down_mask_ratios"])
    if own.get("mid_mask_ratio") is not None:
      own["mid_mask_ratio"] = tuple(own["mid_mask_ratio"])
    return super().from_config(config, model, **own, **kwargs)

  def draw_masks(self, rng, batch_size):
    """The masked pass's keep masks and ratios (see the class docstring)."""
    grids = self.model.down_grid_sizes()
    rngs = jax.random.split(rng, len(grids) + 1)
    keeps, ratios = [], []
    for k, grid in enumerate(grids):
      bounds = self.down_mask_ratios[k] if k < len(self.down_mask_ratios) else None
      if bounds is None:
        keeps.append(None)
        ratios.append(jnp.zeros((batch_size,), jnp.float32))
        continue
      keep, ratio = draw_keep_mask(rngs[k], batch_size, grid * grid, bounds)
      keeps.append(keep)
      ratios.append(ratio)
    masks = {"down_keep": tuple(keeps), "down_ratio": jnp.stack(ratios, axis=1)}
    if self.mid_mask_ratio is not None:
      keep, ratio = draw_keep_mask(rngs[-1], batch_size, self.model.grid_size**2,
                                   self.mid_mask_ratio)
      masks.update(mid_keep=keep, mid_ratio=ratio)
    return masks

  def draw(self, rng, batch, extra):
    rng_full, rng_noise, rng_drop, rng_masks = jax.random.split(rng, 4)
    batch = objectives.DenoisingObjective.draw(self, rng_full, batch, extra)
    b = batch["image"].shape[0]
    masked = dict(
        noise=jax.random.normal(rng_noise, batch["image"].shape, jnp.float32),
        drop=(jax.random.uniform(rng_drop, (b,)) < self.class_dropout_prob).astype(jnp.int32),
        **self.draw_masks(rng_masks, b))
    return dict(batch, masked=masked)

  def masked_call_kwargs(self, masked):
    return dict(down_keep=masked["down_keep"], mid_keep=masked.get("mid_keep"))


__all__ = ["DOWN_MASK_RATIOS", "EDTMaskingObjective", "MID_MASK_RATIO", "draw_keep_mask"]
