"""Clean RGB images for restoration: the photographs shipped inside scikit-image and scikit-learn,
procedural textures, and a loader for a folder of the user's own images (DIV2K, GoPro, ...).

Everything is float32 in [0, 1], (N, P, P, 3) patches. The train/test split is by *source image*:
a test patch never comes from an image that gave a training patch.

  train: scikit-image's astronaut, coffee, rocket, hubble_deep_field, immunohistochemistry, camera,
         brick, grass;
         scikit-learn's china.jpg; procedural textures with seeds 0..7.
  test:  scikit-image's chelsea, retina, gravel; scikit-learn's flower.jpg; textures with seeds
         100..103.

Images are first shrunk by `downscale` (PIL's antialiased bicubic) so that a small patch holds
edges and texture rather than a flat area, then cut into a grid of non-overlapping patches.
"""

import pathlib

import numpy as np
from PIL import Image

TRAIN_SKIMAGE = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "brick",
                 "grass")
TEST_SKIMAGE = ("chelsea", "retina", "gravel")
TRAIN_SKLEARN = ("china.jpg",)
TEST_SKLEARN = ("flower.jpg",)
TRAIN_TEXTURE_SEEDS = tuple(range(8))
TEST_TEXTURE_SEEDS = tuple(range(100, 104))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _to_rgb_float(a):
  a = np.asarray(a)
  if a.dtype == np.uint8:
    a = a.astype(np.float32) / 255.0
  a = a.astype(np.float32)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  return a[..., :3]


def _shrink(img, downscale):
  if downscale == 1:
    return img
  h, w = img.shape[:2]
  size = (max(1, round(w / downscale)), max(1, round(h / downscale)))
  return np.stack([np.asarray(Image.fromarray(img[..., c], mode="F").resize(size, Image.BICUBIC))
                   for c in range(3)], axis=-1).clip(0.0, 1.0)


def skimage_image(name):
  """One of scikit-image's bundled images as (H, W, 3) float32 in [0, 1]."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  return _to_rgb_float(getattr(skimage.data, name)())


def sklearn_image(name):
  """One of scikit-learn's two sample photographs ("china.jpg", "flower.jpg")."""
  from sklearn.datasets import load_sample_image  # pylint: disable=import-outside-toplevel
  return _to_rgb_float(load_sample_image(name))


def texture(seed, size=256):
  """A procedural RGB texture: oriented gratings, a checkerboard, sharp-edged blobs and fine noise,
  mixed with random weights and colours (deterministic in `seed`)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  layers = []
  for _ in range(3):
    f, theta, phase = rng.uniform(0.02, 0.25), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    layers.append(0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(theta) * xx + np.sin(theta) * yy) + phase))
  cell = rng.integers(4, 24)
  layers.append(((xx // cell + yy // cell) % 2).astype(np.float64))
  blobs = np.zeros((size, size))
  for _ in range(12):
    cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 40)
    blobs = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2, rng.uniform(), blobs)
  layers.append(blobs)
  layers.append(rng.random((size, size)))
  weights = rng.dirichlet(np.ones(len(layers)))
  colours = rng.uniform(0.1, 1.0, (len(layers), 3))
  img = sum(w * l[..., None] * c for w, l, c in zip(weights, layers, colours))
  img = (img - img.min()) / max(img.max() - img.min(), 1e-8)
  return img.astype(np.float32)


def patches(img, patch):
  """Non-overlapping (patch, patch, 3) tiles of one (H, W, 3) image, in raster order: (N, P, P, 3)."""
  h, w = img.shape[:2]
  if h < patch or w < patch:
    raise ValueError(f"an image of {h}x{w} pixels is smaller than the {patch}x{patch} patch; "
                     f"use a smaller patch or a larger image.")
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"expected an RGB image (H, W, 3); got shape {img.shape}.")
  nh, nw = h // patch, w // patch
  tiles = img[: nh * patch, : nw * patch].reshape(nh, patch, nw, patch, 3).swapaxes(1, 2)
  return tiles.reshape(nh * nw, patch, patch, 3)


def source_images(split):
  """The (name, image) pairs of a split ("train" or "test"), at full size."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
  train = split == "train"
  out = [(f"skimage/{n}", skimage_image(n)) for n in (TRAIN_SKIMAGE if train else TEST_SKIMAGE)]
  out += [(f"sklearn/{n}", sklearn_image(n)) for n in (TRAIN_SKLEARN if train else TEST_SKLEARN)]
  out += [(f"texture/{s}", texture(s)) for s in (TRAIN_TEXTURE_SEEDS if train else TEST_TEXTURE_SEEDS)]
  return out


def builtin_patches(split, patch=32, downscale=4, limit=None, seed=0):
  """Patches of the built-in clean images of one split, shuffled with `seed`.

  Args:
    split: "train" or "test" (disjoint source images).
    patch: side of the square patches, pixels.
    downscale: shrink factor applied to the photographs before cutting (textures are cut as made).
    limit: keep at most this many patches (after shuffling).
  Returns:
    (N, patch, patch, 3) float32 in [0, 1].
  """
  tiles = []
  for name, img in source_images(split):
    tiles.append(patches(img if name.startswith("texture/") else _shrink(img, downscale), patch))
  tiles = np.concatenate(tiles)
  tiles = tiles[np.random.default_rng(seed).permutation(len(tiles))]
  return tiles[:limit] if limit else tiles


def load_image(path):
  """One image file as (H, W, 3) float32 in [0, 1] (grey is replicated, alpha dropped)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no image file at {path}.")
  with Image.open(path) as im:
    return _to_rgb_float(np.asarray(im.convert("RGB")))


def folder_patches(directory, patch=32, downscale=1, limit=None, seed=0):
  """Patches of every image in a folder (a user's data set, e.g. DIV2K or GoPro sharp frames).

  Returns:
    (N, patch, patch, 3) float32 in [0, 1], shuffled with `seed`, at most `limit`.
  """
  directory = pathlib.Path(directory)
  files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {directory}.")
  tiles = np.concatenate([patches(_shrink(load_image(f), downscale), patch) for f in files])
  tiles = tiles[np.random.default_rng(seed).permutation(len(tiles))]
  return tiles[:limit] if limit else tiles
