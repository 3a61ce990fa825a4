"""`shapes`: a procedurally generated, class-conditional 32x32 RGB dataset (numpy only).

Ten classes = five shapes x two colours. Each example draws, from a generator seeded by (seed, split,
index) alone, a position, size, rotation, a jittered foreground colour and a tinted grey background, and is
rendered with 4x4 supersampling (anti-aliased edges). Example `i` of a split therefore never depends on the
other examples or on the order of generation, and its label is `i % 10`, so every split is exactly balanced.

Small enough that a tiny diffusion model learns it on a CPU in minutes; the full set (20k train, 2k test)
builds in seconds.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jdpm.data import storage

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {"red": (205, 45, 45), "blue": (40, 80, 215)}
# Class k is SHAPES[k // 2] in colour k % 2.
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
NUM_CLASSES = len(CLASS_NAMES)

IMAGE_SIZE = 32
_SUPERSAMPLE = 4  # sub-pixel samples per pixel along each axis
_SPLIT_IDS = {"train": 0, "test": 1}

# Sizes in pixels: the shape's circumscribed radius and the foreground colour's per-channel jitter.
_RADIUS_RANGE = (6.0, 11.0)
_COLOUR_JITTER = 20
_BACKGROUND_GREY_RANGE = (120, 236)
_BACKGROUND_TINT = 25


@dataclasses.dataclass(frozen=True)
class ShapeParams:
  """Everything needed to render one example; all arrays have a leading example axis (N,)."""
  label: np.ndarray  # int64, class index
  center: np.ndarray  # float (N, 2), (x, y) in pixels, origin at the top-left corner
  radius: np.ndarray  # float, pixels
  angle: np.ndarray  # float, radians, counter-clockwise
  foreground: np.ndarray  # float (N, 3), RGB in [0, 255]
  background: np.ndarray  # float (N, 3), RGB in [0, 255]


def example_params(split: str, indices, seed: int = 0) -> ShapeParams:
  """Random parameters of examples `indices` of `split`, each from its own generator seeded by (seed, split, i).

  Args:
    split: "train" or "test".
    indices: int sequence of example indices within the split.
    seed: dataset-level seed (a different seed gives a different dataset).
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"Unknown shapes split {split!r}; use one of {sorted(_SPLIT_IDS)}.")
  indices = np.asarray(indices, dtype=np.int64).reshape(-1)
  n = len(indices)
  center = np.empty((n, 2))
  radius = np.empty(n)
  angle = np.empty(n)
  foreground = np.empty((n, 3))
  background = np.empty((n, 3))
  for row, index in enumerate(indices):
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], int(index)])
    r = rng.uniform(*_RADIUS_RANGE)
    # Keep the whole shape inside the image: the triangle reaches 1.2 r from its centre.
    margin = 1.2 * r + 0.5
    radius[row] = r
    center[row] = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
    angle[row] = rng.uniform(0.0, 2 * np.pi)
    base = np.array(list(COLOURS.values())[int(index) % NUM_CLASSES % len(COLOURS)], dtype=np.float64)
    foreground[row] = np.clip(base + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3), 0, 255)
    grey = rng.uniform(*_BACKGROUND_GREY_RANGE)
    background[row] = np.clip(grey + rng.uniform(-_BACKGROUND_TINT, _BACKGROUND_TINT, size=3), 0, 255)
  return ShapeParams(label=indices % NUM_CLASSES, center=center, radius=radius, angle=angle,
                     foreground=foreground, background=background)


def _inside(shape: str, u, v):
  """Whether points (u, v), in units of the radius and in the shape's own frame, lie inside `shape`."""
  if shape == "circle":
    return u * u + v * v <= 1.0
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if shape == "triangle":
    # Equilateral, inradius 0.6 (circumradius 1.2); edge normals at 90, 210 and 330 degrees.
    inside = v <= 0.6
    for phi in (7 * np.pi / 6, 11 * np.pi / 6):
      inside &= u * np.cos(phi) + v * np.sin(phi) <= 0.6
    return inside
  if shape == "cross":
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
  if shape == "ring":
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)
  raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")


def render(params: ShapeParams) -> np.ndarray:
  """Renders examples to uint8 images (N, 32, 32, 3), anti-aliased by 4x4 supersampling."""
  n = len(params.label)
  s = _SUPERSAMPLE
  # Sub-pixel sample positions: pixel (row y, column x) covers [x, x+1) x [y, y+1).
  offsets = ((np.arange(IMAGE_SIZE * s) + 0.5) / s).astype(np.float32)
  ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
  xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)
  coverage = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
  shape_ids = params.label // len(COLOURS)
  for shape_id, shape in enumerate(SHAPES):
    rows = np.flatnonzero(shape_ids == shape_id)
    if not len(rows):
      continue
    inv_radius = (1.0 / params.radius[rows, None]).astype(np.float32)
    dx = (xs - params.center[rows, :1].astype(np.float32)) * inv_radius
    dy = (ys - params.center[rows, 1:].astype(np.float32)) * inv_radius
    # Rotate the sample points by -angle into the shape's frame.
    cos = np.cos(params.angle[rows, None]).astype(np.float32)
    sin = np.sin(params.angle[rows, None]).astype(np.float32)
    inside = _inside(shape, cos * dx + sin * dy, cos * dy - sin * dx)
    inside = inside.reshape(len(rows), IMAGE_SIZE, s, IMAGE_SIZE, s)
    coverage[rows] = inside.sum(axis=(2, 4), dtype=np.int32) / np.float32(s * s)
  coverage = coverage[..., None].astype(np.float64)  # (N, 32, 32, 1) in [0, 1]
  image = (coverage * params.foreground[:, None, None, :] +
           (1 - coverage) * params.background[:, None, None, :])
  return np.round(image).astype(np.uint8)


def generate(split: str, indices, seed: int = 0):
  """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of examples `indices` of `split`."""
  params = example_params(split, indices, seed)
  return render(params), params.label


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes and the dataset seed."""
  num_train: int = 20_000
  num_test: int = 2_000
  seed: int = 0


class Shapes(storage.ArrayRecordBuilder, skip_registration=True):
  """TFDS builder of `shapes`; configs "default" (20k/2k) and "tiny" (500/100, for smoke tests)."""

  name = "shapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", description="20,000 train and 2,000 test examples."),
      ShapesConfig(name="tiny", num_train=500, num_test=100, description="500 train and 100 test examples."),
  ]
  _CHUNK = 512  # examples rendered at once

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": storage.image_feature((IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": storage.label_feature(),
        }),
        supervised_keys=("image", "label"),
        # Record i of a split is example i (labels i % 10): keeps the data source order meaningful.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test)}

  def _generate_examples(self, split, num_examples):
    seed = self.builder_config.seed
    for start in range(0, num_examples, self._CHUNK):
      indices = np.arange(start, min(start + self._CHUNK, num_examples))
      images, labels = generate(split, indices, seed)
      for index, image, label in zip(indices, images, labels):
        yield int(index), {"image": image, "label": label}
