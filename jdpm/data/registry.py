"""jdpm's dataset names -> TFDS builders, prepared on first use, and their shapes.

Names:
- "shapes", "shapes/tiny"                     built in, procedurally generated (`jdpm.data.shapes`)
- "digits"                                    scikit-learn's digits at 32x32x3 (`jdpm.data.digits`)
- "imagenet2012", "imagenet2012/res{64,128,256,512}"
                                              manual download, ADM centre crop (`jdpm.data.imagenet`)
- any name given to `build_latent_dataset`    read from `data_dir/<name>/`
"""

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jdpm.data import digits, imagenet, shapes, storage

# jdpm name -> (builder class, config name or None for the default).
BUILTIN = {
    "shapes": (shapes.Shapes, "default"),
    "shapes/tiny": (shapes.Shapes, "tiny"),
    "digits": (digits.Digits, None),
    "imagenet2012": (imagenet.Imagenet2012, "res256"),
    **{f"imagenet2012/res{size}": (imagenet.Imagenet2012, f"res{size}") for size in (64, 128, 256, 512)},
}

_STATIC_INFO = {  # image shape and class count, known before anything is built
    shapes.Shapes: lambda config: ((shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), shapes.NUM_CLASSES),
    digits.Digits: lambda config: ((digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3), digits.NUM_CLASSES),
    imagenet.Imagenet2012: lambda config: ((config.image_size, config.image_size, 3), imagenet.NUM_CLASSES),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about a dataset.

  image_shape: (H, W, C) of one example as the pipeline yields it (latents for a latent dataset).
  num_classes: number of class labels (labels are 0..num_classes-1).
  is_latent: True for datasets written by `build_latent_dataset` (stored float latents, not uint8 images).
  splits: split name -> number of examples (of the builder's config; of the files when built).
  extra_features: name -> (shape, numpy dtype) of every further per-example array the pipeline yields
    (caption tokens, a degraded image, factor values, ...), for datasets that have them.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  is_latent: bool
  splits: dict[str, int]
  extra_features: dict = dataclasses.field(default_factory=dict)

  @property
  def element_spec(self):
    """Batch key -> (per-example shape, dtype) of what the training pipeline yields."""
    spec = {"image": (tuple(self.image_shape), np.float32), "label": ((), np.int32), "index": ((), np.int32)}
    spec.update(self.extra_features)
    return spec


def _unknown(name, data_dir):
  return ValueError(
      f"Unknown dataset {name!r}: known names are {', '.join(BUILTIN)}, or the out_name of a dataset "
      f"written by build_latent_dataset into data_dir ({data_dir}).")


def _prepared_dir(name, data_dir):
  """The newest version directory of a prepared dataset `data_dir/name/<version>`, or None."""
  root = pathlib.Path(data_dir) / name
  if not root.is_dir():
    return None
  versions = [d for d in root.iterdir() if (d / "dataset_info.json").is_file()]
  if not versions:
    return None
  return max(versions, key=lambda d: tfds.core.Version(d.name))


def builtin_builder(name, *, data_dir=None, **builder_kwargs):
  """An (unprepared) builder instance of built-in dataset `name`."""
  cls, config = BUILTIN[name]
  return cls(data_dir=storage.resolve_data_dir(data_dir), config=config, **builder_kwargs)


def get_builder(name: str, *, data_dir=None, prepare: bool = True, manual_dir=None, **builder_kwargs):
  """The TFDS builder of dataset `name`, built into `data_dir` first if needed and `prepare`.

  Args:
    name: a jdpm dataset name (see module docstring).
    data_dir: root directory of the datasets; default $JDPM_DATA_DIR or ~/tensorflow_datasets.
    prepare: build the dataset if it is not there yet (built-in datasets only).
    manual_dir: where ImageNet's tars are (default `<data_dir>/downloads/manual`).
    **builder_kwargs: passed to the builder class (e.g. `num_workers` for ImageNet).
  Raises:
    ValueError: unknown name.
    FileNotFoundError: ImageNet's manual files are missing.
  """
  data_dir = storage.resolve_data_dir(data_dir)
  if name in BUILTIN:
    builder = builtin_builder(name, data_dir=data_dir, **builder_kwargs)
    if prepare:
      download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)) if manual_dir else None
      storage.prepare(builder, download_config=download_config)
    return builder
  path = _prepared_dir(name, data_dir)
  if path is None:
    raise _unknown(name, data_dir)
  return tfds.builder_from_directory(path)


# Record features the pipeline turns into "image" and "label" itself; every other feature is passed through.
PIPELINE_HANDLED = ("image", "latent", "latent_flip", "label")


def is_latent(builder) -> bool:
  return "latent" in builder.info.features


def data_source(name: str, split: str, *, data_dir=None):
  """Random-access source of split `split` of dataset `name`: `len(src)`, `src[i]` -> dict of numpy arrays.

  Image datasets give {"image": uint8 (H, W, 3), "label": int64}; latent datasets give {"latent": float
  (h, w, c), "label": int64} and, when written with flips, "latent_flip".
  """
  builder = get_builder(name, data_dir=data_dir)
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; its splits are {', '.join(splits)}.")
  return builder.as_data_source(split=split)


def dataset_info(name: str, *, data_dir=None) -> DatasetInfo:
  """Image shape, class count and split sizes of `name`, without building a built-in dataset."""
  data_dir = storage.resolve_data_dir(data_dir)
  if name in BUILTIN:
    builder = builtin_builder(name, data_dir=data_dir)
    image_shape, num_classes = _STATIC_INFO[type(builder)](builder.builder_config)
    if builder.is_prepared():
      splits = {s: info.num_examples for s, info in builder.info.splits.items()}
    else:
      splits = _expected_splits(builder)
    return DatasetInfo(name, image_shape, num_classes, False, splits)
  builder = get_builder(name, data_dir=data_dir, prepare=False)
  latent = is_latent(builder)
  features = builder.info.features
  feature = features["latent" if latent else "image"]
  extra = {key: (tuple(features[key].shape), np.dtype(features[key].np_dtype))
           for key in features if key not in PIPELINE_HANDLED}
  return DatasetInfo(name=name, image_shape=tuple(feature.shape),
                     num_classes=int(builder.info.metadata["num_classes"]), is_latent=latent,
                     splits={s: info.num_examples for s, info in builder.info.splits.items()},
                     extra_features=extra)


def class_names(name: str):
  """The class names of a built-in dataset ("red circle", ..., digits "0".."9"), or None when unknown."""
  base = name.split("/")[0]
  if base == "shapes":
    return shapes.CLASS_NAMES
  if base == "digits":
    return tuple(str(d) for d in range(digits.NUM_CLASSES))
  return None


def _expected_splits(builder):
  config = builder.builder_config
  if isinstance(builder, shapes.Shapes):
    return {"train": config.num_train, "test": config.num_test}
  if isinstance(builder, digits.Digits):
    return {"train": digits.NUM_TRAIN, "test": digits.NUM_EXAMPLES - digits.NUM_TRAIN}
  return dict(imagenet.NUM_EXAMPLES)
