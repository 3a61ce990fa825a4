"""MDTv2: the Masked Diffusion Transformer, version 2 (Gao et al., 2023).

A class-conditional denoiser on NHWC latents built from adaLN-Zero blocks with a learnable
relative position bias, arranged as an encoder with U-Net-like long skips and a decoder:

  tokens = patch_embed(x) + pos_embed                 (learnable, initialised to sin-cos)
  encoder: en_inblocks (each output pushed on a stack), then en_outblocks (each pops one and
           merges it with ``skip_linear(concat([x, skip]))``)
  masked training only: the side-interpolater fills the dropped positions with a learnable
           ``mask_token``, adds ``decoder_pos_embed`` and runs ``sideblocks``; its output replaces
           the dropped positions only
  otherwise: ``x += decoder_pos_embed``
  decoder: de_blocks, each merging ``skip_linear(concat([x, tokens]))`` with the full embedded
           input ``tokens`` (also in masked training: the decoder's skip is never masked)
  final adaLN layer, unpatchify.

Block ``i`` of the whole stack (``amm_blocks`` numbering) is ``en_inblocks_i`` for i < h,
``en_outblocks_{i-h}`` for h <= i < 2h and ``de_blocks_{i-2h}`` after, with h = (depth −
decode_layer) // 2 the encoder half depth.

Submodule and parameter names follow the official state dict, so
``jdpm.convert.from_official`` maps released checkpoints one to one.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdpm.diffusion.guidance import power_cosine_guidance_scale
from jdpm.models import amm as amm_lib
from jdpm.models import layers
from jdpm.models.dit import FinalLayer, PatchTransformer, check_input_shapes
from jdpm.models.relative_position import RelativePositionBias

Dtype = Any

# The official table has (2n−1)² + 3 rows; the last 3 are never indexed (kept so that official
# checkpoints convert without reshaping).
EXTRA_TABLE_ROWS = 3
# Logit bias of an attention key that must not be seen. Finite, so that a row whose keys are all
# hidden (a mask that keeps no token) still gives finite, if meaningless, values.
HIDDEN_KEY_BIAS = -1e30


def kept_token_slots(mask, keep_slots):
  """Where the kept tokens of a token mask go in a fixed number of slots.

  Args:
    mask: (B, N) bool, True where a token is dropped (the official ``mask`` convention: 1 =
      removed).
    keep_slots: K, the static number of slots for kept tokens.

  Returns:
    ids_keep: (B, K) int32 token indices, the kept tokens first (in token order), then dropped
      tokens that only pad the slots.
    slot_valid: (B, K) bool, True for slots that hold a kept token.
    kept: (B, N) bool, True for tokens placed in a valid slot (``~mask``, unless more than K
      tokens are kept: the surplus is then treated as dropped).
  """
  mask = jnp.asarray(mask).astype(bool)
  num_tokens = mask.shape[1]
  if not 1 <= keep_slots <= num_tokens:
    raise ValueError(f"keep_slots must be in [1, {num_tokens}], got {keep_slots}.")
  # A stable sort of the drop flags lists the kept tokens first, in token order.
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True).astype(jnp.int32)
  num_kept = jnp.minimum(num_tokens - jnp.sum(mask, axis=1), keep_slots)
  ids_keep = order[:, :keep_slots]
  slot_valid = jnp.arange(keep_slots)[None, :] < num_kept[:, None]
  rank = jnp.argsort(order, axis=1)  # Position of every token in `order`.
  kept = rank < num_kept[:, None]
  return ids_keep, slot_valid, kept


class MDTAttention(layers.Attention):
  """``layers.Attention`` with MDT's learnable relative position bias (``rel_pos_bias``).

  Attributes:
    grid_size: n, the side of the full token grid (N = n²).
  """
  grid_size: int = 16

  @nn.compact
  def __call__(self, x, ids_keep=None, slot_valid=None, modulation=None):
    """Self-attention over all N tokens, or over the K tokens ``ids_keep`` of the grid.

    Args:
      x: (B, N, D) tokens, or (B, K, D) gathered tokens when ``ids_keep`` is given.
      ids_keep: optional (B, K) grid index of every token of x; the bias of the pair (i, j) is
        the grid bias of (ids_keep[i], ids_keep[j]).
      slot_valid: optional (B, K) bool; keys where it is False are not attended to.
      modulation: optional post-softmax matrix (Attention Modulation Matrix), full grid only.

    Returns:
      Same shape as x.
    """
    bias = RelativePositionBias(self.grid_size, self.num_heads, extra_rows=EXTRA_TABLE_ROWS,
                                dtype=jnp.float32, name="rel_pos_bias")()  # (H, N, N)
    if ids_keep is not None:
      rows = ids_keep[:, :, None]
      cols = ids_keep[:, None, :]
      bias = bias[:, rows, cols].transpose(1, 0, 2, 3)  # (B, H, K, K)
    if slot_valid is not None:
      hidden = jnp.where(slot_valid, 0.0, HIDDEN_KEY_BIAS).astype(jnp.float32)
      bias = bias + hidden[:, None, None, :]
    return super().__call__(x, bias=bias, modulation=modulation)


class MDTBlock(nn.Module):
  """adaLN-Zero transformer block with relative position bias and an optional long skip.

  ``x = skip_linear(concat([x, skip]))`` (blocks with ``skip``), then
  ``x += gate_msa · attn(modulate(norm(x)))``, ``x += gate_mlp · mlp(modulate(norm(x)))``.
  """
  hidden_size: int
  num_heads: int
  grid_size: int
  mlp_ratio: float = 4.0
  skip: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, skip=None, ids_keep=None, slot_valid=None, modulation=None):
    """x: (B, N or K, D), c: (B, D), skip: like x (blocks with ``skip``) → like x.

    ``ids_keep``, ``slot_valid`` and ``modulation`` are passed to `MDTAttention`.
    """
    x = layers.residual_barrier(x)
    d = self.hidden_size
    if self.skip:
      if skip is None:
        raise ValueError("This MDT block has a long skip: pass skip=(B, N, D) tokens.")
      x = nn.Dense(d, dtype=self.dtype, kernel_init=layers.xavier_uniform,
                   name="skip_linear")(jnp.concatenate([x, skip], axis=-1))
    mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=layers.zeros,
                   name="adaLN_modulation_1")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = layers.modulate(layers.layer_norm(name="norm1")(x), shift_msa, scale_msa)
    attn = MDTAttention(self.num_heads, grid_size=self.grid_size, dtype=self.dtype, name="attn")
    x = x + gate_msa[:, None] * attn(h, ids_keep, slot_valid, modulation)
    h = layers.modulate(layers.layer_norm(name="norm2")(x), shift_mlp, scale_mlp)
    mlp = layers.Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")
    return x + gate_mlp[:, None] * mlp(h)


def _sincos_init(grid_size):
  """Initialiser of a learnable (1, N, D) position table: the fixed 2-D sin-cos table."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.asarray(layers.get_2d_sincos_pos_embed(shape[-1], grid_size)[None], dtype)
  return init


