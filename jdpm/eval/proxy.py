"""shapes-FID: a CPU-sized FID and class accuracy on the built-in datasets (`shapes`, `digits`).

FID needs Inception weights and thousands of samples at 299x299; on the small built-in datasets jdpm measures
sample quality with its own small classifier instead (`jdpm.models.proxy_classifier`):

- `train_proxy_classifier(dataset)` trains it on the dataset's train split (1-2 CPU minutes) and saves it in
  `<data_dir>/proxy_classifier/<dataset>/classifier.npz` with its metadata (test accuracy, steps, seed,
  augmentation, architecture, format version). `python -m jdpm.eval.proxy --dataset shapes` does the same
  from a shell.
- `load_proxy_classifier(dataset)` reuses the saved one (training it first when missing, by default). A
  damaged file raises `ProxyClassifierError`, which says how to retrain; it is never replaced silently.
- `proxy_metrics(images, labels, dataset=...)` returns
    fid:      the Frechet distance between Gaussians fitted to the classifier's penultimate features of
              `images` and of the real images of the dataset's test split;
    accuracy: the fraction of `images` that the classifier assigns to their `labels` (the class each was
              sampled for): how well a class-conditional model obeys its label; NaN without labels.

Why the test split as reference: the classifier was fitted to the train split, so its features of training
images are tighter than those of images it never saw. Generated images are unseen images; comparing them
with the (equally unseen) test images keeps the reference like for like. Its statistics are cached beside
the classifier (`reference_test.npz`) and recomputed when the classifier changes.

How to use it (e.g. `bench/mini_paper.py`): train a denoiser on `shapes`, draw N class-conditional samples
with `jdpm.generate.sample_images` for labels `np.arange(N) % 10`, and call
``proxy_metrics(samples, labels, dataset="shapes", data_dir=...)``. Lower fid and higher accuracy are better.
Scale, on shapes with the default classifier: real images vs the reference ~0.03 at N = 1,000; uniform noise
~120; real images plus Gaussian noise of std 0.05 / 0.1 / 0.2 (in [-1, 1] units) ~0.25 / 4 / 32; the tiny DiT
config after 0 / 300 / 600 / 1,200 training steps ~119 / 78 / 59 / 41. On digits the floor is higher (~1.3:
the classifier saw only 1,500 training images, and the train and test features differ) and noise shows less.
Like FID, the estimate is biased upwards by roughly (feature dim) / N: compare numbers only at the same N
(1,000 to 2,000 samples keep the bias far below the gaps between models). Numbers are only comparable under
one saved classifier: a retrained one (other steps, seed or library versions) has another scale.
Accuracy moves only once a model draws its classes: short CPU runs of the tiny configs (1,200 steps) still
give blobs that score chance (0.1) while their fid already falls steadily with training.

Single process: the images are gathered on this host (pass `jdpm.generate.host_array(samples)` in multi-host
jobs).
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time

import numpy as np

log = logging.getLogger("jdpm.eval.proxy")

FORMAT_VERSION = 1
SUBDIR = "proxy_classifier"
CLASSIFIER_FILE = "classifier.npz"
# Datasets whose classes do not change under a left-right mirror (shapes: circle, square, triangle, cross,
# ring); digits do (a mirrored 2 is no 2), so their classifier is trained without flips.
FLIP_INVARIANT = ("shapes", "shapes/tiny")

DEFAULT_STEPS = {"shapes": 1000, "digits": 1000}
DEFAULT_BATCH_SIZE = 64
LEARNING_RATE = 2e-3
_EVAL_BATCH = 250  # images per compiled forward pass (the last batch is padded: one compilation)
# Up to this much pixel noise (in [-1, 1] units; 0.05 is about 6 grey levels): the class accuracy should
# judge the class drawn, not faint grain. Larger values make the features blind to noise that FID should
# see (with 0.3, real images + noise of std 0.2 score about as well as clean ones).
NOISE_STD = 0.05
_SHIFT = 2  # random translation of the training images by up to this many pixels


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


def _retrain_hint(dataset, data_dir):
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


# ----------------------------------------------------------------------------------------------------------
# Training.


def _augment(rng, images, flip: bool, noise_std: float):
  """Random translation by up to _SHIFT pixels (edges repeated), left-right mirrors if `flip`, pixel noise.

  images: (B, H, W, C) float32 in [-1, 1]. Half of the images get Gaussian noise with a standard deviation
  drawn uniformly from [0, noise_std]. All three keep the class (flips only where allowed).
  """
  import jax
  import jax.numpy as jnp
  b, h, w, c = images.shape
  rng_shift, rng_flip, rng_std, rng_noise = jax.random.split(rng, 4)
  padded = jnp.pad(images, ((0, 0), (_SHIFT, _SHIFT), (_SHIFT, _SHIFT), (0, 0)), mode="edge")
  offsets = jax.random.randint(rng_shift, (b, 2), 0, 2 * _SHIFT + 1)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
  images = jax.vmap(crop)(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(rng_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(mirror, images[:, :, ::-1], images)
  if noise_std:
    std = noise_std * jax.random.uniform(rng_std, (b, 1, 1, 1), minval=-1.0, maxval=1.0)
    images = images + jnp.maximum(std, 0.0) * jax.random.normal(rng_noise, images.shape)
  return images


def _make_train_step(model, optimizer, flip, noise_std, batch_size):
  import jax
  import jax.numpy as jnp
  import optax

  def loss_fn(params, images, labels):
    logits, _ = model.apply({"params": params}, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  @jax.jit
  def step(params, opt_state, rng, train_images, train_labels):
    # The whole train split sits on the device as uint8; each step draws its batch there.
    rng_idx, rng_aug = jax.random.split(rng)
    idx = jax.random.randint(rng_idx, (batch_size,), 0, train_images.shape[0])
    images = train_images[idx].astype(jnp.float32) / 127.5 - 1.0
    images = _augment(rng_aug, images, flip, noise_std)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, train_labels[idx])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  return step


def train_proxy_classifier(dataset: str = "shapes", data_dir=None, steps: int | None = None, seed: int = 0,
                           batch_size: int = DEFAULT_BATCH_SIZE, learning_rate: float = LEARNING_RATE,
                           save: bool = True) -> TrainedClassifier:
  """Trains the proxy classifier of `dataset` on its train split and (by default) saves it.

  Adam with a warm-up and cosine decay, cross-entropy; random shifts of up to 2 pixels, faint pixel noise
  (NOISE_STD) and, where they keep the class, left-right flips. Runs on the default device: 1-2 minutes on a
  2-core CPU with the default steps (shapes: ~99.9% test accuracy, digits: ~98%).

  Args:
    dataset: a jdpm image dataset name with 32x32x3 images and a "test" split ("shapes", "digits", ...).
    data_dir: dataset root (default $JDPM_DATA_DIR or ~/tensorflow_datasets); the classifier is saved in
      `<data_dir>/proxy_classifier/<dataset>/`.
    steps: training steps (default DEFAULT_STEPS[dataset], else 1000).
    seed: seeds the initialisation, the batches and the augmentation.
    batch_size: training batch size.
    learning_rate: Adam's peak learning rate.
    save: write the classifier (and drop stale reference statistics) when done.
  Returns:
    the trained classifier; `meta["test_accuracy"]` is its accuracy on the test split.
  """
  import jax
  import optax
  from jdpm.data import registry
  from jdpm.models.proxy_classifier import ProxyClassifier

  steps = int(steps if steps is not None else DEFAULT_STEPS.get(dataset, 1000))
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  start = time.time()
  train_images, train_labels = load_split(dataset, "train", data_dir)
  test_images, test_labels = load_split(dataset, "test", data_dir)
  num_classes = registry.dataset_info(dataset, data_dir=data_dir).num_classes
  model = ProxyClassifier(num_classes=num_classes)
  rng_init, rng_train = jax.random.split(jax.random.key(seed))
  params = model.init(rng_init, np.zeros((1, *train_images.shape[1:]), np.float32))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps=min(50, steps // 10 + 1),
                                                decay_steps=steps, end_value=learning_rate * 0.01)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)
  noise_std = NOISE_STD
  step = _make_train_step(model, optimizer, dataset in FLIP_INVARIANT, noise_std, batch_size)
  device_images, device_labels = jax.device_put(train_images), jax.device_put(train_labels.astype(np.int32))
  for i in range(steps):
    params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(rng_train, i), device_images,
                                        device_labels)
    if (i + 1) % 100 == 0 or i + 1 == steps:
      log.info("proxy classifier %s: step %d/%d loss %.4f batch accuracy %.3f", dataset, i + 1, steps,
               float(loss), float(acc))
  params = jax.device_get(params)
  meta = dict(format_version=FORMAT_VERSION, dataset=dataset, steps=steps, seed=seed, batch_size=batch_size,
              learning_rate=learning_rate, noise_std=noise_std, train_seconds=0.0,
              model=dict(num_classes=num_classes, widths=list(model.widths), groups=model.groups))
  classifier = TrainedClassifier(dataset, model, params, meta)
  logits, _ = classifier.apply(test_images)
  meta["test_accuracy"] = float(np.mean(np.argmax(logits, -1) == test_labels))
  meta["train_seconds"] = round(time.time() - start, 1)
  log.info("proxy classifier %s: test accuracy %.4f after %d steps (%.0f s)", dataset, meta["test_accuracy"],
           steps, meta["train_seconds"])
  if save:
    save_proxy_classifier(classifier, data_dir)
  return classifier


# ----------------------------------------------------------------------------------------------------------
# Saving and loading.


def _atomic_savez(path: pathlib.Path, **arrays):
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
  _atomic_savez(path, meta=np.array(json.dumps(classifier.meta)), **arrays)
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
        f"{_retrain_hint(dataset, data_dir)} or delete the file.") from e
  return TrainedClassifier(dataset, model, params, meta)


def load_proxy_classifier(dataset: str = "shapes", data_dir=None, train_if_missing: bool = True,
                          **train_kwargs) -> TrainedClassifier:
  """The saved proxy classifier of `dataset`, trained and saved first if missing and `train_if_missing`.

  Args:
    dataset, data_dir: as in `train_proxy_classifier`.
    train_if_missing: train one (with `train_kwargs`) when none is saved; else raise.
  Raises:
    ProxyClassifierError: the saved file is damaged or of another format (never silently replaced: numbers
      measured with it would change scale), or it is missing and not `train_if_missing`.
  """
  path = classifier_dir(dataset, data_dir) / CLASSIFIER_FILE
  if not path.exists():
    if not train_if_missing:
      raise ProxyClassifierError(f"No proxy classifier for {dataset!r} at {path}; "
                                 f"{_retrain_hint(dataset, data_dir)}.")
    log.info("no proxy classifier for %s at %s: training one", dataset, path)
    return train_proxy_classifier(dataset, data_dir, **train_kwargs)
  return _read_classifier(path, dataset, data_dir)


@functools.lru_cache(maxsize=8)
def _read_cached(path, mtime_ns, dataset, data_dir):
  del mtime_ns  # part of the cache key: a retrained file is read again
  return _read_classifier(pathlib.Path(path), dataset, data_dir)


def _default_classifier(dataset, data_dir):
  """The saved classifier (trained first if missing), read once per file version."""
  path = classifier_dir(dataset, data_dir) / CLASSIFIER_FILE
  if not path.exists():
    return load_proxy_classifier(dataset, data_dir)  # trains and saves it
  return _read_cached(str(path), path.stat().st_mtime_ns, dataset, data_dir)


# ----------------------------------------------------------------------------------------------------------
# The metric.


def reference_stats(classifier: TrainedClassifier, data_dir=None, split: str = "test"):
  """(mu (D,), sigma (D, D)) of the classifier's features of all real images of `split`, cached.

  Cached in `<classifier dir>/reference_<split>.npz` with the classifier's fingerprint; recomputed when the
  classifier changed or the cache is unreadable.
  """
  from jdpm.eval import frechet
  path = classifier_dir(classifier.dataset, data_dir) / f"reference_{split}.npz"
  try:
    with np.load(path) as npz:
      if str(npz["fingerprint"]) == classifier.fingerprint:
        return npz["mu"], npz["sigma"]
  except Exception:  # missing, stale or damaged: recompute (cheap, unlike the classifier)
    pass
  images, _ = load_split(classifier.dataset, split, data_dir)
  mu, sigma = frechet.gaussian_stats(classifier.features(images))
  _atomic_savez(path, mu=mu, sigma=sigma, fingerprint=np.array(classifier.fingerprint),
                num_images=np.array(len(images)))
  return mu, sigma


def proxy_metrics(images, labels=None, *, dataset: str = "shapes", data_dir=None,
                  classifier: TrainedClassifier | None = None, split: str = "test") -> dict:
  """shapes-FID and class accuracy of generated images (see the module docstring).

  Args:
    images: (N, 32, 32, 3) uint8 in 0..255 or floats in [-1, 1] (e.g. `jdpm.generate.sample_images` output).
      N >= 2; use the same N when comparing models.
    labels: (N,) int, the class each image was generated for; None skips the accuracy.
    dataset: the dataset the generator was trained on ("shapes", "digits").
    data_dir: dataset root, where the classifier is saved (trained first if missing).
    classifier: use this classifier instead of the saved one.
    split: the real images to compare with (default the test split: see the module docstring).
  Returns:
    dict(fid=float, accuracy=float (NaN without labels), num_images=int).
  """
  from jdpm.eval import frechet
  classifier = classifier or _default_classifier(dataset, data_dir)
  logits, features = classifier.apply(images)
  mu, sigma = frechet.gaussian_stats(features)
  mu_ref, sigma_ref = reference_stats(classifier, data_dir, split)
  accuracy = float("nan")
  if labels is not None:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(logits):
      raise ValueError(f"{len(labels)} labels for {len(logits)} images.")
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
  return dict(fid=float(frechet.frechet_distance(mu, sigma, mu_ref, sigma_ref)), accuracy=accuracy,
              num_images=len(logits))


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Train the proxy classifier behind shapes-FID, save it in the data dir (replacing any saved "
                  "one and its reference statistics) and print its test accuracy.")
  parser.add_argument("--dataset", default="shapes", help="jdpm dataset name (shapes, digits)")
  parser.add_argument("--data-dir", default=None, help="dataset root (default $JDPM_DATA_DIR)")
  parser.add_argument("--steps", type=int, default=None, help="training steps (default per dataset)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
  parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  classifier = train_proxy_classifier(args.dataset, args.data_dir, steps=args.steps, seed=args.seed,
                                      batch_size=args.batch_size, learning_rate=args.learning_rate)
  print(f"proxy classifier for {args.dataset}: test accuracy {classifier.meta['test_accuracy']:.4f} "
        f"({classifier.meta['steps']} steps, {classifier.meta['train_seconds']:.0f} s), saved in "
        f"{classifier_dir(args.dataset, args.data_dir)}")


if __name__ == "__main__":
  main()
