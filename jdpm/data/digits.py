"""`digits`: scikit-learn's handwritten digits (8x8 grey, shipped inside scikit-learn), as 32x32 RGB.

Each 8x8 image (integer intensities 0..16) is upsampled 4x with bilinear interpolation on pixel centres
(sample positions (o + 0.5) / 4 - 0.5, clamped at the border; the same as PIL's BILINEAR resize when
enlarging), scaled to 0..255, rounded to uint8 and repeated over 3 channels. Bilinear keeps the strokes
smooth; a 4x nearest-neighbour upsampling would give 4x4 blocks that a denoiser would spend capacity on.

Splits: "train" is the first 1,500 of scikit-learn's 1,797 images (in scikit-learn's order), "test" the
remaining 297; record i of a split is image i of that range.
"""

import numpy as np
import tensorflow_datasets as tfds

from jdpm.data import storage

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_EXAMPLES = 1797  # images in scikit-learn's load_digits
NUM_TRAIN = 1500
_MAX_INTENSITY = 16.0  # sklearn's digits take integer values 0..16


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix of bilinear interpolation on pixel centres, edges clamped."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0, in_size - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), lo), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), hi), frac)
  return matrix


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of (N, h, w) float images to (N, size, size)."""
  rows = bilinear_matrix(images.shape[1], size)
  cols = bilinear_matrix(images.shape[2], size)
  return np.einsum("oh,nhw,pw->nop", rows, images, cols)


def load_digits_32():
  """All 1,797 digits as uint8 (N, 32, 32, 3) images in 0..255 and int64 (N,) labels."""
  from sklearn import datasets  # imported here: only building `digits` needs scikit-learn

  digits = datasets.load_digits()
  grey = upsample_bilinear(digits.images.astype(np.float64), IMAGE_SIZE) * (255.0 / _MAX_INTENSITY)
  grey = np.round(np.clip(grey, 0, 255)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int64)


class Digits(storage.ArrayRecordBuilder, skip_registration=True):
  """TFDS builder of `digits` (scikit-learn's load_digits upsampled to 32x32x3)."""

  name = "digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": storage.image_feature((IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": storage.label_feature(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # record i of a split is scikit-learn's image i of that split's range
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with scikit-learn
    images, labels = load_digits_32()
    return {"train": self._generate_examples(images[:NUM_TRAIN], labels[:NUM_TRAIN]),
            "test": self._generate_examples(images[NUM_TRAIN:], labels[NUM_TRAIN:])}

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": label}