class MDTv2(PatchTransformer):
  """Masked Diffusion Transformer v2: ``PatchTransformer``'s fields (the official constructor's
  names; the defaults give MDTv2-XL/2 on 32×32×4 latents with 1000 classes; ``depth`` counts encoder
  + decoder blocks, the side block is extra; ``amm_blocks`` uses the whole-stack numbering of the
  module docstring) and:

  Attributes:
    mask_ratio: the smallest mask ratio of masked training (official training: 0.3; ratios
      are drawn from U(mask_ratio, mask_ratio + 0.2)); it fixes the default number of kept-token
      slots. None: a plain denoiser (masked calls raise).
    decode_layer: number of decoder blocks; the encoder has (depth − decode_layer) // 2 blocks
      in and as many out.
  """
  mask_ratio: float | None = None
  decode_layer: int = 4

  @property
  def num_tokens(self):
    return self.grid_size**2

  @property
  def half_depth(self):
    """Blocks in each encoder half: (depth − decode_layer) // 2."""
    return (self.depth - self.decode_layer) // 2

  @property
  def num_blocks(self):
    """Encoder and decoder blocks (the side block excluded)."""
    return 2 * self.half_depth + self.decode_layer

  @property
  def default_keep_slots(self):
    """The most tokens a mask of ratio >= mask_ratio keeps: floor(N · (1 − mask_ratio))."""
    if self.mask_ratio is None:
      return None
    return max(1, int(self.num_tokens * (1 - self.mask_ratio)))

  def _check_config(self):
    """Raises ValueError on an inconsistent configuration; returns the checked amm_blocks."""
    if self.input_size % self.patch_size:
      raise ValueError(f"input_size={self.input_size} is not a multiple of "
                       f"patch_size={self.patch_size}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}.")
    if not 0 <= self.decode_layer <= self.depth:
      raise ValueError(f"decode_layer={self.decode_layer} must be in [0, depth={self.depth}].")
    if self.mask_ratio is not None and not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"mask_ratio must be in [0, 1) or None, got {self.mask_ratio}.")
    return amm_lib.check_amm_blocks(self.amm_blocks, self.num_blocks, "this MDTv2")

  def _modulation(self, amm_blocks, index):
    """The AMM of block ``index`` if it is in ``amm_blocks`` (those switched on), else None."""
    if index not in amm_blocks:
      return None
    return amm_lib.modulation_matrix(self.grid_size)

  @nn.compact
  def __call__(self, x, t, y, train=False, force_drop_ids=None, amm=False, mask=None,
               keep_slots=None):
    """Predicts ε (and the variance interpolation when ``learn_sigma``).

    Args:
      x: (B, H, W, C) noisy latents, H = W = input_size, C = in_channels.
      t: (B,) timesteps (0..999 for the usual 1000-step DDPM time).
      y: (B,) int class labels in [0, num_classes]; num_classes is the null class.
      train: enables label dropout (needs ``rngs={"dropout": key}`` when
        class_dropout_prob > 0 and no ``force_drop_ids``).
      force_drop_ids: optional (B,) ints; 1 replaces the label by the null class.
      amm: apply the Attention Modulation Matrix in ``amm_blocks`` (inference only; not with
        ``mask``).
      mask: optional (B, N) bool token mask, True = dropped, N = (input_size / patch_size)²
        in row-major patch order: the masked-training pass (official ``enable_mask=True``).
        The encoder sees only the kept tokens; the side-interpolater fills the dropped ones.
      keep_slots: static number K of kept-token slots in the masked pass (default:
        ``floor(N · (1 − mask_ratio))``). The encoder runs on (B, K) tokens: kept tokens
        first, slots beyond a row's kept count hold dropped tokens that no token attends
        to. At most K tokens per row are kept; a surplus counts as dropped.

    Returns:
      (B, H, W, 2C) when learn_sigma else (B, H, W, C).
    """
    configured_amm_blocks = self._check_config()
    amm_blocks = configured_amm_blocks if amm else ()
    if amm and not amm_blocks:
      raise ValueError("amm=True but this MDTv2 has no amm_blocks: create it with e.g. "
                       "amm_blocks=jdpm.models.amm.MDTV2_S_AMM_BLOCKS.")
    t, y = jnp.asarray(t), jnp.asarray(y)
    check_input_shapes(x, t, y, input_size=self.input_size, in_channels=self.in_channels)
    d, n, grid = self.hidden_size, self.num_tokens, self.grid_size

    tokens = layers.PatchEmbed(self.patch_size, d, dtype=self.dtype, name="x_embedder")(x)
    pos_embed = self.param("pos_embed", _sincos_init(grid), (1, n, d), jnp.float32)
    decoder_pos_embed = self.param("decoder_pos_embed", _sincos_init(grid), (1, n, d),
                                   jnp.float32)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, d), jnp.float32)
    tokens = tokens + pos_embed.astype(tokens.dtype)
    t_emb = layers.TimestepEmbedder(d, dtype=self.dtype, name="t_embedder")(t)
    y_emb = layers.LabelEmbedder(self.num_classes, d, self.class_dropout_prob, dtype=self.dtype,
                                 name="y_embedder")(y, train, force_drop_ids)
    c = t_emb + y_emb

    ids_keep = slot_valid = kept = None
    h = tokens
    if mask is not None:
      if self.mask_ratio is None and keep_slots is None:
        raise ValueError("A masked call needs the number of kept-token slots: create the model "
                         "with mask_ratio (official training: 0.3) or pass keep_slots.")
      if amm:
        raise ValueError("amm=True is an inference-time modulation; it cannot be combined "
                         "with a training mask.")
      mask = jnp.asarray(mask)
      if mask.shape != (x.shape[0], n):
        raise ValueError(f"mask must have shape ({x.shape[0]}, {n}) (batch, tokens), got "
                         f"{mask.shape}.")
      ids_keep, slot_valid, kept = kept_token_slots(mask, keep_slots or self.default_keep_slots)
      h = jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)  # (B, K, D)

    block_cls = nn.remat(MDTBlock) if self.remat else MDTBlock
    make = lambda name, skip: block_cls(d, self.num_heads, grid, self.mlp_ratio, skip=skip,
                                        dtype=self.dtype, name=name)
    skips = []
    for i in range(self.half_depth):
      h = make(f"en_inblocks_{i}", False)(h, c, None, ids_keep, slot_valid,
                                          self._modulation(amm_blocks, i))
      skips.append(h)
    for i in range(self.half_depth):
      h = make(f"en_outblocks_{i}", True)(h, c, skips.pop(), ids_keep, slot_valid,
                                          self._modulation(amm_blocks, self.half_depth + i))

    side_blocks = [make("sideblocks_0", False)]
    if mask is not None:
      h = self._side_interpolate(h, c, ids_keep, kept, mask_token, decoder_pos_embed,
                                 side_blocks)
    else:
      if self.is_initializing():
        # Create the side-interpolater's parameters, which only masked calls use.
        self._side_interpolate(h, c, None, None, mask_token, decoder_pos_embed, side_blocks)
      h = h + decoder_pos_embed.astype(h.dtype)

    for i in range(self.decode_layer):
      h = make(f"de_blocks_{i}", True)(h, c, tokens, None, None,
                                       self._modulation(amm_blocks, 2 * self.half_depth + i))
    h = FinalLayer(d, self.patch_size, self.out_channels, dtype=self.dtype,
                   name="final_layer")(h, c)
    return layers.unpatchify(h, self.patch_size, self.out_channels)

  def _side_interpolate(self, h, c, ids_keep, kept, mask_token, decoder_pos_embed, side_blocks):
    """Side-interpolater: encoder tokens back on the full grid, mask tokens in the gaps.

    Args:
      h: (B, K, D) encoder outputs in the slots of ``ids_keep`` (or (B, N, D) with
        ``ids_keep=None``, only to create parameters).
      c: (B, D) conditioning.
      ids_keep, kept: from `kept_token_slots`.

    Returns:
      (B, N, D): kept positions carry ``encoder output + decoder_pos_embed``, dropped positions
      the side blocks' prediction from ``mask_token + decoder_pos_embed`` and the context.
    """
    if ids_keep is None:
      full, kept = h, jnp.ones(h.shape[:2], bool)
    else:
      batch, slots, d = h.shape
      n = kept.shape[1]
      # Scatter the valid slots back to their grid positions; padding slots land on dropped
      # positions, which `kept` overwrites with the mask token just below.
      full = jnp.zeros((batch, n, d), h.dtype)
      full = full.at[jnp.arange(batch)[:, None], ids_keep].set(h)
      del slots
    full = jnp.where(kept[:, :, None], full, mask_token.astype(h.dtype))
    full = full + decoder_pos_embed.astype(h.dtype)
    side = full
    for block in side_blocks:
      side = block(side, c)
    # Side-block output only where a token was dropped; kept tokens pass unchanged.
    return jnp.where(kept[:, :, None], full, side)

  def forward_with_cfg(self, x, t, y, cfg_scale, diffusion_steps=1000, scale_pow=4.0,
                       guided_channels=3, amm=False):
    """Classifier-free guided forward with MDTv2's power-cosine scale schedule.

    As the official ``forward_with_cfg``: only the first half of ``x`` is read; it is duplicated
    and run with the full ``t`` and ``y`` (conditional labels first, null labels second). The
    first ``guided_channels`` output channels become ``u + s_i·(c − u)`` in both halves, with the
    per-sample scale ``s_i = power_cosine_guidance_scale(cfg_scale, t[i])`` of the first half;
    the other channels pass through.

    Args:
      x: (2B, H, W, C); rows B..2B-1 are ignored.
      t: (2B,) timesteps of the ``diffusion_steps``-step process.
      y: (2B,) labels, typically [y, null, ..., null].
      cfg_scale: guidance scale at t = 0 (official sampling: 3.8 with scale_pow 4; the released
        inference script: 4.0 with scale_pow 0.01).
      diffusion_steps, scale_pow: the schedule (see `power_cosine_guidance_scale`).
      guided_channels: number of leading output channels to guide (official: 3).
      amm: apply the Attention Modulation Matrix in ``amm_blocks``.

    Returns:
      (2B, H, W, out_channels).

    Use as ``model.apply(variables, x, t, y, 3.8, method="forward_with_cfg")``.
    """
    if x.shape[0] % 2:
      raise ValueError(f"forward_with_cfg needs an even batch, got x of shape {tuple(x.shape)}.")
    half = x[: x.shape[0] // 2]
    model_out = self(jnp.concatenate([half, half], axis=0), t, y, amm=amm)
    scale = power_cosine_guidance_scale(cfg_scale, t, diffusion_steps, scale_pow)
    scale = scale[: half.shape[0], None, None, None]
    return layers.glide_guidance(model_out, scale, guided_channels)


# Official MDTv2 configurations with the decoder depth of the released training scripts
# (S: 6, XL: 4; B: 4, the code's default). MDTv2-S/2 lists block 8 as its AMM block, the
# placement of the EDT authors' MDTv2-S (400k steps) AMM model.
PRESETS = {
    "MDTv2-S/2": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2, decode_layer=6,
                      amm_blocks=amm_lib.MDTV2_S_AMM_BLOCKS),
    "MDTv2-B/2": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2, decode_layer=4),
    "MDTv2-L/2": dict(hidden_size=1024, depth=24, num_heads=16, patch_size=2, decode_layer=4),
    "MDTv2-XL/2": dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2, decode_layer=4),
}

# Family defaults: ImageNet-256 latents, learned sigma, and the official training mask ratio.
DEFAULTS = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True, mask_ratio=0.3)


__all__ = ["DEFAULTS", "MDTAttention", "MDTBlock", "MDTv2", "PRESETS", "kept_token_slots",
           "power_cosine_guidance_scale"]
