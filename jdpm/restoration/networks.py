"""The three DP-IR modules as Flax modules (NHWC; images in [-1, 1] unless stated).

* `Denoiser` (phi_D): a task-agnostic Gaussian denoiser E[x0 | x~] of x~ = x0 + sigma~ * eps, a
  small ``UNet2DModel`` with the preconditioning of Karras et al. (2022) (c_skip, c_out, c_in and
  the log-sigma noise label), so that one network serves every noise level.
* `ResidualRestorer` and `BurstRestorer` (phi_IR): small residual conv nets giving E[x0 | y]. The
  paper's SwinIR / FFTFormer / BSRT do not fit a 2-core CPU budget; a residual CNN (VDSR / EDSR
  style) plays their part, and any callable ``y -> x0_IR`` can replace it.
* `FusionNet` (phi_F): the only module trained per task, about 0.7 M parameters: convolutions and
  ReLUs over the two estimates, with dense layers on the timestep that scale and shift every
  feature map; it outputs a per-pixel gate between the two estimates plus a residual correction.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdpm.models.unet import UNet2DModel, timestep_features

SIGMA_DATA = 0.5  # std of natural images in [-1, 1], the EDM preconditioning constant


def noise_label(sigma):
  """The UNet's 'timestep' input for a noise level: 250 ln(sigma) + 1000 (about 0..2300 for the
  range of a 1000-step linear schedule), so sinusoidal embeddings resolve it like a timestep."""
  return 250.0 * jnp.log(sigma) + 1000.0


class Denoiser(nn.Module):
  """phi_D(x~, sigma~) -> E[x0 | x~] for x~ = x0 + sigma~ eps (variance-exploding form).

  Attributes:
    channels: the UNet's block widths (backbone "unet"); the first is the width of "resnet".
    layers_per_block: resnets per UNet block; residual blocks of "resnet".
    backbone: "unet", a small ``UNet2DModel`` (jdpm's UNet family); or "resnet", a plain residual
      conv net with the noise embedding as a per-block scale and shift (compiles in a fraction of
      the time: the tests' choice).
  Call: x (B, H, W, 3) noisy images, sigma (B,) noise std (same units as x); returns (B, H, W, 3).
  With "unet", H and W must be multiples of 2^(len(channels) - 1).
  """
  channels: Sequence[int] = (32, 64)
  layers_per_block: int = 1
  backbone: str = "unet"

  @nn.compact
  def __call__(self, x, sigma):
    s = sigma.reshape(-1, 1, 1, 1)
    total = s ** 2 + SIGMA_DATA ** 2
    c_skip = SIGMA_DATA ** 2 / total
    c_out = s * SIGMA_DATA / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    return c_skip * x + c_out * self.network(c_in * x, noise_label(sigma))

  def network(self, x, label):
    if self.backbone == "resnet":
      width = self.channels[0]
      emb = nn.relu(nn.Dense(4 * width, name="noise_dense")(timestep_features(label, width)))
      films = jnp.split(nn.Dense(2 * width * self.layers_per_block, name="noise_film")(emb),
                        self.layers_per_block, axis=-1)
      h = nn.Conv(width, (3, 3), name="head")(x)
      for i in range(self.layers_per_block):
        h = ResBlock(width, name=f"block{i}")(h, films[i])
      return nn.Conv(3, (3, 3), name="tail")(h)
    if self.backbone != "unet":
      raise ValueError(f"Denoiser backbone must be 'unet' or 'resnet'; got {self.backbone!r}.")
    n = len(self.channels)
    unet = UNet2DModel(in_channels=3, out_channels=3, down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n, block_out_channels=tuple(self.channels),
                       layers_per_block=self.layers_per_block, mid_block_type=None,
                       norm_num_groups=min(8, self.channels[0]), name="unet")
    return unet(x, label)


class ResBlock(nn.Module):
  """conv-ReLU-conv with a residual connection; an optional (B, 2F) scale/shift after the first conv."""
  features: int

  @nn.compact
  def __call__(self, h, film=None):
    r = nn.relu(nn.Conv(self.features, (3, 3), name="conv0")(h))
    if film is not None:
      scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
      r = r * (1.0 + scale) + shift
    return h + nn.Conv(self.features, (3, 3), name="conv1")(r)


class ResidualRestorer(nn.Module):
  """phi_IR for SR and deblurring: y (B, h, w, 3) -> x0_IR (B, h * scale, w * scale, 3).

  The input is first brought to the output size by bicubic up-sampling (scale > 1); the network
  predicts the residual to it, from a zero-initialised last layer (it starts as the classical
  estimate: bicubic for SR, the blurred input for deblurring).
  """
  features: int = 48
  blocks: int = 4
  scale: int = 1

  @nn.compact
  def __call__(self, y):
    from jdpm.restoration import degradations  # pylint: disable=import-outside-toplevel
    base = degradations.upsample(y, self.scale) if self.scale > 1 else y
    h = nn.Conv(self.features, (3, 3), name="head")(base)
    for i in range(self.blocks):
      h = ResBlock(self.features, name=f"block{i}")(h)
    # Zero-initialised residual: training starts from the classical estimate (bicubic, or y itself).
    return base + nn.Conv(3, (3, 3), name="tail", kernel_init=nn.initializers.zeros)(h)


class BurstRestorer(nn.Module):
  """phi_IR for the RAW burst: y (B, frames, h, w) RGGB mosaics -> x0_IR (B, h * scale, w * scale, 3).

  Every frame goes through the same encoder (the mosaic plus its frame-0 difference); the frames
  are fused by the mean and the max over the burst (order-free, any burst length), decoded, and
  up-sampled by sub-pixel convolution.
  """
  features: int = 48
  blocks: int = 3
  scale: int = 4

  @nn.compact
  def __call__(self, y):
    b, n, hh, ww = y.shape
    ref = jnp.broadcast_to(y[:, :1], y.shape)
    frames = jnp.stack([y, y - ref], axis=-1).reshape(b * n, hh, ww, 2)
    h = nn.relu(nn.Conv(self.features, (3, 3), name="encode")(frames))
    h = ResBlock(self.features, name="frame_block")(h)
    h = h.reshape(b, n, hh, ww, self.features)
    h = nn.Conv(self.features, (1, 1), name="merge")(jnp.concatenate([h.mean(1), h.max(1)], axis=-1))
    for i in range(self.blocks):
      h = ResBlock(self.features, name=f"block{i}")(h)
    s = self.scale
    h = nn.Conv(3 * s * s, (3, 3), name="to_subpixel")(h)
    h = h.reshape(b, hh, ww, s, s, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh * s, ww * s, 3)
    return nn.Conv(3, (3, 3), name="tail")(h) + h


class FusionNet(nn.Module):
  """phi_F(x0_IR, x0_D, t) -> E[x0 | y, x_t].

  Attributes:
    features: width of the conv layers.
    blocks: residual blocks, each modulated by the timestep embedding.
    time_dim, time_hidden: sinusoidal embedding size and width of the dense time layers.
  Call: x0_ir, x0_d (B, H, W, 3) in [-1, 1]; t (B,) timesteps (float or int). Output
  g * x0_IR + (1 - g) * x0_D + r with a per-pixel gate g = sigmoid(.) and a residual r.
  """
  features: int = 64
  blocks: int = 3
  time_dim: int = 128
  time_hidden: int = 448

  @nn.compact
  def __call__(self, x0_ir, x0_d, t):
    emb = timestep_features(jnp.asarray(t, jnp.float32), self.time_dim)
    emb = nn.relu(nn.Dense(self.time_hidden, name="time_dense0")(emb))
    emb = nn.relu(nn.Dense(self.time_hidden, name="time_dense1")(emb))
    film = nn.Dense(2 * self.features * self.blocks, name="time_film")(emb)
    films = jnp.split(film, self.blocks, axis=-1)
    h = nn.relu(nn.Conv(self.features, (3, 3), name="head")(jnp.concatenate([x0_ir, x0_d], axis=-1)))
    for i in range(self.blocks):
      h = ResBlock(self.features, name=f"block{i}")(h, films[i])
    # Zero kernel, gate bias 3: training starts from 0.95 x0_IR + 0.05 x0_D (the restorer's estimate,
    # mostly), which a short run then corrects per pixel and per noise level.
    gate_bias = lambda key, shape, dtype=jnp.float32: jnp.concatenate(
        [jnp.full((3,), 3.0, dtype), jnp.zeros((shape[0] - 3,), dtype)])
    out = nn.Conv(6, (3, 3), name="tail", kernel_init=nn.initializers.zeros, bias_init=gate_bias)(h)
    gate = nn.sigmoid(out[..., :3])
    return gate * x0_ir + (1.0 - gate) * x0_d + out[..., 3:]
