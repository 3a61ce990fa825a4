"""The Stable Diffusion VAE: diffusers' ``AutoencoderKL`` (sd-vae-ft-ema / sd-vae-ft-mse) in Flax.

An 8× downsampling convolutional autoencoder with a diagonal Gaussian posterior. Images are NHWC
in [-1, 1]; latents are NHWC with ``latent_channels`` channels. Submodule names follow the
diffusers state dict (``encoder.down_blocks.0.resnets.1.conv1`` becomes
``encoder/down_blocks_0/resnets_1/conv1``), so ``jdpm.convert.vae_from_diffusers`` is a rename.

Diffusion models work on ``scaling_factor · z`` (unit-variance latents, as in LDM and DiT):
``encode_latents`` and ``decode_latents`` apply the factor and its inverse.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# diffusers clamps the posterior log-variance to keep exp(logvar) finite.
LOGVAR_RANGE = (-30.0, 20.0)


def group_norm(groups, dtype, name):
  """GroupNorm with eps 1e-6 and the two-pass variance (as PyTorch)."""
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                      name=name)


def conv(features, dtype, name, kernel=3, stride=1, padding=1):
  """A square convolution; ``padding`` as PyTorch's (1 keeps the size of a 3×3 conv)."""
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=padding, dtype=dtype,
                 name=name)


class ResnetBlock(nn.Module):
  """GroupNorm → SiLU → conv3×3, twice, plus a (1×1-projected when widths differ) shortcut."""
  features: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C_in) → (B, H, W, features)."""
    h = conv(self.features, self.dtype, "conv1")(
        nn.silu(group_norm(self.groups, self.dtype, "norm1")(x)))
    h = conv(self.features, self.dtype, "conv2")(
        nn.silu(group_norm(self.groups, self.dtype, "norm2")(h)))
    if x.shape[-1] != self.features:
      x = conv(self.features, self.dtype, "conv_shortcut", kernel=1, padding=0)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H·W positions, GroupNorm first, residual added."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C) → (B, H, W, C)."""
    b, height, width, c = x.shape
    h = group_norm(self.groups, self.dtype, "group_norm")(x).reshape(b, height * width, 1, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=name)(h) for name in ("to_q", "to_k", "to_v"))
    h = jax.nn.dot_product_attention(q, k, v)  # scale 1/sqrt(C): one head of width C
    h = nn.Dense(c, dtype=self.dtype, name="to_out_0")(h.reshape(b, height * width, c))
    return x + h.reshape(x.shape)


