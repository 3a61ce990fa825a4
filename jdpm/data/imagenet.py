"""`imagenet2012`: ILSVRC-2012 from the manually downloaded tars, centre-cropped as ADM/DiT do.

Put `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` (from image-net.org) in the manual directory
(default `<data_dir>/downloads/manual`). Every image is converted to RGB and centre-cropped to
`image_size` (default 256) the way guided-diffusion and DiT prepare ImageNet (`adm_center_crop`), then stored
as raw uint8. Class indices follow the sorted WordNet ids (TFDS's `imagenet2012/labels.txt`); validation
labels come from TFDS's `imagenet2012/validation_labels.txt` (one id per image, in file-name order).

Decoding and cropping 1.28M JPEGs is CPU-bound: `Imagenet2012(num_workers=...)` spreads it over processes.
"""

import collections
import concurrent.futures
import dataclasses
import io
import os
import pathlib
import tarfile

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from jdpm.data import storage

NUM_CLASSES = 1000
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}

_LABELS_FILE = "datasets/imagenet2012/labels.txt"
_VALIDATION_LABELS_FILE = "datasets/imagenet2012/validation_labels.txt"


def adm_center_crop(image: PIL.Image.Image, size: int) -> np.ndarray:
  """Centre crop of guided-diffusion / DiT: uint8 (size, size, C) from a PIL image.

  While the shorter side is at least 2 * size, halve the image with a BOX filter (cheap, alias-free);
  then resize with BICUBIC so the shorter side is exactly `size` (other side rounded to nearest); then cut
  the central size x size square (offsets rounded down).
  """
  while min(image.size) >= 2 * size:
    image = image.resize(tuple(side // 2 for side in image.size), resample=PIL.Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(side * scale) for side in image.size), resample=PIL.Image.BICUBIC)
  array = np.asarray(image)
  top = (array.shape[0] - size) // 2
  left = (array.shape[1] - size) // 2
  return array[top:top + size, left:left + size]


def decode_and_crop(encoded: bytes, size: int) -> np.ndarray:
  """JPEG (or any PIL-readable) bytes -> uint8 (size, size, 3) RGB centre crop."""
  with PIL.Image.open(io.BytesIO(encoded)) as image:
    return adm_center_crop(image.convert("RGB"), size)


def synsets() -> list[str]:
  """The 1,000 WordNet ids in class-index order (sorted)."""
  return tfds.core.tfds_path(_LABELS_FILE).read_text().split()


def validation_synsets() -> list[str]:
  """WordNet id of each validation image, in the order of its file name (ILSVRC2012_val_00000001, ...)."""
  return tfds.core.tfds_path(_VALIDATION_LABELS_FILE).read_text().split()


def _iter_train_tar(path):
  """Yields (file name, JPEG bytes, WordNet id) from the train tar, a tar of one tar per class."""
  with tarfile.open(path, mode="r|") as outer:
    for class_member in outer:
      if not class_member.isfile():
        continue
      wnid = os.path.splitext(os.path.basename(class_member.name))[0]
      with tarfile.open(fileobj=outer.extractfile(class_member), mode="r|") as inner:
        for member in inner:
          if member.isfile():
            yield os.path.basename(member.name), inner.extractfile(member).read(), wnid


def _iter_val_tar(path):
  """Yields (file name, JPEG bytes, WordNet id) from the validation tar of flat JPEGs."""
  wnids = validation_synsets()
  with tarfile.open(path, mode="r|") as tar:
    for member in tar:
      if member.isfile():
        name = os.path.basename(member.name)
        # ILSVRC2012_val_00012345.JPEG -> the 12,345th label.
        number = int(os.path.splitext(name)[0].rsplit("_", 1)[-1])
        yield name, tar.extractfile(member).read(), wnids[number - 1]


def check_manual_dir(manual_dir) -> None:
  """Raises FileNotFoundError, naming the directory and the expected files, if a tar is missing."""
  manual_dir = pathlib.Path(manual_dir)
  missing = [name for name in (TRAIN_TAR, VAL_TAR) if not (manual_dir / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f"imagenet2012 needs {TRAIN_TAR} and {VAL_TAR} (from image-net.org) in the manual directory "
        f"{manual_dir}, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing there. "
        "Download them into that directory, or pass manual_dir= pointing to where they are.")


@dataclasses.dataclass
class ImagenetConfig(tfds.core.BuilderConfig):
  """Side of the square centre crop, in pixels."""
  image_size: int = 256


class Imagenet2012(storage.ArrayRecordBuilder, skip_registration=True):
  """TFDS builder of ADM-centre-cropped ImageNet; configs res256 (default), res64, res128, res512.

  Stored under the TFDS name `imagenet2012_adm` so it never mixes with TFDS's own `imagenet2012`.
  """

  name = "imagenet2012_adm"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [ImagenetConfig(name=f"res{size}", image_size=size,
                                    description=f"ADM centre crop to {size}x{size}.")
                     for size in (256, 64, 128, 512)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place {TRAIN_TAR} and {VAL_TAR} from image-net.org in the manual directory."

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    """num_workers: processes that decode and crop while building (default: all CPUs; 1 = in-process)."""
    super().__init__(**kwargs)
    self._num_workers = num_workers or os.cpu_count() or 1
    self._original_state["num_workers"] = num_workers

  def _info(self):
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": storage.image_feature((size, size, 3)),
            "label": storage.label_feature(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        # Keep the tars' order; the training pipeline shuffles globally.
        disable_shuffling=True,
    )

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
    """Checks the manual files first, so that their absence is one clear error."""
    manual_dir = download_config.manual_dir if download_config and download_config.manual_dir else None
    if manual_dir is None:
      root = download_dir or os.path.join(self._data_dir_root, "downloads")
      manual_dir = os.path.join(os.fspath(root), "manual")
    check_manual_dir(os.path.expanduser(os.fspath(manual_dir)))
    return super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager):
    manual_dir = dl_manager.manual_dir
    return {"train": self._generate_examples(_iter_train_tar(manual_dir / TRAIN_TAR)),
            "validation": self._generate_examples(_iter_val_tar(manual_dir / VAL_TAR))}

  def _generate_examples(self, records):
    size = self.builder_config.image_size
    labels = {wnid: index for index, wnid in enumerate(synsets())}

    def example(name, wnid, image):
      return name, {"image": image, "label": labels[wnid], "file_name": name}

    if self._num_workers <= 1:
      for name, encoded, wnid in records:
        yield example(name, wnid, decode_and_crop(encoded, size))
      return
    # Decode in worker processes while the tar is read, keeping a bounded number of images in flight (the
    # tars are far larger than memory) and the tar's order.
    max_in_flight = 32 * self._num_workers
    pending = collections.deque()
    with concurrent.futures.ProcessPoolExecutor(self._num_workers) as pool:
      for name, encoded, wnid in records:
        pending.append((name, wnid, pool.submit(decode_and_crop, encoded, size)))
        if len(pending) >= max_in_flight:
          name, wnid, future = pending.popleft()
          yield example(name, wnid, future.result())
      while pending:
        name, wnid, future = pending.popleft()
        yield example(name, wnid, future.result())
