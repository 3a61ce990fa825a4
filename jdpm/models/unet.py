"""Convolutional UNet denoisers as diffusers builds them: ``UNet2DModel`` and ``UNet2DConditionModel``.

The ADM/LDM UNet: ResNet blocks with a timestep embedding (added, or as a GroupNorm scale-shift),
down blocks whose outputs are concatenated into the up blocks (skip connections), a mid block,
self-attention blocks (``AttnDownBlock2D`` ...) and transformer blocks with cross-attention to a
context sequence (``CrossAttnDownBlock2D`` ...: Stable Diffusion 1.x/2.x). Images are NHWC.

Attribute names and meanings are those of the diffusers config, including its historical quirk:
in ``UNet2DConditionModel`` the config's ``attention_head_dim`` is the number of heads of the
transformer blocks (``num_attention_heads`` overrides it), while for the self-attention blocks
(``AttnDownBlock2D``, ``UNet2DModel``'s mid block) it is the width of one head. Submodule names
follow the diffusers state dict (``down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k``
becomes ``down_blocks_0/attentions_1/transformer_blocks_0/attn2/to_k``), so
``jdpm.convert.from_diffusers`` is a rename.

Cross-attention analysis (apply-time, the parameter tree is unchanged):

- ``capture_cross_attention=True`` with ``mutable=["intermediates"]`` sows, for every
  cross-attention layer, its pre-softmax ``logits`` and its ``probs``, each (B, heads, H·W, L);
  ``cross_attention_maps(state)`` lists them by diffusers layer name.
- ``substitute=TokenSubstitution(context, positions, keys=True, values=False)`` replaces, in every
  cross-attention layer, the keys and/or values at the chosen token positions by those computed
  from another context.
"""

import math
from typing import Any, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdpm.models import layers

Dtype = Any

# diffusers' activation names (``act_fn`` and friends). "swish" is SiLU.
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
               "gelu": lambda x: nn.gelu(x, approximate=False), "relu": nn.relu}

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2D", "UNetMidBlock2DCrossAttn", None)
# Transformer2DModel's GroupNorm eps and BasicTransformerBlock's LayerNorm eps are fixed in
# diffusers (they do not follow the UNet's norm_eps).
TRANSFORMER_GROUP_NORM_EPS = 1e-6
TRANSFORMER_LAYER_NORM_EPS = 1e-5
# diffusers turns a 0/1 attention mask into this additive logit bias.
MASK_BIAS = -10000.0


def activation(name):
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def group_norm(groups, eps, dtype, name):
  """GroupNorm with the two-pass variance (as PyTorch)."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def conv(features, kernel, dtype, name, stride=1, padding=None):
  """Square convolution; default padding (kernel - 1) / 2 keeps the size (PyTorch's ``padding``)."""
  padding = (kernel - 1) // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=padding, dtype=dtype, name=name)


def timestep_features(t, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000.0):
  """diffusers' ``get_timestep_embedding``: (B,) timesteps → (B, dim) sinusoidal features.

  Frequencies ``exp(-ln(max_period) · i / (dim/2 − freq_shift))``; ``[cos, sin]`` halves when
  ``flip_sin_to_cos`` else ``[sin, cos]``; an odd ``dim`` gets a trailing zero column.
  """
  half = dim // 2
  # Same float32 operation order as the reference so the features agree to rounding.
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = jnp.asarray(t).astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  """Linear → act → Linear (diffusers' ``TimestepEmbedding``), optional post activation."""
  features: int
  act_fn: str = "silu"
  post_act_fn: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, in) → (B, features)."""
    x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
    x = nn.Dense(self.features, dtype=self.dtype, name="linear_2")(activation(self.act_fn)(x))
    return x if self.post_act_fn is None else activation(self.post_act_fn)(x)


class ResnetBlock2D(nn.Module):
  """GroupNorm → act → conv3×3 (+ timestep projection) → GroupNorm → act → conv3×3, plus shortcut.

  ``time_embedding_norm="default"`` adds the projected embedding after conv1;
  ``"scale_shift"`` applies ``norm2(h) · (1 + scale) + shift``. The output is
  ``(shortcut + h) / output_scale_factor``.
  """
  features: int
  groups: int
  eps: float
  act_fn: str = "silu"
  time_embedding_norm: str = "default"
  skip_time_act: bool = False
  output_scale_factor: float = 1.0
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train=False):
    """x: (B, H, W, C_in), temb: (B, T) → (B, H, W, features)."""
    act = activation(self.act_fn)
    h = act(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
    h = conv(self.features, 3, self.dtype, "conv1")(h)
    if self.time_embedding_norm not in ("default", "scale_shift"):
      raise ValueError(f"Unknown resnet_time_scale_shift {self.time_embedding_norm!r}; "
                       "supported: 'default', 'scale_shift'.")
    scale_shift = self.time_embedding_norm == "scale_shift"
    emb = temb if self.skip_time_act else act(temb)
    emb = nn.Dense(self.features * (2 if scale_shift else 1), dtype=self.dtype,
                   name="time_emb_proj")(emb)[:, None, None, :]
    if scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = group_norm(self.groups, self.eps, self.dtype, "norm2")(h) * (1 + scale) + shift
    else:
      h = group_norm(self.groups, self.eps, self.dtype, "norm2")(h + emb)
    h = nn.Dropout(self.dropout, deterministic=not train)(act(h))
    h = conv(self.features, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, self.dtype, "conv_shortcut")(x)
    return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
  """Stride-2 conv3×3; ``padding=0`` pads one row/column at the bottom/right first (as diffusers)."""
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, C) (for padding 1)."""
    padding = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
    return conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=padding)(x)


