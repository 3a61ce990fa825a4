"""The FID InceptionV3: TensorFlow's 2015-12-05 Inception graph as ported by pytorch-fid.

``InceptionV3()(images)`` takes NHWC RGB images of any size and returns the features of the usual
sample-quality metrics:

- ``pool3`` (B, 2048): the final average pool, FID's features (pytorch-fid's block 3).
- ``logits`` (B, 1008): ``pool3 @ W + b``, the graph's ``softmax/logits`` (the 2015 graph has
  1008 outputs, 1000 of them ImageNet classes).
- ``logits_unbiased`` (B, 1008): ``pool3 @ W`` without the bias. This is what the Inception
  Score code computes: openai/improved-gan and the ADM evaluator (guided-diffusion
  ``evaluations/evaluator.py``) take the MatMul weight of ``softmax/logits`` only, then a softmax
  over all 1008 entries (not the first 1000 or 1001); torch-fidelity's ISC does the same. To
  reproduce published IS, use ``softmax(logits_unbiased)``. pytorch-fid itself computes no IS.
- ``spatial`` (B, 2023): sFID's features, as the ADM evaluator: the first 7 channels of the graph
  tensor ``mixed_6/conv:0`` at 17×17, flattened in (H, W, C) order (17·17·7 = 2023). Flatten
  order matters only when comparing with statistics computed elsewhere (the ADM reference
  batches' ``mu_s``/``sigma_s`` use this order); the Fréchet distance itself ignores a common
  permutation of the features.

Which PyTorch tensor is ``mixed_6/conv:0``: the 2015 graph names its 11 Inception blocks
``mixed, mixed_1, ..., mixed_10`` in order, i.e. Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c.
So ``mixed_6`` is Mixed_6d (the third 17×17 InceptionC block, channels_7x7=160), not Mixed_6e
(``mixed_7``, channels_7x7=192). Inside a block, the graph's ``conv`` scope is the 1×1 branch
(``tower``, ``tower_1``, ``tower_2`` are the 7×7, double-7×7 and pool branches), and the tensor
named after a conv scope is its layer output, the ReLU after the batch norm (the graph's layer
sequence reads ``ResizeBilinear, Sub, Mul, conv, conv_1, ...``; its conv and batch-norm ops are
``<scope>/Conv2D`` and ``<scope>/batchnorm``). This agrees with torch-fidelity's TF → PyTorch
weight map (``mixed_6/conv/conv2d_params`` → ``Mixed_6d.branch1x1.conv``), with the block widths
of other ports of the graph, and with the sFID ports that run NVIDIA's TorchScript translation of
the graph up to ``layers.mixed_6.conv``. Hence ``spatial`` = ReLU(BN(conv(x))) of
Mixed_6d.branch1x1, channels 0..6, which are also channels 0..6 of Mixed_6d's output (the 1×1
branch comes first in the concat). Confidence: high for the block and branch (independent
sources agree); high but second-hand for post-ReLU (the graph file itself was not inspected).

Preprocessing (``preprocess``):

- ``"pytorch_fid"`` (default): as ``pytorch_fid.inception.InceptionV3(resize_input=True,
  normalize_input=True)``: values to [0, 1], bilinear resize to 299×299 with PyTorch's
  ``F.interpolate(mode="bilinear", align_corners=False)`` semantics (half-pixel centres, no
  antialiasing, also when shrinking), then ``2x - 1``.
- ``"tf1"``: as the TF graph itself, which the ADM evaluator feeds float images in [0, 255]:
  TF1's legacy ``ResizeBilinear`` (no half-pixel centres: output pixel j samples input
  j · in/out) and ``(x - 128) / 128``. The two modes differ visibly for images not already
  299×299; published ADM/DiT numbers used the TF graph. Only the resize is checked against
  a reference here (not the whole TF graph, whose convolutions also round differently).

``jax.image.resize(..., "linear", antialias=False)`` is PyTorch's resize (checked against
``F.interpolate`` to 1 float32 ulp, upsampling and downsampling; with jax's default
``antialias=True`` shrinking differs by up to ~0.5). TF1's legacy mapping is not among its options
and is written out as gathers and lerps (``resize_bilinear``).

Weights: ``jdpm.convert.inception.load_variables`` (pytorch-fid's released file). Images are NHWC;
BatchNorm runs in inference mode with the stored statistics (``batch_stats``), eps 0.001.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048
SPATIAL_CHANNELS = 7  # The ADM evaluator keeps mixed_6/conv[..., :7]: 17·17·7 = 2023 features.
BN_EPS = 1e-3  # The 2015 graph's batch-norm epsilon (also torchvision's BasicConv2d).
PREPROCESS_MODES = ("pytorch_fid", "tf1")


def _legacy_taps(in_size, out_size):
  """TF1's legacy sample positions: per output index j, the input indices around j · in/out and
  the weight of the upper one. In float32, as TensorFlow's kernel (exact arithmetic would move
  positions by up to ~in · 2^-24 pixels)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  weight = np.clip(src - lower.astype(np.float32), 0, 1).astype(np.float32)
  return lower, upper, weight


