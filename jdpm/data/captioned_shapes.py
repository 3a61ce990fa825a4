"""Captioned procedural scenes for a text-to-image model that trains on a CPU (numpy only).

A scene holds one or two objects on a dark background, 16x16 RGB by default:
  * one object: "a big red square" (size, colour, shape; near the centre),
  * two objects: "a red ring left of a blue square" (colour and shape of each, and their relation:
    "left of", "right of", "above", "below"; the first-named object is the relation's subject).
Shapes are drawn with the geometry of `jdpm.data.shapes` (circle, square, triangle, ring), anti-aliased
by 4x4 supersampling. Scene `i` of a seed depends on (seed, i) alone.

Every scene also has *canonical labels*, what a proxy classifier predicts from the image and what a
caption implies: the layout (single, horizontal, vertical), the shape and colour of slot 0 (the single
object, or the left / top one) and slot 1 (the right / bottom one, or "none"), and the size (single
objects; else "none"). `labels_from_caption` derives them from any caption of this grammar, so a prompt's
alignment can be measured on generated images.
"""

import dataclasses

import numpy as np

from jdpm.data import shapes as shapes_lib

SHAPES = ("circle", "square", "triangle", "ring")
COLOURS = {"red": (220, 50, 50), "green": (50, 190, 60), "blue": (60, 90, 235), "yellow": (230, 210, 40)}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "big")
RELATIONS = ("left of", "right of", "above", "below")
LAYOUTS = ("single", "horizontal", "vertical")
BACKGROUND = (28, 28, 32)
# Every word of the grammar (the tokenizer's vocabulary, after its start and end tokens).
WORDS = ("a",) + SIZES + COLOUR_NAMES + SHAPES + ("left", "right", "of", "above", "below")
NONE = "none"
# Canonical label heads: name → class names (slot 1 and size have a "none" class).
HEADS = {"layout": LAYOUTS, "shape0": SHAPES, "colour0": COLOUR_NAMES, "shape1": SHAPES + (NONE,),
         "colour1": COLOUR_NAMES + (NONE,), "size": SIZES + (NONE,)}

IMAGE_SIZE = 16
_SUPERSAMPLE = 4
# Radii in pixels (the shape's unit radius) and centre jitter, for a 16-pixel canvas (scaled with it).
_SINGLE_RADIUS = {"small": 3.4, "big": 5.6}
_PAIR_RADIUS = 3.1
_JITTER = 1.2


@dataclasses.dataclass(frozen=True)
class Scene:
  """One scene: objects as (shape, colour, size, (x, y) centre, radius), and its caption."""
  objects: tuple
  caption: str


def _scene(rng, size):
  scale = size / IMAGE_SIZE
  jitter = lambda: rng.uniform(-_JITTER, _JITTER, size=2) * scale
  shape = lambda: SHAPES[rng.integers(len(SHAPES))]
  colour = lambda: COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
  if rng.random() < 0.4:
    s, c, z = shape(), colour(), SIZES[rng.integers(2)]
    centre = np.full(2, size / 2) + jitter()
    return Scene(((s, c, z, centre, _SINGLE_RADIUS[z] * scale),), f"a {z} {c} {s}")
  (sa, ca), (sb, cb) = (shape(), colour()), (shape(), colour())
  while (sb, cb) == (sa, ca):  # two identical objects would make the relation unreadable
    sb, cb = shape(), colour()
  relation = RELATIONS[rng.integers(len(RELATIONS))]
  near, far = size * 0.28, size * 0.72
  axis = 0 if relation in ("left of", "right of") else 1
  first_low = relation in ("left of", "above")  # the subject sits at the smaller coordinate
  pos_a, pos_b = np.full(2, size / 2), np.full(2, size / 2)
  pos_a[axis], pos_b[axis] = (near, far) if first_low else (far, near)
  objects = ((sa, ca, None, pos_a + jitter(), _PAIR_RADIUS * scale),
             (sb, cb, None, pos_b + jitter(), _PAIR_RADIUS * scale))
  return Scene(objects, f"a {ca} {sa} {relation} a {cb} {sb}")


