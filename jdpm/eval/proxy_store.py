"""The proxy classifier of shapes-FID on disk: `TrainedClassifier`, and saving, loading and caching it.

Files: `<data_dir>/proxy_classifier/<dataset>/classifier.npz` (parameters + metadata JSON). A damaged file
raises `ProxyClassifierError`, which says how to retrain; it is never replaced silently. See
`jdpm.eval.proxy` for the metric and `jdpm.eval.proxy_train` for the training.

jdpm ships the classifier of `shapes` (`jdpm/eval/proxy_weights/shapes.npz`, made by
`python -m jdpm.eval.proxy --dataset shapes` with the defaults: 1,000 steps, seed 0, test accuracy 1.0). A data
dir without a classifier of its own gets a copy of it instead of a 1-3 minute training run, and shapes-FID
numbers from different machines share one scale.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import numpy as np

log = logging.getLogger("jdpm.eval.proxy")

FORMAT_VERSION = 1
SUBDIR = "proxy_classifier"
CLASSIFIER_FILE = "classifier.npz"
PACKAGED_DIR = pathlib.Path(__file__).parent / "proxy_weights"  # <dataset>.npz, in CLASSIFIER_FILE's format
_EVAL_BATCH = 250  # images per compiled forward pass (the last batch is padded: one compilation)


class ProxyClassifierError(RuntimeError):
  """A saved proxy classifier that is missing or cannot be used; the message says how to (re)train it."""


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedClassifier:
  """A proxy classifier with its parameters and metadata.

  Attributes:
    dataset: the jdpm dataset name it was trained on.
    model: the `jdpm.models.proxy_classifier.ProxyClassifier` module.
    params: its parameters (numpy pytree).
    meta: dict with format_version, dataset, test_accuracy, steps, seed, batch_size, train_seconds, model.
  """
  dataset: str
  model: object
  params: dict
  meta: dict

  @functools.cached_property
  def _forward(self):
    import jax
    return jax.jit(lambda params, x: self.model.apply({"params": params}, x))

  @functools.cached_property
  def fingerprint(self) -> str:
    """A hash of the parameters: the reference statistics cached beside the classifier carry it."""
    import flax.traverse_util
    h = hashlib.sha256()
    for key, value in sorted(flax.traverse_util.flatten_dict(self.params, sep="/").items()):
      h.update(key.encode())
      h.update(np.ascontiguousarray(value, np.float32).tobytes())
    return h.hexdigest()[:16]

  def apply(self, images):
    """Logits (N, num_classes) and penultimate features (N, D) of images, as float32 numpy arrays.

    Args:
      images: (N, H, W, C) uint8 in 0..255, or floats in [-1, 1] (clipped and quantised to 8 bits first, as
        when saving them, so a float batch and its uint8 version measure the same).
    """
    x = _to_model_input(images)
    logits, features = [], []
    for start in range(0, len(x), _EVAL_BATCH):
      chunk = x[start:start + _EVAL_BATCH]
      n = len(chunk)
      if n < _EVAL_BATCH:  # pad: every call has the same shape
        chunk = np.concatenate([chunk, np.zeros((_EVAL_BATCH - n, *chunk.shape[1:]), chunk.dtype)])
      out_logits, out_features = self._forward(self.params, chunk)
      logits.append(np.asarray(out_logits)[:n])
      features.append(np.asarray(out_features)[:n])
    if not logits:
      raise ValueError("no images given.")
    return np.concatenate(logits), np.concatenate(features)

  def features(self, images) -> np.ndarray:
    """(N, D) penultimate features of images (see `apply`)."""
    return self.apply(images)[1]


def _to_model_input(images) -> np.ndarray:
  """uint8 or [-1, 1] float NHWC images -> float32 in [-1, 1] on the uint8 grid."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"expected (N, H, W, C) images, got shape {images.shape}.")
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f"images must be uint8 in 0..255 or floats in [-1, 1], got dtype {images.dtype}.")
    images = np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def classifier_dir(dataset: str, data_dir=None) -> pathlib.Path:
  """Where the proxy classifier of `dataset` lives: `<data_dir>/proxy_classifier/<dataset>/`."""
  from jdpm.data import storage
  return pathlib.Path(storage.resolve_data_dir(data_dir)) / SUBDIR / dataset


def retrain_hint(dataset, data_dir):
  arg = f" --data-dir {data_dir}" if data_dir is not None else ""
  return f"(re)train it with `python -m jdpm.eval.proxy --dataset {dataset}{arg}`"


def load_split(dataset: str, split: str, data_dir=None, limit: int | None = None):
  """The first `limit` (default all) examples of `split` of `dataset` in memory.

  Returns uint8 images (N, H, W, C) and int64 labels (N,).
  """
  from jdpm.data import registry
  source = registry.data_source(dataset, split, data_dir=data_dir)
  n = len(source) if limit is None else min(int(limit), len(source))
  records = source.__getitems__(list(range(n)))
  images = np.stack([r["image"] for r in records])
  labels = np.array([r["label"] for r in records], np.int64)
  return images, labels


