"""Datasets as TFDS array_record files (no TensorFlow needed) and Grain input pipelines.

- `make_train_iterator`: shuffled, flipped, per-host batches {"image", "label", "index"} with exact resume.
- `make_eval_iterator`: one ordered pass in batches.
- `dataset_info`: image shape, class count and split sizes of a dataset name.
- `data_source`: random access to a split's records.
- `build_latent_dataset`: encode a dataset once (sharded over all devices) into a latent dataset;
  `vae_encode_fn` wraps a Stable Diffusion VAE as its encoder.
- builders: `Shapes` (procedural), `Digits` (scikit-learn), `Imagenet2012` (manual download, ADM crop).
"""

from jdpm.data.digits import Digits
from jdpm.data.imagenet import Imagenet2012, adm_center_crop
from jdpm.data.latents import build_latent_dataset, vae_encode_fn
from jdpm.data.pipeline import make_eval_iterator, make_train_iterator
from jdpm.data.registry import BUILTIN, DatasetInfo, class_names, data_source, dataset_info, get_builder
from jdpm.data.shapes import Shapes
from jdpm.data.storage import DATA_DIR_ENV, resolve_data_dir