def upsample_nearest(x, size=None):
  """Nearest-neighbour upsampling of NHWC x to ``size`` = (H', W') (default 2×), as PyTorch's
  ``interpolate(mode="nearest")``: output index i reads input index ⌊i · H / H'⌋."""
  height, width = x.shape[1:3]
  if size is None or tuple(size) == (2 * height, 2 * width):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rows = np.floor(np.arange(size[0]) * (height / size[0])).astype(np.int32)
  cols = np.floor(np.arange(size[1]) * (width / size[1])).astype(np.int32)
  return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
  """Nearest-neighbour upsampling (2×, or to the size of the next skip), then conv3×3."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, size=None):
    return conv(x.shape[-1], 3, self.dtype, "conv")(upsample_nearest(x, size))


@flax.struct.dataclass
class TokenSubstitution:
  """Replaces keys and/or values of chosen context tokens in every cross-attention layer.

  A pytree (context and positions are leaves, the two switches static), so it can be an argument of
  a jitted function.

  Attributes:
    context: (B, L, D) the other context; its keys/values are computed by each layer's own
      ``to_k``/``to_v`` projections.
    positions: which of the L token positions to replace: a bool mask (L,) or (B, L), or integer
      indices (K,).
    keys: replace the keys at those positions (changes where the image attends).
    values: replace the values at those positions (changes what is read there).
  """
  context: Any
  positions: Any
  keys: bool = flax.struct.field(pytree_node=False, default=True)
  values: bool = flax.struct.field(pytree_node=False, default=False)

  def mask(self, length):
    """(B or 1, L) bool mask of the substituted positions."""
    positions = jnp.asarray(self.positions)
    if positions.dtype != jnp.bool_:
      positions = jnp.zeros((length,), bool).at[positions].set(True)
    return positions.reshape((-1, length))


def attention_weights(q, k, bias=None):
  """Pre-softmax logits and probabilities, each (B, heads, N, L), from q (B, N, H, d), k (B, L, H, d)."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * q.shape[-1]**-0.5, k).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  return logits, jax.nn.softmax(logits, axis=-1)