def scenes(indices, seed=0, size=IMAGE_SIZE):
  """The scenes of the given indices (each drawn from a generator seeded by (seed, index))."""
  return [_scene(np.random.default_rng((seed, int(i))), size) for i in np.atleast_1d(indices)]


def render(scene_list, size=IMAGE_SIZE):
  """Scenes → uint8 images (N, size, size, 3)."""
  s = _SUPERSAMPLE
  offsets = (np.arange(size * s) + 0.5) / s
  ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
  images = np.empty((len(scene_list), size, size, 3), np.float64)
  for n, scene in enumerate(scene_list):
    image = np.broadcast_to(np.asarray(BACKGROUND, np.float64), (size, size, 3)).copy()
    for shape, colour, _, centre, radius in scene.objects:
      inside = shapes_lib._inside(shape, (xs - centre[0]) / radius, (ys - centre[1]) / radius)
      coverage = inside.reshape(size, s, size, s).mean(axis=(1, 3))[..., None]
      image = coverage * np.asarray(COLOURS[colour]) + (1 - coverage) * image
    images[n] = image
  return np.round(images).astype(np.uint8)


def labels_from_caption(caption):
  """Canonical labels {head: class index} implied by a caption of the grammar (see module docstring).

  Raises ValueError for a caption outside the grammar."""
  words = caption.split()
  index = {h: {name: i for i, name in enumerate(names)} for h, names in HEADS.items()}
  try:
    if len(words) == 4 and words[0] == "a":
      _, z, c, s = words
      return dict(layout=0, shape0=index["shape0"][s], colour0=index["colour0"][c], shape1=index["shape1"][NONE],
                  colour1=index["colour1"][NONE], size=index["size"][z])
    if words[0] == "a" and len(words) in (7, 8):
      ca, sa = words[1], words[2]
      relation = " ".join(words[3:-3])
      if words[-3] != "a" or relation not in RELATIONS:
        raise KeyError(relation)
      cb, sb = words[-2], words[-1]
      first_low = relation in ("left of", "above")
      (s0, c0), (s1, c1) = ((sa, ca), (sb, cb)) if first_low else ((sb, cb), (sa, ca))
      layout = 1 if relation in ("left of", "right of") else 2
      return dict(layout=layout, shape0=index["shape0"][s0], colour0=index["colour0"][c0],
                  shape1=index["shape1"][s1], colour1=index["colour1"][c1], size=index["size"][NONE])
  except KeyError:
    pass
  raise ValueError(f"caption {caption!r} is outside the scene grammar: 'a <size> <colour> <shape>' or "
                   f"'a <colour> <shape> <left of|right of|above|below> a <colour> <shape>' with sizes "
                   f"{SIZES}, colours {COLOUR_NAMES}, shapes {SHAPES}.")


def label_arrays(captions):
  """{head: (N,) int32} canonical labels of many captions."""
  rows = [labels_from_caption(c) for c in captions]
  return {h: np.asarray([r[h] for r in rows], np.int32) for h in HEADS}


def generate(num, seed=0, size=IMAGE_SIZE, start=0):
  """(images uint8 (N, size, size, 3), captions list of N strings, labels {head: (N,)})."""
  scene_list = scenes(np.arange(start, start + num), seed, size)
  captions = [s.caption for s in scene_list]
  return render(scene_list, size), captions, label_arrays(captions)


def to_model_range(images):
  """uint8 images → float32 in [-1, 1]."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def foreground_mask(images, threshold=0.25):
  """(N, H, W) bool: pixels that differ from the background by more than `threshold` of the [-1, 1]
  range in some channel (images in [-1, 1]); the objects' silhouettes."""
  background = to_model_range(np.asarray(BACKGROUND, np.uint8))
  return np.max(np.abs(np.asarray(images) - background), axis=-1) > 2 * threshold
