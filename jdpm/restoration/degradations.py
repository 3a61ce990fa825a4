"""Degradation operators as pure JAX functions: 4x bicubic down-sampling, blur + noise, a RAW burst.

Images are (H, W, C) or (B, H, W, C) floats in [0, 1], NHWC. Each task is a small frozen dataclass
with two methods:

  ``sample(rng, batch)``   draws the random parameters of `batch` degradations (kernels, shifts,
                           rotations, the noise key) as a pytree of arrays, one row per image;
  ``apply(x, params)``     degrades the clean batch with those parameters (deterministic given them),

so that an experiment is replayed from ``(task, params)``; ``operator(params)`` is the noise-free
linear map x -> A x that a data-consistency step needs.

Resampling is PIL's: ``Image.resize(..., Image.BICUBIC)`` (Keys' cubic with a = -0.5, the kernel
stretched by the scale factor when down-sampling, i.e. antialiased, weights renormalised at the
borders), implemented as a (out, in) matrix per axis. It is not MATLAB's ``imresize`` (same kernel
and antialiasing, but MATLAB pads the border by symmetric reflection instead of renormalising).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jdpm import fields

KERNEL_SUM_TOLERANCE = 1e-4


# -- resampling ------------------------------------------------------------------------------------

def _bicubic(x, a=-0.5):
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def resize_matrix(in_size, out_size):
  """(out_size, in_size) float64 weights of PIL's bicubic resampling along one axis."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 2.0 * filter_scale
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    w = _bicubic((taps - center + 0.5) / filter_scale)
    m[i, lo:hi] = w / w.sum()
  return m