def resize_bilinear(images, size, *, half_pixel_centers=True):
  """Bilinear resize without antialiasing.

  Args:
    images: (B, H, W, C) float.
    size: (out_h, out_w).
    half_pixel_centers: True gives PyTorch's ``F.interpolate(mode="bilinear",
      align_corners=False)`` (source coordinate ``(j + 0.5) · in/out - 0.5``, clamped at 0);
      False gives TF1's legacy ``tf.image.resize_bilinear(align_corners=False)`` (``j · in/out``).

  Returns:
    (B, out_h, out_w, C) in the dtype of ``images``.
  """
  if half_pixel_centers:
    shape = (images.shape[0], *size, images.shape[-1])
    return jax.image.resize(images, shape, "linear", antialias=False)
  for axis, out_size in ((1, size[0]), (2, size[1])):
    lower, upper, weight = _legacy_taps(images.shape[axis], out_size)
    shape = [1, 1, 1, 1]
    shape[axis] = out_size
    weight = jnp.asarray(weight.reshape(shape), images.dtype)
    a, b = jnp.take(images, lower, axis=axis), jnp.take(images, upper, axis=axis)
    images = a * (1 - weight) + b * weight
  return images


def preprocess(images, *, mode="pytorch_fid", max_value=None, resize=True):
  """Images → the network's input: float32 (B, 299, 299, 3) in [-1, 1].

  Args:
    images: (B, H, W, 3) RGB with values in [0, max_value].
    mode: "pytorch_fid" or "tf1" (see the module docstring).
    max_value: the white level; default 255 for integer dtypes (uint8 images), else 1.0.
    resize: resize to 299×299 (False keeps H×W; the network is fully convolutional).
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be NHWC RGB, (B, H, W, 3), got {tuple(images.shape)}. "
                     "Transpose NCHW arrays with x.transpose(0, 2, 3, 1); repeat grayscale "
                     "channels 3 times.")
  if mode not in PREPROCESS_MODES:
    raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}.")
  if max_value is None:
    max_value = 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else 1.0
  x = images.astype(jnp.float32)
  size = (INPUT_SIZE, INPUT_SIZE)
  if mode == "pytorch_fid":
    x = x / max_value
    if resize:
      x = resize_bilinear(x, size, half_pixel_centers=True)
    return 2 * x - 1
  x = x * (255.0 / max_value)
  if resize:
    x = resize_bilinear(x, size, half_pixel_centers=False)
  return (x - 128) / 128


def _pairs(value):
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class BasicConv2d(nn.Module):
  """Conv (no bias) → BatchNorm (inference, eps 0.001) → ReLU; torch's ``padding`` convention
  (symmetric zero padding of ``padding`` pixels per side)."""
  features: int
  kernel_size: Any = 1
  strides: int = 1
  padding: Any = 0
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    """x: (B, H, W, C_in) → (B, H', W', features)."""
    ph, pw = _pairs(self.padding)
    x = nn.Conv(self.features, _pairs(self.kernel_size), strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # The TF graph's average pools ignore the zero padding (count_include_pad=False), one of the
  # FID blocks' differences from torchvision's InceptionV3.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """35×35 block (FIDInceptionA): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""
  pool_features: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)  # noqa: E731
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35×35 → 17×17 reduction (torchvision's InceptionB, Mixed_6a)."""
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)  # noqa: E731
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17×17 block (FIDInceptionC) with factorised 7×7 convolutions; 192·4 = 768 channels, the
  1×1 branch first."""
  channels_7x7: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)  # noqa: E731
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17×17 → 8×8 reduction (torchvision's InceptionD, Mixed_7a)."""
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)  # noqa: E731
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8×8 block with split 1×3/3×1 convolutions. ``pool="avg"`` is FIDInceptionE_1 (Mixed_7b,
  padding-excluding average); ``pool="max"`` is FIDInceptionE_2 (Mixed_7c): the 2015 graph has a
  max pool there, unlike the paper."""
  pool: str = "avg"
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)  # noqa: E731
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    else:  # Max pooling pads with -inf, as PyTorch's and TensorFlow's.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's ``fid_inception_v3`` (no auxiliary head, 1008 classes), NHWC.

  Submodule names are the PyTorch state-dict names (``Conv2d_1a_3x3``, ``Mixed_5b``, ...,
  ``fc``), so ``jdpm.convert.inception`` maps the released weights one to one. Variables are
  ``{"params", "batch_stats"}``; BatchNorm always uses the stored statistics.

  Attributes:
    resize_input: resize to 299×299 first (pytorch-fid's default). Without it, the spatial
      features of non-299 inputs are not 17×17.
    preprocess: "pytorch_fid" or "tf1" (module docstring).
    precision: matmul/conv precision. "highest" keeps float32 on TPU (default passes are
      bfloat16) and GPU (TF32), whose rounding would otherwise move the features by ~1e-3.
  """
  resize_input: bool = True
  preprocess: str = "pytorch_fid"
  precision: Any = "highest"

  @nn.compact
  def __call__(self, images, *, max_value=None):
    """Features of a batch of images.

    Args:
      images: (B, H, W, 3) RGB in [0, max_value]: uint8 in [0, 255] or floats in [0, 1] by
        default (``max_value`` overrides, e.g. 255.0 for float images in [0, 255]).
      max_value: the white level; must be a Python number (static under jit).

    Returns:
      {"pool3": (B, 2048), "logits": (B, 1008), "logits_unbiased": (B, 1008),
       "spatial": (B, 17·17·7 = 2023) for 299×299 network inputs}, float32.
    """
    x = preprocess(images, mode=self.preprocess, max_value=max_value,
                   resize=self.resize_input)
    p = dict(precision=self.precision)
    x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3", **p)(x)     # 149×149×32
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **p)(x)                # 147×147×32
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **p)(x)     # 147×147×64
    x = _max_pool_3x3_s2(x)                                             # 73×73×64
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **p)(x)                # 73×73×80
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **p)(x)               # 71×71×192
    x = _max_pool_3x3_s2(x)                                             # 35×35×192
    x = InceptionA(32, name="Mixed_5b", **p)(x)                         # 35×35×256
    x = InceptionA(64, name="Mixed_5c", **p)(x)                         # 35×35×288
    x = InceptionA(64, name="Mixed_5d", **p)(x)                         # 35×35×288
    x = InceptionB(name="Mixed_6a", **p)(x)                             # 17×17×768
    x = InceptionC(128, name="Mixed_6b", **p)(x)
    x = InceptionC(160, name="Mixed_6c", **p)(x)
    x = InceptionC(160, name="Mixed_6d", **p)(x)
    # TF's mixed_6/conv:0 = Mixed_6d's 1×1 branch = its leading 192 channels (module docstring).
    spatial = x[..., :SPATIAL_CHANNELS]
    x = InceptionC(192, name="Mixed_6e", **p)(x)                        # 17×17×768
    x = InceptionD(name="Mixed_7a", **p)(x)                             # 8×8×1280
    x = InceptionE("avg", name="Mixed_7b", **p)(x)                      # 8×8×2048
    x = InceptionE("max", name="Mixed_7c", **p)(x)                      # 8×8×2048
    pool3 = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")
    logits = fc(pool3)
    logits_unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=self.precision)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": logits_unbiased,
            "spatial": spatial.reshape(spatial.shape[0], -1)}
