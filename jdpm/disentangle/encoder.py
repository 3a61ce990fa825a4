"""DisDiff's image encoder (official `Encoder4`): image -> N factor codes of `factor_dim` numbers each.

Four 4x4 stride-2 convolutions with BatchNorm (ReLU after all but the third, as the official code), two
residual blocks (ReLU, 3x3 conv, BatchNorm, ReLU, 1x1 conv, plus the input) with BatchNorm/ReLU between
them, a flatten in PyTorch's (C, H, W) order and a linear layer. Submodules are named `layers_<i>` after
the index in the official `nn.Sequential`, so official weights map one to one.

The official encoder hard-codes 2048 flattened features (d = 128 at 64x64); here the linear layer takes
whatever the image size gives (d * (H/16) * (W/16)).
"""

import flax.linen as nn
import jax.numpy as jnp


def _bn(train, name):
  # PyTorch BatchNorm2d: momentum 0.1 (Flax's 0.9), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _down(features, name):
  return nn.Conv(features, (4, 4), strides=2, padding=((1, 1), (1, 1)), name=name)


class _ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train):
    h = nn.Conv(self.features, (3, 3), padding=1, name="conv1")(nn.relu(x))
    h = nn.relu(_bn(train, "norm")(h))
    return x + nn.Conv(self.features, (1, 1), name="conv2")(h)


class FactorEncoder(nn.Module):
  """x (B, H, W, C) in [-1, 1] -> codes (B, latent_unit * factor_dim); factor c = columns c*factor_dim...

  Attributes: width (the official `d`), latent_unit (N factors), factor_dim (official repre_emb_channels).
  `train=True` uses batch statistics (as the encoder runs during DisDiff training) and updates
  `batch_stats`; `train=False` uses the running statistics.
  """
  width: int = 128
  latent_unit: int = 6
  factor_dim: int = 32

  @nn.compact
  def __call__(self, x, train=False):
    d = self.width
    h = nn.relu(_bn(train, "layers_1")(_down(d, "layers_0")(x)))
    h = nn.relu(_bn(train, "layers_4")(_down(d, "layers_3")(h)))
    h = _bn(train, "layers_7")(_down(d, "layers_6")(h))
    h = nn.relu(_bn(train, "layers_9")(_down(d, "layers_8")(h)))
    h = _ResBlock(d, name="layers_11")(h, train)
    h = nn.relu(_bn(train, "layers_12")(h))
    h = _ResBlock(d, name="layers_14")(h, train)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # PyTorch's flatten order
    return nn.Dense(self.latent_unit * self.factor_dim, name="layers_16")(h)


def split_factors(codes, latent_unit):
  """(B, N * f) codes -> (B, N, f): factor c is the c-th consecutive chunk."""
  return codes.reshape(codes.shape[0], latent_unit, -1)
