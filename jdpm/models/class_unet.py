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
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y, **unused):
    del unused  # the transformers' sampling options (amm, ...) do not apply to a UNet
    net = unet.UNet2DModel(sample_size=self.input_size, in_channels=self.in_channels,
                           out_channels=self.out_channels,
                           block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                           down_block_types=tuple(self.down_block_types), up_block_types=tuple(self.up_block_types),
                           attention_head_dim=self.attention_head_dim, norm_num_groups=self.norm_num_groups,
                           num_class_embeds=self.num_classes + 1, dtype=self.dtype, name="unet")
    return net(x, t, y=y)