def atomic_savez(path: pathlib.Path, **arrays):
  """np.savez to a temporary file, then renamed: readers never see a half-written file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_proxy_classifier(classifier: TrainedClassifier, data_dir=None) -> pathlib.Path:
  """Writes `classifier.npz` (parameters as "params/<path>" arrays + "meta" JSON) and drops stale stats."""
  import flax.traverse_util
  directory = classifier_dir(classifier.dataset, data_dir)
  arrays = {f"params/{k}": np.asarray(v)
            for k, v in flax.traverse_util.flatten_dict(classifier.params, sep="/").items()}
  path = directory / CLASSIFIER_FILE
  atomic_savez(path, meta=np.array(json.dumps(classifier.meta)), **arrays)
  for stale in directory.glob("reference_*.npz"):
    stale.unlink()
  return path


def _read_classifier(path: pathlib.Path, dataset: str, data_dir) -> TrainedClassifier:
  import flax.traverse_util
  import jax
  from jdpm.models.proxy_classifier import ProxyClassifier

  try:
    with np.load(path) as npz:
      meta = json.loads(str(npz["meta"]))
      flat = {k[len("params/"):]: npz[k] for k in npz.files if k.startswith("params/")}
    if meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"format version {meta.get('format_version')}, this jdpm reads {FORMAT_VERSION}")
    if meta.get("dataset") != dataset:
      raise ValueError(f"it was trained on {meta.get('dataset')!r}, not {dataset!r}")
    model = ProxyClassifier(num_classes=meta["model"]["num_classes"], widths=tuple(meta["model"]["widths"]),
                            groups=meta["model"]["groups"])
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    expected = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    if jax.tree.structure(expected) != jax.tree.structure(params) or any(
        e.shape != p.shape for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params))):
      raise ValueError("its parameters do not match the architecture in its metadata")
  except Exception as e:  # any damage: a truncated zip, bad JSON, missing arrays, wrong shapes
    raise ProxyClassifierError(
        f"The proxy classifier {path} cannot be loaded ({type(e).__name__}: {e}); "
        f"{retrain_hint(dataset, data_dir)} or delete the file.") from e
  return TrainedClassifier(dataset, model, params, meta)


def load_proxy_classifier(dataset: str = "shapes", data_dir=None, train_if_missing: bool = True,
                          **train_kwargs) -> TrainedClassifier:
  """The saved proxy classifier of `dataset`; if missing, jdpm's packaged one, or one trained and saved first.

  A data dir without a classifier gets a copy of the packaged one (`PACKAGED_DIR`, `shapes` only) unless
  `train_kwargs` ask for a particular training; otherwise one is trained when `train_if_missing`.

  Args:
    dataset, data_dir: as in `jdpm.eval.proxy_train.train_proxy_classifier`.
    train_if_missing: train one (with `train_kwargs`) when none is saved; else raise.
  Raises:
    ProxyClassifierError: the saved file is damaged or of another format (never silently replaced: numbers
      measured with it would change scale), or it is missing and not `train_if_missing`.
  """
  path = classifier_dir(dataset, data_dir) / CLASSIFIER_FILE
  packaged = PACKAGED_DIR / f"{dataset}.npz"
  if not path.exists() and packaged.is_file() and not train_kwargs:
    log.info("no proxy classifier for %s at %s: copying the one that ships with jdpm", dataset, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.copy")
    shutil.copyfile(packaged, tmp)
    os.replace(tmp, path)
  if not path.exists():
    if not train_if_missing:
      raise ProxyClassifierError(f"No proxy classifier for {dataset!r} at {path}; "
                                 f"{retrain_hint(dataset, data_dir)}.")
    log.info("no proxy classifier for %s at %s: training one", dataset, path)
    from jdpm.eval import proxy_train  # pylint: disable=import-outside-toplevel
    return proxy_train.train_proxy_classifier(dataset, data_dir, **train_kwargs)
  return _read_classifier(path, dataset, data_dir)


@functools.lru_cache(maxsize=8)
def _read_cached(path, mtime_ns, dataset, data_dir):
  del mtime_ns  # part of the cache key: a retrained file is read again
  return _read_classifier(pathlib.Path(path), dataset, data_dir)


def default_classifier(dataset, data_dir):
  """The saved classifier (trained first if missing), read once per file version."""
  path = classifier_dir(dataset, data_dir) / CLASSIFIER_FILE
  if not path.exists():
    return load_proxy_classifier(dataset, data_dir)  # trains and saves it
  return _read_cached(str(path), path.stat().st_mtime_ns, dataset, data_dir)
