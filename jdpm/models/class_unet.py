"""A class-conditional pixel UNet with the transformers' call, so `train.py` and `sample.py` take it as they take DiT.

``ClassUNet`` is diffusers' ``UNet2DModel`` (`jdpm.models.unet`) with a class-embedding table of
``num_classes + 1`` rows (the last is the null class of classifier-free guidance, as DiT's) added to the
timestep embedding, and the fields the trainer and samplers read from a denoiser: ``input_size``,
``in_channels``, ``num_classes``, ``learn_sigma`` and the properties of `layers.DenoiserGeometry`
(``sample_shape``, ``null_condition``, ``out_channels``), as the transformers have them.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jdpm.models import layers, unet


class ClassUNet(nn.Module, layers.DenoiserGeometry):
  """``apply(variables, x, t, y)``: x (B, H, W, C) in [-1, 1], t (B,) timesteps, y (B,) int labels in
  [0, num_classes] (num_classes: the null class) → (B, H, W, C), or 2C channels with ``learn_sigma``."""
  input_size: int = 32
  in_channels: int = 3
  num_classes: int = 10
  class_dropout_prob: float = 0.1  # the trainer's label dropout; kept here so a config's model section is one dict
  learn_sigma: bool = False
  block_out_channels: Sequence[int] = (32, 64, 64)
  layers_per_block: int = 1
  down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
  up_block_types: Sequence[str] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
  attention_head_dim: int | None = 16
  norm_num_groups: int = 8
  # How the time + class embedding enters each resnet: "default" adds it as a channel bias after the first
  # convolution (diffusers' UNet2DModel); "scale_shift" scales and shifts the second GroupNorm's output by it
  # (ADM's adaptive group normalisation).
  resnet_time_scale_shift: str = "default"
  # Side of the pixel blocks folded into channels before the UNet (space-to-depth) and unfolded after it:
  # 2 runs the UNet on (H/2, W/2, 4C) inputs, a quarter of the positions at its widest level, as a DiT with
  # patches of 2x2 pixels. 1: the UNet sees the pixels.
  space_to_depth: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y, **unused):
    del unused  # the transformers' sampling options (amm, ...) do not apply to a UNet
    p = self.space_to_depth
    if self.input_size % p:
      raise ValueError(f"space_to_depth={p} must divide input_size={self.input_size}.")
    net = unet.UNet2DModel(sample_size=self.input_size // p, in_channels=self.in_channels * p * p,
                           out_channels=self.out_channels * p * p,
                           block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                           down_block_types=tuple(self.down_block_types), up_block_types=tuple(self.up_block_types),
                           attention_head_dim=self.attention_head_dim, norm_num_groups=self.norm_num_groups,
                           resnet_time_scale_shift=self.resnet_time_scale_shift,
                           num_class_embeds=self.num_classes + 1, dtype=self.dtype, name="unet")
    if p == 1:
      return net(x, t, y=y)
    out = net(space_to_depth(x, p), t, y=y)
    return layers.unpatchify(out.reshape(out.shape[0], -1, out.shape[-1]), p, self.out_channels)


def space_to_depth(x, p):
  """(B, H, W, C) → (B, H/p, W/p, p·p·C), each position's features ordered (row in block, column in block,
  channel) as `layers.unpatchify` reads them, so that unpatchify undoes it."""
  batch, height, width, channels = x.shape
  blocks = x.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return blocks.reshape(batch, height // p, width // p, p * p * channels)
