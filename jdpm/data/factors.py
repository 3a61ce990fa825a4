"""Image data sets with known ground-truth factors, rendered by index (numpy only).

- `DSprites`: 2-D sprites, shape 3 (square, ellipse, heart) x scale 6 x orientation 40 x position x 32 x
  position y 32, 64x64 binary, factor values as the original data set (scale 0.5..1, orientation 0..2 pi,
  positions 0..1).
- `Shapes3D`: a 3-D room in the manner of the 3dshapes data set: floor hue 10 x wall hue 10 x object hue 10
  x scale 8 x shape 4 (cube, cylinder, sphere, capsule) x orientation 15 (camera azimuth -30..30 degrees),
  64x64 RGB, ray-cast in numpy (floor and wall planes, a lit object on the floor).

Images are indexed in the official row-major factor order (the last factor varies fastest), exactly as
disentanglement_lib's `factor_bases`, so index i of the full data set is the same factor tuple as row i of
the original arrays. Nothing is stored: `source[i]` renders one image, `render(factors)` a batch.

Downscaled variants (`.tiny()`, or any `num_values`/`image_size`) keep evenly spaced values of each factor
and render smaller images, for CPU-budget training; they index their own (smaller) factor grid.

Every source is a random-access source (`len`, `__getitem__` -> {"image": uint8 (H, W, C), "factors": int64
(F,), "index": int64}), usable with Grain, and a disentanglement_lib ground-truth source
(`sample_factors`, `sample_observations_from_factors`) for `jdpm.eval.disentanglement`.
"""

import colorsys

import numpy as np