class Attention(nn.Module):
  """diffusers' ``Attention`` for the UNet: multi-head attention with separate q/k/v projections.

  Two uses: inside transformer blocks (``attn1`` self-attention, ``attn2`` cross-attention to a
  context; no q/k/v bias), and as the spatial self-attention block of ``AttnDownBlock2D`` and
  ``UNetMidBlock2D`` (``spatial=True``: GroupNorm first, biases, residual added, output divided by
  ``rescale_output_factor``).

  On GPU/TPU the plain path uses ``jax.nn.dot_product_attention`` (fused kernels); on CPU, and
  when capturing or substituting, the softmax is explicit (logits and softmax in float32).
  """
  heads: int
  head_dim: int
  bias: bool = False
  spatial: bool = False
  groups: int | None = None
  eps: float = 1e-5
  rescale_output_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, context_bias=None, capture=False, substitute=None):
    """Attention of x over itself (``context=None``) or over ``context``.

    Args:
      x: (B, N, C) tokens, or (B, H, W, C) when ``spatial``.
      context: optional (B, L, D) sequence to attend to (cross-attention).
      context_bias: optional additive logit bias broadcastable to (B, 1, 1, L) (a context mask).
      capture: sow ``logits`` and ``probs`` (B, heads, N, L) into "intermediates" (cross-attention).
      substitute: optional ``TokenSubstitution`` (cross-attention only).
    Returns:
      same shape as x.
    """
    residual = x
    if self.spatial:
      b, height, width, c = x.shape
      if self.groups is not None:
        x = group_norm(self.groups, self.eps, self.dtype, "group_norm")(x)
      x = x.reshape(b, height * width, c)
    cross = context is not None
    source = context if cross else x
    inner = self.heads * self.head_dim
    dense = lambda name, use_bias=self.bias: nn.Dense(inner, use_bias=use_bias, dtype=self.dtype,
                                                      name=name)
    to_k, to_v = dense("to_k"), dense("to_v")
    split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, self.head_dim)
    q, k, v = split(dense("to_q")(x)), split(to_k(source)), split(to_v(source))
    if substitute is not None and cross:
      mask = substitute.mask(k.shape[1])[:, :, None, None]
      if substitute.keys:
        k = jnp.where(mask, split(to_k(substitute.context)), k)
      if substitute.values:
        v = jnp.where(mask, split(to_v(substitute.context)), v)
    logit_bias = context_bias if cross else None
    if capture and cross:
      logits, probs = attention_weights(q, k, logit_bias)
      self.sow("intermediates", "logits", logits)
      self.sow("intermediates", "probs", probs)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    else:
      fused_bias = None if logit_bias is None else logit_bias.astype(q.dtype)
      out = jax.lax.platform_dependent(
          cpu=lambda: layers.explicit_attention(q, k, v, logit_bias),
          default=lambda: jax.nn.dot_product_attention(q, k, v, bias=fused_bias))
    out = nn.Dense(x.shape[-1] if self.spatial else residual.shape[-1], dtype=self.dtype,
                   name="to_out_0")(out.reshape(out.shape[0], out.shape[1], inner))
    if self.spatial:
      out = out.reshape(residual.shape) + residual
      out = out / self.rescale_output_factor
    return out


