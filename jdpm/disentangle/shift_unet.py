"""The DisDiff UNet: a frozen ADM-style denoiser plus a trainable decoder of per-factor gradient fields.

Layout of the official `openaimodel_shift.UNetModel` (the ADM/LDM UNet: residual blocks with time
scale-shift norm, resblock up/down sampling, legacy QKV attention), NHWC:

- frozen: `time_embed`, `input_conv` + `input_blocks_*` (encoder path, gives the skip features),
  `middle_block`, `output_blocks_*`, `out_*` -> eps_theta(x_t, t);
- trainable: `shift_middle_block`, `shift_output_blocks_*`, `shift_out_*` (same shapes as the middle
  and output blocks, but every residual block has a second scale-shift from the factor condition),
  `repre_embed` (factor code -> condition), `part_latents` (a D/2 x D/2 matrix W whose orthogonal
  exponential gives one embedding row per factor) and `part_emb` (that row -> time-embedding shift).

For factor c the decoder runs from the frozen encoder's last feature map h0 (not from the frozen middle
block's output), with time embedding emb(t) + part_emb(P[c]) and condition repre_embed(z_c), where P is
the orthogonal factor matrix. Its output G_c is one sub-gradient field; the model returns eps_theta,
sum_c G_c and the G_c themselves.

Why a separate module from `jdpm.models.unet`: that family is diffusers' UNet2DModel layout (different
block structure, attention and up/down sampling), while DisDiff's decoder copies the ADM blocks and feeds
them the ADM skip features; the official reference tensors are of this layout. The pieces that are the
same (GroupNorm, convolutions, sinusoidal features, the time MLP) are reused from `jdpm.models.unet`.

Frozen means: the frozen path runs under `stop_gradient`, so no gradient reaches those parameters even
when the caller differentiates the whole tree (as the official code runs it under `no_grad`).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdpm.models.unet import TimestepEmbedding, conv, group_norm, timestep_features

# Regular expressions (over '/'-joined parameter paths) of the frozen pretrained denoiser.
FROZEN_UNET_PATTERNS = (r"unet/(time_embed|input_conv|input_blocks_\d+|middle_block|output_blocks_\d+|out_norm"
                        r"|out_conv)/.*",)


def _norm(groups, name):
  return group_norm(groups, 1e-5, jnp.float32, name)


def expm(a, max_squarings=20, taylor_order=40):
  """Matrix exponential by scaling and squaring of a Taylor polynomial, differentiable and cheap to compile.

  (jax.scipy.linalg.expm's Pade branches are slow to compile under `grad`.) The matrix is scaled by 2^-s so
  its 1-norm is at most 4, where the order-40 Taylor remainder is far below float32 rounding (few squarings
  keep the rounding error low: 6e-7 against float64 scipy on the reference matrix), then squared s times
  (s <= max_squarings; a loop with a fixed trip count, so reverse-mode works).
  """
  norm = jnp.max(jnp.sum(jnp.abs(a), axis=0))
  s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / 4.0)), 0, max_squarings)
  x = a / 2.0 ** s
  eye = jnp.eye(a.shape[0], dtype=a.dtype)
  result = eye
  for k in range(taylor_order, 0, -1):  # Horner: I + x/1 (I + x/2 (I + ...))
    result = eye + x @ result / k
  return jax.lax.fori_loop(0, max_squarings, lambda i, r: jnp.where(i < s, r @ r, r), result)


def orthogonal_factor_matrix(w):
  """The official orthogonal factor matrix from W (D/2, D/2).

  The official Pade-13 matrix exponential solves with numerator and denominator exchanged, so it
  returns expm(W^T - W) = expm(W - W^T)^T rather than expm(W - W^T); this is that matrix (also orthogonal).
  """
  return expm(w.T - w)


class ResBlock(nn.Module):
  """ADM residual block with scale-shift norm; `conditioned` adds the second (factor) scale-shift.

  x: (B, H, W, C_in), emb: (B, D) time embedding, cond: (B, D) factor condition or None.
  """
  out_channels: int
  groups: int = 32
  up: bool = False
  down: bool = False
  conditioned: bool = False

  @nn.compact
  def __call__(self, x, emb, cond=None):
    h = nn.silu(_norm(self.groups, "in_norm")(x))
    if self.up or self.down:
      resample = _upsample if self.up else _downsample
      h, x = resample(h), resample(x)
    h = conv(self.out_channels, 3, jnp.float32, "in_conv")(h)
    scale, shift = jnp.split(nn.Dense(2 * self.out_channels, name="emb")(nn.silu(emb)), 2, axis=-1)
    h = _norm(self.groups, "out_norm")(h) * (1 + scale[:, None, None]) + shift[:, None, None]
    if self.conditioned:
      c_scale, c_shift = jnp.split(nn.Dense(2 * self.out_channels, name="cond_emb")(nn.silu(cond)), 2, axis=-1)
      h = h * (1 + c_scale[:, None, None]) + c_shift[:, None, None]
    h = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=nn.initializers.zeros, name="out_conv")(nn.silu(h))
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, jnp.float32, "skip")(x)
    return x + h


def _downsample(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x):
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class AttentionBlock(nn.Module):
  """ADM self-attention with the legacy head layout (heads split before q, k, v). x: (B, H, W, C)."""
  num_heads: int
  groups: int = 32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    tokens = x.reshape(b, hh * ww, c)
    qkv = nn.Dense(3 * c, name="qkv")(_norm(self.groups, "norm")(tokens))
    ch = c // self.num_heads
    qkv = qkv.reshape(b, hh * ww, self.num_heads, 3, ch)
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    q, k, v = qkv[..., 0, :] * scale, qkv[..., 1, :] * scale, qkv[..., 2, :]
    weight = jax.nn.softmax(jnp.einsum("bthc,bshc->bhts", q, k), axis=-1)
    a = jnp.einsum("bhts,bshc->bthc", weight, v).reshape(b, hh * ww, c)
    out = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(a)
    return (tokens + out).reshape(b, hh, ww, c)


class _Stage(nn.Module):
  """One TimestepEmbedSequential: a residual block `res`, optionally attention `attn`, then optionally a
  second residual block `res2` (middle block) or a resampling one `resample`."""
  out_channels: int
  attention_heads: int = 0  # 0: no attention
  resample: str = ""  # "", "up" or "down"
  groups: int = 32
  conditioned: bool = False
  resample_only: bool = False  # a stage that is only the down-sampling residual block
  second_res: bool = False

  @nn.compact
  def __call__(self, h, emb, cond=None):
    if not self.resample_only:
      h = ResBlock(self.out_channels, self.groups, conditioned=self.conditioned, name="res")(h, emb, cond)
      if self.attention_heads:
        h = AttentionBlock(self.attention_heads, self.groups, name="attn")(h)
    if self.second_res:
      h = ResBlock(self.out_channels, self.groups, conditioned=self.conditioned, name="res2")(h, emb, cond)
    if self.resample:
      h = ResBlock(self.out_channels, self.groups, up=self.resample == "up", down=self.resample == "down",
                   conditioned=self.conditioned, name="resample")(h, emb, cond)
    return h


class ShiftUNet(nn.Module):
  """DisDiff's UNet (official `openaimodel_shift.UNetModel` with seprate_decoder, orth_emb, scale-shift
  norm and resblock up/down), NHWC.

  Attributes follow the official constructor: model_channels (time-embedding width D = 4x), channel_mult,
  num_res_blocks, attention_resolutions (down-sampling factors with attention), num_heads, latent_unit
  (number of factors N), repre_emb_channels (code dimension per factor).
  """
  in_channels: int = 3
  out_channels: int = 3
  model_channels: int = 32
  channel_mult: Sequence[int] = (1, 1)
  num_res_blocks: int = 1
  attention_resolutions: Sequence[int] = (2,)
  num_heads: int = 4
  latent_unit: int = 6
  repre_emb_channels: int = 32
  norm_groups: int = 32

  def setup(self):
    mc, d = self.model_channels, 4 * self.model_channels
    self.time_embed = TimestepEmbedding(d)
    self.repre_embed = nn.Dense(d)
    self.part_latents = self.param("part_latents", nn.initializers.normal(1.0), (d // 2, d // 2))
    self.part_emb = nn.Dense(d)
    self.input_conv = nn.Conv(mc, (3, 3), padding=1)
    heads = lambda ds: self.num_heads if ds in self.attention_resolutions else 0
    down, skip_channels, ds = [], [mc], 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        down.append(_Stage(mult * mc, heads(ds), groups=self.norm_groups))
        skip_channels.append(mult * mc)
      if level != len(self.channel_mult) - 1:
        down.append(_Stage(mult * mc, resample="down", groups=self.norm_groups, resample_only=True))
        skip_channels.append(mult * mc)
        ds *= 2
    self.input_blocks = down
    ch = self.channel_mult[-1] * mc
    self.middle_block = _Stage(ch, self.num_heads, groups=self.norm_groups, second_res=True)
    self.shift_middle_block = _Stage(ch, self.num_heads, groups=self.norm_groups, conditioned=True, second_res=True)
    up_frozen, up_shift = [], []
    for level, mult in list(enumerate(self.channel_mult))[::-1]:
      for i in range(self.num_res_blocks + 1):
        resample = "up" if level and i == self.num_res_blocks else ""
        up_frozen.append(_Stage(mc * mult, heads(ds), resample, self.norm_groups))
        up_shift.append(_Stage(mc * mult, heads(ds), resample, self.norm_groups, conditioned=True))
        if resample:
          ds //= 2
    self.output_blocks, self.shift_output_blocks = up_frozen, up_shift
    norm = lambda: nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-5, use_fast_variance=False)
    self.out_norm, self.shift_out_norm = norm(), norm()
    zero = nn.initializers.zeros
    self.out_conv = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero)
    self.shift_out_conv = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero)

  def factor_embeddings(self):
    """The orthogonal factor matrix P (D/2, D/2); factor c uses row c."""
    return orthogonal_factor_matrix(self.part_latents)

  def _encode(self, x, t):
    emb = self.time_embed(timestep_features(t, self.model_channels))
    hs = [self.input_conv(x)]
    for stage in self.input_blocks:
      hs.append(stage(hs[-1], emb))
    return emb, hs

  def _decode(self, h, hs, emb, stages, norm, out_conv, cond=None):
    for j, stage in enumerate(stages):
      h = stage(jnp.concatenate([h, hs[-j - 1]], axis=-1), emb, cond)
    return out_conv(nn.silu(norm(h)))

  def eps(self, x, t):
    """The pretrained denoiser alone (trainable here: the pre-training stage). x (B,H,W,C), t (B,) int."""
    emb, hs = self._encode(x, t)
    h = self.middle_block(hs[-1], emb)
    return self._decode(h, hs, emb, self.output_blocks, self.out_norm, self.out_conv)

  def __call__(self, x, t, z, sampled_concept=None):
    """x (B,H,W,C) noisy input, t (B,) int timesteps, z (B, N*repre_emb_channels) factor codes.

    Returns a dict: "pred" eps_theta (B,H,W,C) (no gradient), "G" (N,B,H,W,C) sub-gradient fields,
    "out_grad" sum_c G_c, and, when `sampled_concept` (B,) int is given, "sub_grad" = G_{c_b}[b].
    """
    stop = jax.lax.stop_gradient
    emb, hs = self._encode(x, t)
    emb, hs = stop(emb), [stop(h) for h in hs]
    pred = stop(self._decode(self.middle_block(hs[-1], emb), hs, emb, self.output_blocks, self.out_norm,
                             self.out_conv))
    n, b = self.latent_unit, x.shape[0]
    factor_rows = self.factor_embeddings()[:n]
    # All N factors in one decoder pass: factor c of example b is row c*B + b (shared weights, per-sample
    # norms, so this equals N separate passes).
    cond = self.repre_embed(z.reshape(b, n, -1).transpose(1, 0, 2).reshape(n * b, -1))
    shifted = (emb[None] + self.part_emb(factor_rows)[:, None]).reshape(n * b, -1)
    tile = lambda a: jnp.broadcast_to(a[None], (n,) + a.shape).reshape((n * b,) + a.shape[1:])
    hs_n = [tile(h) for h in hs]
    h = self.shift_middle_block(hs_n[-1], shifted, cond)
    fields = self._decode(h, hs_n, shifted, self.shift_output_blocks, self.shift_out_norm, self.shift_out_conv, cond)
    fields = fields.reshape((n, b) + fields.shape[1:])
    out = {"pred": pred, "G": fields, "out_grad": fields.sum(0)}
    if sampled_concept is not None:
      out["sub_grad"] = fields[sampled_concept, jnp.arange(x.shape[0])]
    return out
