"""How jdpm stores datasets: TFDS array_record files with raw uint8 / float Tensor features.

Every jdpm builder writes `array_record` files whose features are plain `tfds.features.Tensor`s stored as raw
bytes (`encoding="bytes"`; array_record compresses the records itself). Encoding and decoding such features
needs only numpy, so TFDS builds and reads them without TensorFlow; reading goes through
`builder.as_data_source()` (random access, what Grain wants).

Three things in TFDS would pull in TensorFlow, the network or a missing package, and jdpm avoids them:
- `DatasetBuilder.dataset_info_from_configs` reads metadata files next to the builder's module; jdpm builders
  construct `tfds.core.DatasetInfo` directly instead.
- looking a dataset up by name (`tfds.builder("name")`, `tfds.data_source("name")`) falls back to the
  community registry on GCS when the name is not registered, which needs TensorFlow or gcsfs. jdpm builders
  are not registered with TFDS (no clash with TFDS's own `imagenet2012`); jdpm resolves names itself
  (`jdpm.data.registry`) and reads prepared directories with `tfds.builder_from_directory`.
- `DatasetBuilder.code_path` needs the `importlib_resources` backport for builders defined in a package;
  `ArrayRecordBuilder` overrides it with the plain file path.
"""

import inspect
import os
import pathlib

from etils import epath

import numpy as np
import tensorflow_datasets as tfds

# Where datasets are built when no `data_dir` is given: $JDPM_DATA_DIR, else TFDS's default
# ($TFDS_DATA_DIR or ~/tensorflow_datasets).
DATA_DIR_ENV = "JDPM_DATA_DIR"

FILE_FORMAT = "array_record"


def resolve_data_dir(data_dir=None) -> str:
  """The data directory to use: the argument, else $JDPM_DATA_DIR, else TFDS's default."""
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV) or tfds.core.constants.DATA_DIR
  return os.fspath(pathlib.Path(data_dir).expanduser())


def image_feature(shape) -> tfds.features.Tensor:
  """A uint8 (H, W, C) image stored as raw bytes."""
  return tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8, encoding="bytes")


def float_feature(shape, dtype) -> tfds.features.Tensor:
  """A float16/float32 array (e.g. latents) stored as raw bytes."""
  dtype = np.dtype(dtype)
  if dtype not in (np.float16, np.float32):
    raise ValueError(f"Latents are stored as float16 or float32, got {dtype}.")
  return tfds.features.Tensor(shape=tuple(shape), dtype=dtype, encoding="bytes")


def label_feature() -> tfds.features.Tensor:
  """An int64 scalar class label."""
  return tfds.features.Tensor(shape=(), dtype=np.int64)


def prepare(builder, **download_and_prepare_kwargs):
  """Builds `builder`'s files unless they are already there; returns the builder.

  Building is deterministic, so on several hosts with local disks each host may build its own copy. On a
  shared file system build once (one process) before starting a multi-host job.
  """
  if not builder.is_prepared():
    builder.download_and_prepare(file_format=FILE_FORMAT, **download_and_prepare_kwargs)
  return builder


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of jdpm's builders: array_record files by default, not registered with TFDS.

  Not registering keeps TFDS's global name table free of clashes (TFDS has its own `imagenet2012`);
  `jdpm.data.registry` maps jdpm's dataset names to these classes.
  """

  def __init__(self, *, file_format=FILE_FORMAT, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    # TFDS pickles a builder as its constructor arguments; keep the file format among them.
    self._original_state["file_format"] = file_format

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup of the defining file goes through the `importlib_resources` backport, which is only
    # installed on Python < 3.9; the file path is all TFDS needs (to look for a checksums file).
    return epath.Path(inspect.getfile(cls))