def resize(x, height, width):
  """PIL-bicubic resize of (H, W, C) or (B, H, W, C) images to (height, width)."""
  mh = jnp.asarray(resize_matrix(x.shape[-3], height), jnp.float32)
  mw = jnp.asarray(resize_matrix(x.shape[-2], width), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,...hwc->...owc", mh, x, precision=hi)
  return jnp.einsum("pw,...owc->...opc", mw, x, precision=hi)


def downsample(x, scale):
  """Antialiased bicubic down-sampling by an integer `scale` (sides must be multiples of it)."""
  h, w = x.shape[-3], x.shape[-2]
  if h % scale or w % scale:
    raise ValueError(f"image of {h}x{w} pixels is not divisible by the scale {scale}; crop it to a multiple.")
  return resize(x, h // scale, w // scale)


def upsample(x, scale):
  """Bicubic up-sampling by an integer `scale` (the classical SR baseline)."""
  return resize(x, x.shape[-3] * scale, x.shape[-2] * scale)


# -- blur kernels ----------------------------------------------------------------------------------

def gaussian_kernel(size, sigma_x, sigma_y=None, angle=0.0):
  """A (size, size) anisotropic Gaussian kernel summing to 1 (sigmas in pixels, angle in radians)."""
  sigma_y = sigma_x if sigma_y is None else sigma_y
  r = (size - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(size) - r, jnp.arange(size) - r, indexing="ij")
  c, s = jnp.cos(angle), jnp.sin(angle)
  u, v = c * xx + s * yy, -s * xx + c * yy
  k = jnp.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
  return k / jnp.sum(k)


def motion_kernel(size, length, angle, samples=64):
  """A (size, size) linear-motion kernel: a segment of `length` pixels at `angle`, splatted bilinearly."""
  r = (size - 1) / 2.0
  s = jnp.linspace(-0.5, 0.5, samples) * length
  px, py = r + s * jnp.cos(angle), r + s * jnp.sin(angle)
  x0, y0 = jnp.floor(px), jnp.floor(py)
  fx, fy = px - x0, py - y0
  k = jnp.zeros((size, size))
  for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
    xi = jnp.clip(x0 + dx, 0, size - 1).astype(jnp.int32)
    yi = jnp.clip(y0 + dy, 0, size - 1).astype(jnp.int32)
    k = k.at[yi, xi].add(w)
  return k / jnp.sum(k)


def check_kernel(kernel):
  """Raises ValueError unless `kernel` is a square 2-D array with odd side summing to 1."""
  k = np.asarray(kernel)
  if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
    raise ValueError(f"a blur kernel must be a square 2-D array with an odd side; got shape {k.shape}.")
  total = float(k.sum())
  if abs(total - 1.0) > KERNEL_SUM_TOLERANCE:
    raise ValueError(f"a blur kernel must sum to 1 (it sums to {total:.6g}); divide it by its sum.")


def check_concrete_kernels(kernel):
  """`check_kernel` on each of a (k, k) or (B, k, k) kernel array given by the user (traced values,
  made inside a jitted function, are not checked)."""
  if isinstance(kernel, jax.core.Tracer):
    return
  k = np.asarray(kernel)
  for one in k.reshape((-1,) + k.shape[-2:]) if k.ndim >= 2 else [k]:
    check_kernel(one)


def blur(x, kernel):
  """2-D convolution of (H, W, C) / (B, H, W, C) images with a (k, k) kernel (or (B, k, k), one per
  image), border by symmetric reflection (scipy.ndimage's "reflect"), output the input's size."""
  single = x.ndim == 3
  if single:
    x = x[None]
  check_concrete_kernels(kernel)
  kernel = jnp.asarray(kernel, x.dtype)
  if kernel.ndim == 2:
    kernel = jnp.broadcast_to(kernel, (x.shape[0],) + kernel.shape)
  r = kernel.shape[-1] // 2
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")

  def one(img, k):  # true convolution: the kernel is flipped
    c = img.shape[-1]
    w = jnp.tile(k[::-1, ::-1, None, None], (1, 1, 1, c))
    return jax.lax.conv_general_dilated(img[None], w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)[0]
  out = jax.vmap(one)(padded, kernel)
  return out[0] if single else out


# -- warping and the Bayer mosaic ------------------------------------------------------------------

def warp(x, shift, angle):
  """Bilinear resampling of one (H, W, C) image: output(p) = x(R(angle)(p - c) + c + shift).

  shift is (dy, dx) in pixels, angle in radians, c the image centre; the border is clamped.
  """
  h, w = x.shape[:2]
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  c, s = jnp.cos(angle), jnp.sin(angle)
  sy = c * (yy - cy) + s * (xx - cx) + cy + shift[0]
  sx = -s * (yy - cy) + c * (xx - cx) + cx + shift[1]
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [sy, sx], order=1, mode="nearest")
  return jnp.stack([sample(x[..., i]) for i in range(x.shape[-1])], axis=-1)


def bayer_mosaic(x):
  """RGGB mosaic of (..., H, W, 3) RGB: (..., H, W) with R at (even, even), G at (even, odd) and
  (odd, even), B at (odd, odd). H and W must be even."""
  h, w = x.shape[-3], x.shape[-2]
  if h % 2 or w % 2:
    raise ValueError(f"a Bayer mosaic needs even sides; got {h}x{w}.")
  row = jnp.arange(h)[:, None] % 2
  col = jnp.arange(w)[None, :] % 2
  channel = jnp.where(row == col, jnp.where(row == 0, 0, 2), 1)  # (H, W) index into RGB
  return jnp.take_along_axis(x, jnp.broadcast_to(channel[..., None], x.shape[:-1] + (1,)), axis=-1)[..., 0]


def pack_bayer(m):
  """(..., H, W) RGGB mosaic -> (..., H/2, W/2, 4) planes in the order R, G1, G2, B."""
  return jnp.stack([m[..., 0::2, 0::2], m[..., 0::2, 1::2], m[..., 1::2, 0::2], m[..., 1::2, 1::2]], axis=-1)


# -- the three tasks -------------------------------------------------------------------------------

def _check_images(x, channels=3):
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"expected a batch of {channels}-channel images (B, H, W, {channels}); got shape {x.shape}.")


