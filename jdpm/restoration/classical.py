"""Classical restorers, usable as phi_IR: bicubic up-sampling, Wiener deconvolution, burst mean-after-alignment.

Each is a function ``y -> x0_IR`` on a batch, in [0, 1], after its settings are bound (functools.partial).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jdpm.restoration import degradations


def bicubic(y, scale=4):
  """The SR baseline: PIL-bicubic up-sampling of (B, h, w, 3) by `scale`."""
  return jnp.clip(degradations.upsample(y, scale), 0.0, 1.0)


def wiener(y, kernel, noise_sigma=0.01, signal_power=None):
  """Wiener deconvolution of (B, H, W, 3) blurred images with their (B, k, k) (or (k, k)) kernels.

  X = conj(K) Y / (|K|^2 + noise_power / signal_power), computed by FFT after symmetric padding by
  the kernel size (so that the circular model of the FFT sees no border jump); signal_power
  defaults to each image's variance.
  """
  y = jnp.asarray(y)
  b, h, w, _ = y.shape
  degradations.check_concrete_kernels(kernel)
  kernel = jnp.broadcast_to(jnp.asarray(kernel, jnp.float32), (b,) + jnp.shape(kernel)[-2:])
  k = kernel.shape[-1]
  p = k
  padded = jnp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)), mode="symmetric")
  hh, ww = h + 2 * p, w + 2 * p
  # The kernel embedded at the origin of a full-size array (its centre at (0, 0), wrapped around).
  full = jnp.zeros((b, hh, ww)).at[:, :k, :k].set(kernel)
  full = jnp.roll(full, (-(k // 2), -(k // 2)), axis=(1, 2))
  kf = jnp.fft.fft2(full)[..., None]
  yf = jnp.fft.fft2(padded, axes=(1, 2))
  power = jnp.var(y, axis=(1, 2, 3)) if signal_power is None else jnp.full((b,), signal_power)
  nsr = (noise_sigma ** 2 / jnp.maximum(power, 1e-6))[:, None, None, None]
  x = jnp.real(jnp.fft.ifft2(jnp.conj(kf) * yf / (jnp.abs(kf) ** 2 + nsr), axes=(1, 2)))
  return jnp.clip(x[:, p:p + h, p:p + w], 0.0, 1.0)


def demosaic_bilinear(m):
  """(..., H, W) RGGB mosaic -> (..., H, W, 3) by normalised bilinear interpolation of each channel."""
  h, w = m.shape[-2:]
  row = np.arange(h)[:, None] % 2
  col = np.arange(w)[None, :] % 2
  masks = np.stack([(row == 0) & (col == 0), row != col, (row == 1) & (col == 1)], axis=-1).astype(np.float32)
  lead = m.shape[:-2]
  flat = m.reshape((-1, h, w, 1)) * masks
  kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4.0
  num = degradations.blur(flat, kernel / kernel.sum())
  den = degradations.blur(jnp.broadcast_to(masks, flat.shape), kernel / kernel.sum())
  return (num / den).reshape(lead + (h, w, 3))


def phase_correlation_shift(ref, img):
  """The integer (dy, dx) such that img(p) ~ ref(p - (dy, dx)), by phase correlation of 2-D arrays."""
  f = np.fft.fft2(np.asarray(img)) * np.conj(np.fft.fft2(np.asarray(ref)))
  corr = np.real(np.fft.ifft2(f / np.maximum(np.abs(f), 1e-12)))
  dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
  h, w = corr.shape
  return (dy - h if dy > h // 2 else dy), (dx - w if dx > w // 2 else dx)


def burst_mean(y, scale=4, shift=None, angle=None):
  """Burst mean-after-alignment: demosaic, bicubic up-sampling, alignment to frame 0, mean.

  Args:
    y: (B, frames, h, w) RGGB mosaics.
    shift, angle: the burst's recorded motion ((B, frames, 2) low-resolution pixels, (B, frames)
      radians) for oracle alignment; None estimates integer high-resolution translations by phase
      correlation of the green channel (rotations are then ignored).
  Returns:
    (B, h * scale, w * scale, 3) in [0, 1].
  """
  y = jnp.asarray(y)
  b, n, h, w = y.shape
  rgb = demosaic_bilinear(y)                                        # (B, n, h, w, 3)
  up = degradations.upsample(rgb.reshape(b * n, h, w, 3), scale).reshape(b, n, h * scale, w * scale, 3)
  out = []
  for i in range(b):
    frames = []
    for k in range(n):
      if shift is not None:
        a = -angle[i, k]
        s = jnp.asarray(shift[i, k]) * scale
        c, si = jnp.cos(a), jnp.sin(a)
        back = -jnp.array([c * s[0] + si * s[1], -si * s[0] + c * s[1]])  # -R(-angle) s
        frames.append(degradations.warp(up[i, k], back, a))
      else:
        dy, dx = phase_correlation_shift(up[i, 0, ..., 1], up[i, k, ..., 1])
        frames.append(degradations.warp(up[i, k], jnp.array([dy, dx], jnp.float32), 0.0))
    out.append(jnp.mean(jnp.stack(frames), axis=0))
  return jnp.clip(jnp.stack(out), 0.0, 1.0)


def jitted(fn, **settings):
  """`fn` with its settings bound and jit-compiled (for the JAX-only baselines)."""
  return jax.jit(lambda y: fn(y, **settings))
