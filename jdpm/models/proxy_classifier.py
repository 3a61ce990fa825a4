"""A small CNN classifier of 32x32 images: the feature extractor of the CPU-sized quality metric.

`jdpm.eval.proxy` trains one per built-in dataset (`shapes`, `digits`) in a few CPU minutes and measures
generated images with it, the way FID uses Inception. Four stages of a 3x3 convolution, GroupNorm and ReLU,
each but the last followed by 2x2 average pooling, then a global average pool gives the penultimate feature
vector (`widths[-1]` dims) and one Dense layer the logits.

Sized for a 2-core CPU: one 3x3 convolution per stage at 32, 16, 8 and 4 pixels with 16 to 128 channels
(about 5 MMACs per image). Two convolutions per stage or 32+ channels at full resolution cost 3-10x more
training time for no accuracy to gain on these datasets.

GroupNorm rather than BatchNorm: the output of an image never depends on the rest of its batch, so features do
not change with the batch size used at evaluation, and there are no running statistics to keep.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProxyClassifier(nn.Module):
  """``apply(variables, images) -> (logits (B, num_classes), features (B, widths[-1]))``.

  Attributes:
    num_classes: number of class labels.
    widths: channels of the convolution stages (one convolution each); the last is the feature dimension.
    groups: GroupNorm groups per normalisation (must divide every width).
  Input: (B, H, W, C) float images in [-1, 1], NHWC (32x32x3 for the built-in datasets; any H, W work).
  """
  num_classes: int = 10
  widths: Sequence[int] = (16, 32, 64, 128)
  groups: int = 8

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    for stage, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, name=f"conv{stage}")(x)
      x = nn.GroupNorm(num_groups=self.groups, name=f"norm{stage}")(x)
      x = jax.nn.relu(x)
      if stage < len(self.widths) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    features = jnp.mean(x, axis=(1, 2))  # (B, widths[-1])
    logits = nn.Dense(self.num_classes, name="head")(features)
    return logits, features