@dataclasses.dataclass(frozen=True)
class SuperResolution:
  """4x (or `scale`x) antialiased bicubic down-sampling plus optional Gaussian noise (std in [0, 1] units)."""
  scale: int = 4
  noise_sigma: float = 0.0
  name = "sr"

  def sample(self, rng, batch):
    return {"noise_key": jax.random.split(rng, batch)}

  def operator(self, params):
    del params
    return lambda x: downsample(x, self.scale)

  def apply(self, x, params):
    _check_images(x)
    y = self.operator(params)(x)
    return y + self.noise_sigma * _noise(params["noise_key"], y.shape[1:])

  def observed_shape(self, h, w):
    return (h // self.scale, w // self.scale, 3)


@dataclasses.dataclass(frozen=True)
class Deblur:
  """Blur with a random Gaussian or linear-motion kernel (chosen per image), then Gaussian noise.

  Attributes:
    kernel_size: odd side of the kernels.
    sigma_range: (min, max) std of the Gaussian kernels along their two axes, pixels.
    length_range: (min, max) length of the motion kernels, pixels.
    motion_fraction: probability that an image gets a motion kernel.
    noise_sigma: std of the additive noise, [0, 1] units.
  """
  kernel_size: int = 9
  sigma_range: tuple = (0.8, 2.0)
  length_range: tuple = (3.0, 8.0)
  motion_fraction: float = 0.5
  noise_sigma: float = 0.01
  name = "deblur"

  def sample(self, rng, batch):
    keys = jax.random.split(rng, 6)
    u = lambda k, lo, hi: jax.random.uniform(k, (batch,), minval=lo, maxval=hi)
    sx, sy = u(keys[0], *self.sigma_range), u(keys[1], *self.sigma_range)
    angle = u(keys[2], 0.0, math.pi)
    length = u(keys[3], *self.length_range)
    gauss = jax.vmap(lambda a, b, t: gaussian_kernel(self.kernel_size, a, b, t))(sx, sy, angle)
    motion = jax.vmap(lambda l, t: motion_kernel(self.kernel_size, l, t))(length, angle)
    is_motion = jax.random.uniform(keys[4], (batch,)) < self.motion_fraction
    kernel = jnp.where(is_motion[:, None, None], motion, gauss)
    return {"kernel": kernel, "noise_key": jax.random.split(keys[5], batch)}

  def operator(self, params):
    return lambda x: blur(x, params["kernel"])

  def apply(self, x, params):
    _check_images(x)
    y = self.operator(params)(x)
    return y + self.noise_sigma * _noise(params["noise_key"], y.shape[1:])

  def observed_shape(self, h, w):
    return (h, w, 3)


@dataclasses.dataclass(frozen=True)
class RawBurst:
  """A synthetic RAW burst: `frames` warped copies (frame 0 unwarped), `scale`x down, RGGB mosaic,
  shot + read noise (variance shot * x + read^2, the heteroscedastic Gaussian model of RAW sensors).

  Attributes:
    frames: burst length B.
    scale: down-sampling factor.
    max_shift: shifts are uniform in [-max_shift, max_shift] low-resolution pixels (sub-pixel).
    max_rotation_deg: rotations are uniform in [-max, max] degrees.
    shot, read: the noise parameters ([0, 1] units; read is a standard deviation).
  Observation: (B, frames, H/scale, W/scale) mosaics.
  """
  frames: int = 4
  scale: int = 4
  max_shift: float = 1.0
  max_rotation_deg: float = 1.0
  shot: float = 2e-3
  read: float = 5e-3
  name = "burst"

  def sample(self, rng, batch):
    ks, ka, kn = jax.random.split(rng, 3)
    shift = jax.random.uniform(ks, (batch, self.frames, 2), minval=-self.max_shift, maxval=self.max_shift)
    angle = jax.random.uniform(ka, (batch, self.frames), minval=-1.0, maxval=1.0)
    angle = angle * math.radians(self.max_rotation_deg)
    first = jnp.arange(self.frames) == 0  # the reference frame is not moved
    shift = jnp.where(first[None, :, None], 0.0, shift)
    angle = jnp.where(first[None, :], 0.0, angle)
    return {"shift": shift, "angle": angle, "noise_key": jax.random.split(kn, batch)}

  def operator(self, params):
    def forward(x):
      def frames(img, shifts, angles):  # shifts in high-resolution pixels here
        moved = jax.vmap(lambda s, a: warp(img, s * self.scale, a))(shifts, angles)
        return bayer_mosaic(downsample(moved, self.scale))
      return jax.vmap(frames)(x, params["shift"], params["angle"])
    return forward

  def apply(self, x, params):
    _check_images(x)
    clean = self.operator(params)(x)
    z = _noise(params["noise_key"], clean.shape[1:])
    return clean + jnp.sqrt(jnp.maximum(self.shot * clean, 0.0) + self.read ** 2) * z

  def observed_shape(self, h, w):
    return (self.frames, h // self.scale, w // self.scale)


def _noise(keys, shape):
  return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


TASKS = {"sr": SuperResolution, "deblur": Deblur, "burst": RawBurst}


def create(name, **kwargs):
  """A degradation by task name: "sr", "deblur" or "burst" (keywords: the dataclass fields)."""
  if name not in TASKS:
    raise ValueError(f"unknown restoration task {name!r}; choose one of {', '.join(TASKS)}.")
  return TASKS[name](**kwargs)


def record(task, params):
  """The parameters of a degradation as a flat dict of numpy arrays (for np.savez), with the task's
  settings, so that ``replay(record)`` rebuilds the task and its parameters."""
  out = {f"param/{k}": np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key)
                                  else v) for k, v in params.items()}
  out["task"] = np.asarray(task.name)
  for f in dataclasses.fields(task):
    out[f"setting/{f.name}"] = np.asarray(getattr(task, f.name))
  return out


def replay(recorded):
  """(task, params) from a `record` dict."""
  settings = fields.hashable({k.split("/", 1)[1]: v.tolist() for k, v in recorded.items()
                              if k.startswith("setting/")})
  task = create(str(recorded["task"]), **settings)
  params = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in recorded.items() if k.startswith("param/")}
  return task, params