class MidBlock(nn.Module):
  """resnet → attention → resnet at the lowest resolution."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, self.dtype, name="resnets_0")(x)
    x = AttentionBlock(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(c, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Stride-2 conv3×3 after zero padding one row/column at the bottom/right only."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C) → (B, H/2, W/2, C) for even H, W."""
    return conv(x.shape[-1], self.dtype, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2× upsampling, then conv3×3."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C) → (B, 2H, 2W, C)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], self.dtype, "conv")(x)


class ResolutionBlock(nn.Module):
  """``num_resnets`` ResnetBlocks, then an optional ``Downsample`` or ``Upsample``.

  Stands for diffusers' DownEncoderBlock2D (``resample="down"``, module ``downsamplers_0``) and
  UpDecoderBlock2D (``resample="up"``, module ``upsamplers_0``).
  """
  features: int
  num_resnets: int
  groups: int
  resample: str | None = None  # None, "down" or "up"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_resnets):
      x = ResnetBlock(self.features, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Image (B, H, W, in) → posterior moments (B, H/f, W/f, 2·latent), f = 2^(levels − 1)."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = self.block_out_channels
    x = conv(channels[0], self.dtype, "conv_in")(x)
    for i, features in enumerate(channels):
      last = i == len(channels) - 1
      x = ResolutionBlock(features, self.layers_per_block, self.groups,
                          None if last else "down", self.dtype, name=f"down_blocks_{i}")(x)
    x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
    x = nn.silu(group_norm(self.groups, self.dtype, "conv_norm_out")(x))
    return conv(2 * self.latent_channels, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
  """Latent (B, h, w, latent) → image (B, h·f, w·f, out_channels)."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    channels = tuple(reversed(self.block_out_channels))
    x = conv(channels[0], self.dtype, "conv_in")(z)
    x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
    for i, features in enumerate(channels):
      last = i == len(channels) - 1
      # One more resnet per level than the encoder (as LDM's decoder).
      x = ResolutionBlock(features, self.layers_per_block + 1, self.groups,
                          None if last else "up", self.dtype, name=f"up_blocks_{i}")(x)
    x = nn.silu(group_norm(self.groups, self.dtype, "conv_norm_out")(x))
    return conv(self.out_channels, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
  """diffusers' ``AutoencoderKL``; attribute names and meanings are its config's.

  Attributes:
    in_channels, out_channels: image channels in and out.
    block_out_channels: widths per resolution level; every level but the last halves H and W.
    layers_per_block: ResnetBlocks per encoder level (the decoder has one more).
    latent_channels: latent channels C.
    norm_num_groups: GroupNorm groups everywhere.
    scaling_factor: latent scale for diffusion models, ``latent = scaling_factor · z``.
    dtype: computation dtype (parameters stay float32).

  ``model.init(rng, x)`` runs encode → decode (posterior mean) on x: (B, H, W, in_channels).
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  dtype: Dtype = jnp.float32

  @property
  def downsampling_factor(self):
    """Image side / latent side (8 for SD)."""
    return 2 ** (len(self.block_out_channels) - 1)

  def setup(self):
    channels, groups = tuple(self.block_out_channels), self.norm_num_groups
    self.encoder = Encoder(channels, self.layers_per_block, self.latent_channels, groups,
                           self.dtype)
    self.decoder = Decoder(channels, self.layers_per_block, self.out_channels, groups, self.dtype)
    self.quant_conv = conv(2 * self.latent_channels, self.dtype, None, kernel=1, padding=0)
    self.post_quant_conv = conv(self.latent_channels, self.dtype, None, kernel=1, padding=0)

  def encode(self, x):
    """Posterior moments of images.

    Args:
      x: (B, H, W, in_channels) images in [-1, 1]; H, W multiples of ``downsampling_factor``.

    Returns:
      (mean, logvar), each (B, H/f, W/f, latent_channels); logvar clipped to [-30, 20].
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must be NHWC images with {self.in_channels} channels, got shape "
                       f"{tuple(x.shape)}. Transpose NCHW inputs with x.transpose(0, 2, 3, 1).")
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z):
    """Unscaled latents z: (B, h, w, latent_channels) → images (B, h·f, w·f, out_channels)."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x, rng=None):
    """Reconstruction of x (B, H, W, C): decodes the posterior mean, or a sample when ``rng``."""
    mean, logvar = self.encode(x)
    return self.decode(mean if rng is None else sample_posterior(mean, logvar, rng))

  @nn.nowrap
  def encode_latents(self, variables, images, rng=None):
    """Images (B, H, W, C) in [-1, 1] → diffusion latents ``scaling_factor · z`` (B, h, w, c).

    z is the posterior mean, or a posterior sample drawn with ``rng`` when given. Call on the
    unbound module: ``vae.encode_latents(variables, images, rng)``.
    """
    mean, logvar = self.apply(variables, images, method=AutoencoderKL.encode)
    z = mean if rng is None else sample_posterior(mean, logvar, rng)
    return self.scaling_factor * z

  @nn.nowrap
  def decode_latents(self, variables, latents):
    """Diffusion latents (B, h, w, c) → images (B, H, W, C), roughly in [-1, 1] (not clipped)."""
    return self.apply(variables, latents / self.scaling_factor, method=AutoencoderKL.decode)


def abstract_variables(model):
  """``model.init`` evaluated abstractly (ShapeDtypeStructs; the weights fit any image size)."""
  side = model.downsampling_factor  # the smallest image with a 1×1 latent
  x = jax.ShapeDtypeStruct((1, side, side, model.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def sample_posterior(mean, logvar, rng):
  """z = mean + exp(logvar / 2) · ε, ε ~ N(0, I) drawn with ``rng``."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


# Stable Diffusion's VAE (CompVis "kl-f8"): 256×256×3 images ↔ 32×32×4 latents. sd-vae-ft-ema
# and sd-vae-ft-mse fine-tune the decoder only; both use this architecture.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, latent_channels=4, norm_num_groups=32,
                     scaling_factor=0.18215)