class GEGLU(nn.Module):
  """``proj`` (D → 2·features) split into (h, gate); returns ``h · gelu(gate)`` (exact GELU)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, gate = jnp.split(nn.Dense(2 * self.features, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """GEGLU feed-forward: ``net_0/proj`` (D → 2·4D), ``h · gelu(gate)`` (exact GELU), ``net_2``."""
  mult: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    inner = x.shape[-1] * self.mult
    h = GEGLU(inner, self.dtype, name="net_0")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  """Pre-LN block: self-attention, cross-attention to the context, GEGLU feed-forward."""
  heads: int
  head_dim: int
  only_cross_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias=None, capture=False, substitute=None):
    """x: (B, N, C), context: (B, L, D) → (B, N, C)."""
    norm = lambda name: nn.LayerNorm(epsilon=TRANSFORMER_LAYER_NORM_EPS, use_fast_variance=False,
                                     dtype=self.dtype, name=name)
    attn = lambda name: Attention(self.heads, self.head_dim, dtype=self.dtype, name=name)
    kw = dict(context_bias=context_bias, capture=capture, substitute=substitute)
    h = norm("norm1")(x)
    x = x + (attn("attn1")(h, context, **kw) if self.only_cross_attention else attn("attn1")(h))
    x = x + attn("attn2")(norm("norm2")(x), context, **kw)
    return x + FeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x))


class Transformer2DModel(nn.Module):
  """GroupNorm → proj_in (1×1 conv, or Linear with ``use_linear_projection``) → transformer
  blocks over the H·W tokens → proj_out → + input."""
  heads: int
  head_dim: int
  groups: int
  num_layers: int = 1
  use_linear_projection: bool = False
  only_cross_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, **kw):
    """x: (B, H, W, C), context: (B, L, D) → (B, H, W, C)."""
    b, height, width, c = x.shape
    inner = self.heads * self.head_dim
    h = group_norm(self.groups, TRANSFORMER_GROUP_NORM_EPS, self.dtype, "norm")(x)
    # A 1×1 conv and a Linear are the same map; only the parameter shapes differ.
    project = lambda features, name: (nn.Dense(features, dtype=self.dtype, name=name)
                                      if self.use_linear_projection
                                      else conv(features, 1, self.dtype, name))
    h = project(inner, "proj_in")(h).reshape(b, height * width, inner)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.heads, self.head_dim, self.only_cross_attention, self.dtype,
                                name=f"transformer_blocks_{i}")(h, context, **kw)
    h = project(c, "proj_out")(h.reshape(b, height, width, inner))
    return h + x


class _BlockConfig(NamedTuple):
  """What a down, mid or up block needs from the UNet config (resolved per block)."""
  groups: int
  eps: float
  act_fn: str
  time_embedding_norm: str
  skip_time_act: bool
  dropout: float
  heads: int | None = None           # transformer heads
  head_dim: int | None = None        # spatial self-attention head width
  transformer_layers: Sequence[int] = (1,)
  use_linear_projection: bool = False
  only_cross_attention: bool = False
  output_scale_factor: float = 1.0
  attn_groups: int | None = None     # mid-block spatial attention GroupNorm groups


class UNetBlock(nn.Module):
  """A down, up or mid block: resnets interleaved with attention, then a resampler.

  kind: "down" (resnets_i, attentions_i, downsamplers_0), "up" (each resnet first concatenates
  the last remaining skip; upsamplers_0) or "mid" (resnets_0, then attentions_i, resnets_{i+1}).
  attention: None, "spatial" (self-attention block) or "cross" (Transformer2DModel).
  """
  kind: str
  features: int
  num_layers: int
  attention: str | None
  config: _BlockConfig
  resample: bool = False
  downsample_padding: int = 1
  dtype: Dtype = jnp.float32

  def resnet(self, i):
    c = self.config
    return ResnetBlock2D(self.features, c.groups, c.eps, c.act_fn, c.time_embedding_norm,
                         c.skip_time_act, c.output_scale_factor, c.dropout, self.dtype,
                         name=f"resnets_{i}")

  def attend(self, i, x, context, kw):
    c = self.config
    if self.attention == "spatial":
      head_dim = c.head_dim or self.features
      groups = c.attn_groups if self.kind == "mid" else c.groups
      return Attention(self.features // head_dim, head_dim, bias=True, spatial=True, groups=groups,
                       eps=c.eps, rescale_output_factor=c.output_scale_factor, dtype=self.dtype,
                       name=f"attentions_{i}")(x)
    if context is None:
      raise ValueError("This UNet has cross-attention blocks: pass context=(B, L, D), e.g. the text "
                       "encoder's last_hidden_state.")
    return Transformer2DModel(c.heads, self.features // c.heads, c.groups, c.transformer_layers[i],
                              c.use_linear_projection, c.only_cross_attention, self.dtype,
                              name=f"attentions_{i}")(x, context, **kw)

  @nn.compact
  def __call__(self, x, temb, context=None, skips=None, upsample_size=None, train=False, **kw):
    """Returns (x, outputs): outputs are the skip tensors of a down block (else ())."""
    outputs = []
    if self.kind == "mid":
      x = self.resnet(0)(x, temb, train)
      for i in range(self.num_layers):
        if self.attention is not None:
          x = self.attend(i, x, context, kw)
        x = self.resnet(i + 1)(x, temb, train)
      return x, ()
    for i in range(self.num_layers):
      if self.kind == "up":
        x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = self.resnet(i)(x, temb, train)
      if self.attention is not None:
        x = self.attend(i, x, context, kw)
      outputs.append(x)
    if self.resample and self.kind == "down":
      x = Downsample2D(self.downsample_padding, self.dtype, name="downsamplers_0")(x)
      outputs.append(x)
    elif self.resample:
      x = Upsample2D(self.dtype, name="upsamplers_0")(x, upsample_size)
    return x, tuple(outputs)


def _per_block(value, n, name):
  """An int/bool (or None) broadcast to n blocks, or a list of n values."""
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f"{name} has {len(value)} entries for {n} blocks.")
    return tuple(value)
  return (value,) * n


class UNet2DConditionModel(nn.Module):
  """diffusers' ``UNet2DConditionModel`` (Stable Diffusion 1.x/2.x) in Flax, NHWC.

  Attributes follow the diffusers config (see its documentation); unsupported options raise a
  ValueError at the first call. ``dtype`` is the computation dtype (parameters stay float32).

  ``model.apply(variables, x, t, context=None, y=None)``: x (B, H, W, in_channels), t (B,) (or a
  scalar) timesteps in training steps, context (B, L, cross_attention_dim), y class labels (or a
  (B, P) vector for ``class_embed_type="projection"``) → (B, H, W, out_channels).
  """
  sample_size: int | None = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
  up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                   "CrossAttnUpBlock2D")
  only_cross_attention: bool | Sequence[bool] = False
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  layers_per_block: int | Sequence[int] = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  dropout: float = 0.0
  act_fn: str = "silu"
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int | Sequence[int] | None = 1280
  transformer_layers_per_block: int | Sequence[int] = 1
  reverse_transformer_layers_per_block: Sequence[int] | None = None
  attention_head_dim: int | Sequence[int] | None = 8
  num_attention_heads: int | Sequence[int] | None = None
  use_linear_projection: bool = False
  class_embed_type: str | None = None
  num_class_embeds: int | None = None
  projection_class_embeddings_input_dim: int | None = None
  class_embeddings_concat: bool = False
  upcast_attention: bool = False  # logits and softmax are always float32 here
  resnet_time_scale_shift: str = "default"
  resnet_skip_time_act: bool = False
  time_embedding_type: str = "positional"
  time_embedding_dim: int | None = None
  time_embedding_act_fn: str | None = None
  timestep_post_act: str | None = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  dtype: Dtype = jnp.float32

  # The diffusers class this module mirrors (``UNet2DModel`` overrides it).
  diffusers_class = "UNet2DConditionModel"

  @property
  def sample_shape(self):
    """(H, W, C) of one sample (NHWC without the batch), from ``sample_size``."""
    side = self.sample_size if self.sample_size is not None else 2**(len(self.block_out_channels) - 1)
    return (side, side, self.in_channels) if isinstance(side, int) else (*side, self.in_channels)

  @property
  def context_dim(self):
    """Width D of the context the cross-attention blocks read (None without cross-attention)."""
    dims = _per_block(self.cross_attention_dim, len(self.down_block_types), "cross_attention_dim")
    return None if dims[0] is None or not self.has_cross_attention else dims[0]

  @property
  def has_cross_attention(self):
    return any("CrossAttn" in str(b) for b in (*self.down_block_types, *self.up_block_types,
                                                 self.mid_block_type))

  # --- configuration checks and per-block settings ------------------------------------------

  def _check(self):
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(f"down_block_types ({len(self.down_block_types)}), up_block_types "
                       f"({len(self.up_block_types)}) and block_out_channels ({n}) must have the "
                       "same length.")
    unknown = [b for b in self.down_block_types if b not in DOWN_BLOCKS]
    unknown += [b for b in self.up_block_types if b not in UP_BLOCKS]
    unknown += [] if self.mid_block_type in self.mid_block_types() else [self.mid_block_type]
    if unknown:
      raise ValueError(f"Unknown or unsupported block type(s) {unknown} for {self.diffusers_class}; "
                       f"supported: down {DOWN_BLOCKS}, mid {self.mid_block_types()}, up {UP_BLOCKS}.")
    if self.time_embedding_type != "positional":
      raise ValueError(f"time_embedding_type={self.time_embedding_type!r} is not supported "
                       "(only 'positional').")
    if self.class_embed_type not in (None, "timestep", "identity", "projection"):
      raise ValueError(f"class_embed_type={self.class_embed_type!r} is not supported.")

  @staticmethod
  def mid_block_types():
    return MID_BLOCKS

  def _resolved(self):
    n = len(self.block_out_channels)
    heads = self.num_attention_heads or self.attention_head_dim
    return dict(
        heads=_per_block(heads, n, "num_attention_heads"),
        head_dim=_per_block(self.attention_head_dim, n, "attention_head_dim"),
        layers=_per_block(self.layers_per_block, n, "layers_per_block"),
        transformer=_per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block"),
        only_cross=_per_block(self.only_cross_attention, n, "only_cross_attention"))

  def _block_config(self, heads=None, head_dim=None, transformer_layers=1, only_cross=False,
                    output_scale_factor=1.0, attn_groups=None, num_layers=1):
    transformer_layers = _per_block(transformer_layers, num_layers, "transformer_layers_per_block")
    return _BlockConfig(self.norm_num_groups, self.norm_eps, self.act_fn,
                        self.resnet_time_scale_shift, self.resnet_skip_time_act, self.dropout,
                        heads, head_dim, transformer_layers, self.use_linear_projection, only_cross,
                        output_scale_factor, attn_groups)

  def mid_block_spec(self):
    """(attention kind, number of attention layers, block config) of the mid block."""
    r = self._resolved()
    if self.mid_block_type == "UNetMidBlock2DCrossAttn":
      return "cross", 1, self._block_config(heads=r["heads"][-1], transformer_layers=r["transformer"][-1],
                                            output_scale_factor=self.mid_block_scale_factor)
    # UNet2DConditionModel's plain mid block is a single resnet.
    return None, 0, self._block_config(output_scale_factor=self.mid_block_scale_factor)

  @staticmethod
  def _attention_kind(block_type):
    return "cross" if "CrossAttn" in block_type else "spatial" if "Attn" in block_type else None

  # --- forward --------------------------------------------------------------------------------

  def embed_time(self, t, y, batch):
    c0 = self.block_out_channels[0]
    time_dim = self.time_embedding_dim or 4 * c0
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    features = timestep_features(t, c0, self.flip_sin_to_cos, self.freq_shift).astype(self.dtype)
    emb = TimestepEmbedding(time_dim, self.act_fn, self.timestep_post_act, self.dtype,
                            name="time_embedding")(features)
    class_emb = self.embed_class(y, time_dim, c0)
    if class_emb is not None:
      emb = jnp.concatenate([emb, class_emb], -1) if self.class_embeddings_concat else emb + class_emb
    if self.time_embedding_act_fn is not None:
      emb = activation(self.time_embedding_act_fn)(emb)
    return emb

  def embed_class(self, y, time_dim, c0):
    has_class = self.class_embed_type is not None or self.num_class_embeds is not None
    if not has_class:
      if y is not None:
        raise ValueError("This UNet has no class embedding (num_class_embeds / class_embed_type): "
                         "y must be None.")
      return None
    if y is None:
      raise ValueError("This UNet is class-conditional: pass y (class labels).")
    if self.class_embed_type is None:
      return nn.Embed(self.num_class_embeds, time_dim, dtype=self.dtype, name="class_embedding")(y)
    if self.class_embed_type == "timestep":
      features = timestep_features(y, c0, self.flip_sin_to_cos, self.freq_shift).astype(self.dtype)
      return TimestepEmbedding(time_dim, self.act_fn, dtype=self.dtype, name="class_embedding")(features)
    if self.class_embed_type == "identity":
      return y.astype(self.dtype)
    return TimestepEmbedding(time_dim, self.act_fn, dtype=self.dtype, name="class_embedding")(y)

  @nn.compact
  def __call__(self, x, t, context=None, y=None, *, context_mask=None, train=False,
               capture_cross_attention=False, substitute=None):
    """Predicts the noise (or the config's target) for noisy x at timesteps t.

    Args:
      x: (B, H, W, in_channels) NHWC.
      t: (B,) or scalar timesteps (training steps, e.g. 0..999; fractional allowed).
      context: (B, L, D) sequence for the cross-attention blocks (text encoder hidden states).
      y: class labels (B,) for ``num_class_embeds``/``class_embed_type``; else None.
      context_mask: optional (B, L) bool/0-1 mask of the context tokens to attend to.
      train: enables dropout (rng stream "dropout").
      capture_cross_attention: sow every cross-attention layer's logits and probabilities into
        the "intermediates" collection (call with ``mutable=["intermediates"]``).
      substitute: optional ``TokenSubstitution`` applied in every cross-attention layer.

    Returns:
      (B, H, W, out_channels).
    """
    self._check()
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must be NHWC with {self.in_channels} channels, got shape {tuple(x.shape)}. "
                       "Transpose NCHW inputs with x.transpose(0, 2, 3, 1).")
    if context is not None and self.context_dim is not None and context.shape[-1] != self.context_dim:
      raise ValueError(f"context must be (B, L, {self.context_dim}), got {tuple(context.shape)}.")
    bias = None
    if context_mask is not None:
      bias = jnp.where(jnp.asarray(context_mask).astype(bool), 0.0, MASK_BIAS)[:, None, None, :]
    kw = dict(context_bias=bias, capture=capture_cross_attention, substitute=substitute)
    if self.center_input_sample:
      x = 2 * x - 1.0
    temb = self.embed_time(t, y, x.shape[0])
    channels, r = self.block_out_channels, self._resolved()
    h = conv(channels[0], self.conv_in_kernel, self.dtype, "conv_in")(x.astype(self.dtype))
    skips = [h]
    for i, block_type in enumerate(self.down_block_types):
      config = self._block_config(r["heads"][i], r["head_dim"][i], r["transformer"][i],
                                  r["only_cross"][i], num_layers=r["layers"][i])
      h, outputs = UNetBlock("down", channels[i], r["layers"][i], self._attention_kind(block_type),
                             config, resample=i < len(channels) - 1,
                             downsample_padding=self.downsample_padding, dtype=self.dtype,
                             name=f"down_blocks_{i}")(h, temb, context, train=train, **kw)
      skips.extend(outputs)
    if self.mid_block_type is not None:
      attention, num_layers, config = self.mid_block_spec()
      h, _ = UNetBlock("mid", channels[-1], num_layers, attention, config, dtype=self.dtype,
                       name="mid_block")(h, temb, context, train=train, **kw)
    reverse_transformer = (self.reverse_transformer_layers_per_block
                           or tuple(reversed(r["transformer"])))
    for i, block_type in enumerate(self.up_block_types):
      j = len(channels) - 1 - i  # the matching down level
      num_layers = r["layers"][j] + 1
      block_skips, skips = skips[-num_layers:], skips[:-num_layers]
      last = i == len(channels) - 1
      config = self._block_config(r["heads"][j], r["head_dim"][i], reverse_transformer[i],
                                  r["only_cross"][j], num_layers=num_layers)
      h, _ = UNetBlock("up", channels[j], num_layers, self._attention_kind(block_type), config,
                       resample=not last, dtype=self.dtype, name=f"up_blocks_{i}")(
                           h, temb, context, skips=block_skips,
                           upsample_size=None if last else skips[-1].shape[1:3], train=train, **kw)
    if self.norm_num_groups is not None:
      h = group_norm(self.norm_num_groups, self.norm_eps, self.dtype, "conv_norm_out")(h)
      h = activation(self.act_fn)(h)
    return conv(self.out_channels, self.conv_out_kernel, self.dtype, "conv_out")(h)


class UNet2DModel(UNet2DConditionModel):
  """diffusers' ``UNet2DModel`` (DDPM/ADM-style pixel UNets, no cross-attention) in Flax, NHWC.

  Same call as ``UNet2DConditionModel`` without a context. Differences from it, as in diffusers:
  ``attention_head_dim`` is the width of a head of the self-attention blocks (None: one head),
  the default mid block ``UNetMidBlock2D`` has a self-attention layer between its two resnets
  (``add_attention``; its GroupNorm has ``attn_norm_num_groups`` groups, or ``norm_num_groups``
  with the default time embedding, or none with ``scale_shift``).
  """
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                     "AttnDownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2D"
  up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
  block_out_channels: Sequence[int] = (224, 448, 672, 896)
  cross_attention_dim: int | Sequence[int] | None = None
  attn_norm_num_groups: int | None = None
  add_attention: bool = True

  diffusers_class = "UNet2DModel"

  @staticmethod
  def mid_block_types():
    return ("UNetMidBlock2D", None)

  def mid_block_spec(self):
    attn_groups = self.attn_norm_num_groups
    if attn_groups is None and self.resnet_time_scale_shift == "default":
      attn_groups = self.norm_num_groups
    head_dim = self.attention_head_dim
    head_dim = head_dim[-1] if isinstance(head_dim, (list, tuple)) else head_dim
    config = self._block_config(head_dim=head_dim, output_scale_factor=self.mid_block_scale_factor,
                                attn_groups=attn_groups)
    return ("spatial" if self.add_attention else None), 1, config


def make_unet(class_name="UNet2DConditionModel", **kwargs):
  """Registry constructor of the "UNet" family: ``class_name`` is the diffusers ``_class_name``."""
  classes = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}
  if class_name not in classes:
    raise ValueError(f"Unknown UNet class {class_name!r}; known: {sorted(classes)}.")
  try:
    return classes[class_name](**kwargs)
  except TypeError as e:
    raise ValueError(f"Bad keyword for {class_name}: {e}") from None


def example_inputs(model, batch=1, context_length=1, side=None):
  """Abstract (x, t, context) for ``model.init``; the smallest image size unless ``side``."""
  side = side or 2**(len(model.block_out_channels) - 1)
  x = jax.ShapeDtypeStruct((batch, side, side, model.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  context = None
  if model.context_dim is not None:
    context = jax.ShapeDtypeStruct((batch, context_length, model.context_dim), jnp.float32)
  return x, t, context


def _example_y(model, batch=1):
  if model.class_embed_type is None and model.num_class_embeds is None:
    return None
  if model.class_embed_type in ("projection", "identity"):
    width = (model.projection_class_embeddings_input_dim if model.class_embed_type == "projection"
             else model.time_embedding_dim or 4 * model.block_out_channels[0])
    return jax.ShapeDtypeStruct((batch, width), jnp.float32)
  return jax.ShapeDtypeStruct((batch,), jnp.int32)


def abstract_variables(model):
  """``model.init`` evaluated abstractly (ShapeDtypeStructs; the weights fit any image size)."""
  x, t, context = example_inputs(model)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, context, _example_y(model))


def init(model, rng, batch=1, side=None, context_length=1):
  """Random variables of ``model`` (for training from scratch or tests)."""
  x, t, context = example_inputs(model, batch, context_length, side)
  zeros = lambda s: None if s is None else jnp.zeros(s.shape, s.dtype)
  return jax.jit(model.init)(rng, zeros(x), zeros(t), zeros(context), zeros(_example_y(model, batch)))


def cross_attention_maps(state):
  """{diffusers layer name: {"logits", "probs"}} from the "intermediates" of a capturing apply.

  Args:
    state: the mutable state returned by ``model.apply(..., capture_cross_attention=True,
      mutable=["intermediates"])`` (or its "intermediates" entry).
  Returns:
    dict in forward order, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2" →
    {"logits": (B, heads, H·W, L), "probs": (B, heads, H·W, L)}.
  """
  state = state.get("intermediates", state)
  maps = {}

  def visit(node, path):
    if "probs" in node and "logits" in node:
      name = ".".join(_diffusers_name(p) for p in path)
      maps[name] = {"logits": node["logits"][0], "probs": node["probs"][0]}
    for key, value in node.items():
      if isinstance(value, dict) or hasattr(value, "items"):
        visit(value, path + (key,))

  visit(state, ())
  order = lambda name: _forward_rank(name)
  return dict(sorted(maps.items(), key=lambda kv: order(kv[0])))


def _diffusers_name(part):
  """"down_blocks_0" → "down_blocks.0" (indices joined with "_" in Flax, "." in diffusers)."""
  head, _, tail = part.rpartition("_")
  return f"{head}.{tail}" if tail.isdigit() and head else part


def _forward_rank(name):
  parts = name.split(".")
  stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}.get(parts[0], 3)
  numbers = tuple(int(p) for p in parts if p.isdigit())
  return (stage, numbers, name)


# Stable Diffusion UNets (CompVis/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1
# "unet/config.json"); the parameter counts equal diffusers' (asserted in tests).
SD15_UNET = dict(class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD21_UNET = dict(class_name="UNet2DConditionModel", sample_size=96, in_channels=4, out_channels=4,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True, norm_num_groups=32)

PRESETS = {
    "SD1.5-UNet": SD15_UNET,
    "SD2.1-UNet": SD21_UNET,
    # Small text-conditional latent UNet (SD layout) that trains on a CPU: 8×8..32×32×4 latents.
    "UNet-T2I-tiny": dict(class_name="UNet2DConditionModel", sample_size=16,
                          block_out_channels=(32, 64), layers_per_block=1,
                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                          attention_head_dim=4, norm_num_groups=8),
    "UNet-T2I-S": dict(class_name="UNet2DConditionModel", sample_size=32,
                       block_out_channels=(64, 128, 256), layers_per_block=2,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                       cross_attention_dim=256, attention_head_dim=(2, 4, 8), use_linear_projection=True,
                       norm_num_groups=32),
    # Small pixel-space DDPM-style UNets (UNet2DModel) for 32×32 images.
    "UNet2D-tiny": dict(class_name="UNet2DModel", sample_size=32, in_channels=3, out_channels=3,
                        block_out_channels=(32, 64), layers_per_block=1,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16,
                        norm_num_groups=8),
    "UNet2D-S": dict(class_name="UNet2DModel", sample_size=32, in_channels=3, out_channels=3,
                     block_out_channels=(64, 128, 128, 128), layers_per_block=2,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                     attention_head_dim=None, norm_num_groups=32),
}

__all__ = ["PRESETS", "TokenSubstitution", "UNet2DConditionModel", "UNet2DModel", "abstract_variables",
           "cross_attention_maps", "init", "make_unet", "timestep_features"]