class FactorSource:
  """Base class: a grid of factor values rendered to images on demand.

  Subclasses set `factor_names`, `full_values` (one array of values per factor) and implement
  `_render(values)` where `values` is a list of per-factor value arrays (B,), returning float (B, H, W, C)
  in [0, 1] at `self.image_size`.

  Args:
    image_size: side of the rendered images in pixels.
    num_values: per factor, how many evenly spaced values of the full range to keep (None = all).
  """

  factor_names: tuple = ()
  full_values: tuple = ()
  channels = 3

  def __init__(self, image_size=64, num_values=None):
    full_sizes = [len(v) for v in self.full_values]
    if num_values is None:
      num_values = full_sizes
    if len(num_values) != len(full_sizes):
      raise ValueError(f"{type(self).__name__}: num_values needs one count per factor {self.factor_names}; "
                       f"got {list(num_values)}.")
    for name, n, full in zip(self.factor_names, num_values, full_sizes):
      if not 1 <= n <= full:
        raise ValueError(f"{type(self).__name__}: factor {name!r} has {full} values; num_values {n} is out of "
                         f"range 1..{full}.")
    if image_size < 8:
      raise ValueError(f"image_size must be at least 8 pixels; got {image_size}.")
    self.image_size = int(image_size)
    # Evenly spaced picks of the full value lists (all of them when n == full).
    self.value_indices = [np.round(np.linspace(0, full - 1, n)).astype(np.int64)
                          for n, full in zip(num_values, full_sizes)]
    self.values = [np.asarray(v)[idx] for v, idx in zip(self.full_values, self.value_indices)]
    self.factor_sizes = [int(n) for n in num_values]
    # Row-major strides: index = sum(factor_k * prod(sizes[k+1:])).
    self.factor_bases = np.prod(self.factor_sizes) // np.cumprod(self.factor_sizes)
    self.num_images = int(np.prod(self.factor_sizes))

  # --------------------------------------------------------------------------------- index <-> factors

  def index_of(self, factors):
    """Row-major index (N,) int64 of factor tuples (N, F) (or one tuple (F,) -> scalar)."""
    factors = np.asarray(factors, dtype=np.int64)
    self._check_factors(factors)
    return factors @ self.factor_bases

  def factors_of(self, index):
    """Factor tuples (N, F) int64 of row-major indices (N,) (or one index -> (F,))."""
    index = np.asarray(index, dtype=np.int64)
    if np.any(index < 0) or np.any(index >= self.num_images):
      raise IndexError(f"{type(self).__name__} index out of range 0..{self.num_images - 1}.")
    return (index[..., None] // self.factor_bases) % np.asarray(self.factor_sizes)

  def _check_factors(self, factors):
    if factors.shape[-1:] != (len(self.factor_sizes),):
      raise ValueError(f"{type(self).__name__} has {len(self.factor_sizes)} factors {self.factor_names}; got "
                       f"factor tuples of shape {factors.shape}.")
    if np.any(factors < 0) or np.any(factors >= np.asarray(self.factor_sizes)):
      raise ValueError(f"{type(self).__name__}: factor values out of range; sizes are {self.factor_sizes}.")

  # --------------------------------------------------------------------------------- rendering

  def render(self, factors):
    """Float images (N, H, W, C) in [0, 1] of factor tuples (N, F)."""
    factors = np.asarray(factors, dtype=np.int64).reshape(-1, len(self.factor_sizes))
    self._check_factors(factors)
    return self._render([v[factors[:, k]] for k, v in enumerate(self.values)]).astype(np.float32)

  def render_indices(self, indices):
    return self.render(self.factors_of(np.asarray(indices).reshape(-1)))

  def all_images(self, batch_size=64):
    """Every image (num_images, H, W, C) float32, in index order (only sensible for downscaled variants)."""
    return np.concatenate([self.render_indices(np.arange(i, min(i + batch_size, self.num_images)))
                           for i in range(0, self.num_images, batch_size)])

  def _render(self, values):
    raise NotImplementedError

  # --------------------------------------------------------------------------------- random access

  def __len__(self):
    return self.num_images

  def __getitem__(self, index):
    index = int(index)
    factors = self.factors_of(index)
    image = np.round(self.render(factors[None])[0] * 255).astype(np.uint8)
    return {"image": image, "factors": factors, "index": np.int64(index)}

  # --------------------------------------------------------------------------------- disentanglement_lib protocol

  def sample_factors(self, num, random_state):
    """(num, F) random factor tuples: one `randint` per factor, in factor order (the library's order)."""
    return np.stack([random_state.randint(n, size=num) for n in self.factor_sizes], axis=1).astype(np.int64)

  def sample_observations_from_factors(self, factors, random_state):
    del random_state  # every factor is latent: nothing else to draw
    return self.render(factors)


# ------------------------------------------------------------------------------------------ dSprites


def _heart_inside(u, v):
  """Inside test of a heart of unit size centred at the origin (v points up)."""
  x, y = 1.15 * u, 1.15 * v + 0.15
  return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


class DSprites(FactorSource):
  """dSprites-like 2-D sprites (binary, one channel): shape, scale, orientation, position x, position y."""

  factor_names = ("shape", "scale", "orientation", "position_x", "position_y")
  full_values = (np.arange(1, 4), np.linspace(0.5, 1.0, 6), np.linspace(0.0, 2 * np.pi, 40),
                 np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))
  shape_names = ("square", "ellipse", "heart")
  channels = 1
  _supersample = 3

  @classmethod
  def tiny(cls, image_size=32):
    """A 3 x 3 x 4 x 6 x 6 grid (1296 images) at 32x32, for CPU training."""
    return cls(image_size=image_size, num_values=(3, 3, 4, 6, 6))

  def sample_observations_from_factors(self, factors, random_state):
    # The original has a constant colour factor (1 value) sampled here; randint(1) draws nothing.
    random_state.randint(1, size=len(factors))
    return self.render(factors)

  def _render(self, values):
    shape, scale, angle, px, py = values
    s, n = self.image_size, self._supersample
    grid = (np.arange(s * n) + 0.5) / (s * n)  # pixel centres in [0, 1]
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    # Centres span the middle of the canvas as in the original (sprites never leave the image).
    cx = (0.2 + 0.6 * px)[:, None, None]
    cy = (0.2 + 0.6 * py)[:, None, None]
    half = (0.14 * scale)[:, None, None]  # half extent of a scale-1 sprite
    c, sn = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx, dy = gx[None] - cx, gy[None] - cy
    u = (c * dx + sn * dy) / half  # sprite frame, rotated by `angle`
    v = (-sn * dx + c * dy) / half
    shape = shape[:, None, None]
    inside = np.where(shape == 1, (np.abs(u) <= 1) & (np.abs(v) <= 1),
                      np.where(shape == 2, (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1, _heart_inside(u, -v)))
    coverage = inside.reshape(len(u), s, n, s, n).mean(axis=(2, 4))
    return (coverage >= 0.5)[..., None].astype(np.float32)


# ------------------------------------------------------------------------------------------ Shapes3D


def _hue_rgb(hue, saturation=0.85, value=0.95):
  return np.array([colorsys.hsv_to_rgb(h, saturation, value) for h in np.atleast_1d(hue)])


def _object_sdf(p, shape, scale):
  """Signed distance (N, R) of points p (N, R, 3) in the object frame to each image's object."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  s = scale[:, None]
  shape = shape[:, None]
  # cube: half side 0.5 s resting on the floor
  q = np.stack([np.abs(x), np.abs(y - 0.5 * s), np.abs(z)], -1) - 0.5 * s[..., None]
  cube = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
  # cylinder: radius 0.5 s, height s, vertical axis
  dr = np.sqrt(x * x + z * z) - 0.5 * s
  dh = np.abs(y - 0.5 * s) - 0.5 * s
  cylinder = np.minimum(np.maximum(dr, dh), 0) + np.sqrt(np.maximum(dr, 0) ** 2 + np.maximum(dh, 0) ** 2)
  sphere = np.sqrt(x * x + (y - 0.5 * s) ** 2 + z * z) - 0.5 * s
  # capsule: radius 0.3 s, vertical segment from 0.3 s to 0.9 s
  r = 0.3 * s
  yc = np.clip(y, r, 1.2 * s - r)
  capsule = np.sqrt(x * x + (y - yc) ** 2 + z * z) - r
  return np.select([shape == 0, shape == 1, shape == 2], [cube, cylinder, sphere], capsule)


class Shapes3D(FactorSource):
  """3dshapes-like scenes: floor hue, wall hue, object hue, scale, shape, orientation (camera azimuth)."""

  factor_names = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
  full_values = (np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10),
                 np.linspace(0.75, 1.25, 8), np.arange(4), np.linspace(-30.0, 30.0, 15))
  shape_names = ("cube", "cylinder", "sphere", "capsule")
  _supersample = 2
  _march_steps = 40
  _light = np.array([-0.4, 0.8, -0.45]) / np.linalg.norm([-0.4, 0.8, -0.45])

  @classmethod
  def tiny(cls, image_size=32):
    """A 4 x 4 x 4 x 3 x 4 x 3 grid (2304 images) at 32x32, for CPU training."""
    return cls(image_size=image_size, num_values=(4, 4, 4, 3, 4, 3))

  def _rays(self, azimuth_deg):
    """Camera rays: origins (B, 3) and unit directions (B, R, 3) for an orbit at the given azimuths."""
    s = self.image_size * self._supersample
    phi = np.deg2rad(azimuth_deg)
    eye = np.stack([4.0 * np.sin(phi), np.full_like(phi, 1.6), -4.0 * np.cos(phi)], -1)
    target = np.array([0.0, 0.45, 0.0])
    forward = target - eye
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(forward, right)
    t = (np.arange(s) + 0.5) / s * 2 - 1
    v, u = np.meshgrid(-t, t, indexing="ij")
    fov = np.tan(np.deg2rad(22.0))
    d = (forward[:, None, :] + fov * (u.reshape(1, -1, 1) * right[:, None, :] + v.reshape(1, -1, 1) * up[:, None, :]))
    return eye, d / np.linalg.norm(d, axis=-1, keepdims=True)

  def _render(self, values):
    floor_hue, wall_hue, object_hue, scale, shape, azimuth = values
    b = len(floor_hue)
    eye, d = self._rays(azimuth)
    o = np.broadcast_to(eye[:, None, :], d.shape)
    far = 1e3
    # Planes: floor y = 0, back wall z = 2.2 (in world space; the camera orbits, the room stays).
    t_floor = np.where(d[..., 1] < -1e-6, -o[..., 1] / np.minimum(d[..., 1], -1e-6), far)
    t_wall = np.where(d[..., 2] > 1e-6, (2.2 - o[..., 2]) / np.maximum(d[..., 2], 1e-6), far)
    # Object: sphere tracing of its signed distance.
    t = np.full(d.shape[:2], 2.0)
    for _ in range(self._march_steps):
      t = t + _object_sdf(o + t[..., None] * d, shape, scale)
    p = o + t[..., None] * d
    hit = (_object_sdf(p, shape, scale) < 2e-3) & (t < np.minimum(t_floor, t_wall))
    eps = 1e-3
    normal = np.stack([_object_sdf(p + eps * e, shape, scale) - _object_sdf(p - eps * e, shape, scale)
                       for e in np.eye(3)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    object_shade = 0.35 + 0.65 * np.clip(normal @ self._light, 0, 1)
    floor_shade = 0.55 + 0.45 * self._light[1]
    wall_shade = 0.55 + 0.45 * max(-self._light[2], 0.0)
    floor_rgb, wall_rgb, object_rgb = _hue_rgb(floor_hue), _hue_rgb(wall_hue), _hue_rgb(object_hue)
    on_floor = (t_floor <= t_wall)[..., None]
    background = np.where(on_floor, floor_rgb[:, None] * floor_shade, wall_rgb[:, None] * wall_shade)
    rgb = np.where(hit[..., None], object_rgb[:, None] * object_shade[..., None], background)
    n = self._supersample
    rgb = rgb.reshape(b, self.image_size, n, self.image_size, n, 3).mean(axis=(2, 4))
    return np.clip(rgb, 0, 1)


SOURCES = {"dsprites": DSprites, "shapes3d": Shapes3D}


def make_source(name, image_size=None):
  """`"dsprites"`, `"shapes3d"` (full size) or `"dsprites/tiny"`, `"shapes3d/tiny"` (downscaled grids);
  `image_size` overrides the rendering size (64 full, 32 tiny)."""
  base, _, variant = name.partition("/")
  if base not in SOURCES or variant not in ("", "tiny"):
    raise ValueError(f"Unknown factor data set {name!r}; use dsprites, shapes3d, dsprites/tiny or shapes3d/tiny.")
  cls = SOURCES[base]
  if variant == "tiny":
    return cls.tiny(image_size or 32)
  return cls(image_size=image_size or 64)
