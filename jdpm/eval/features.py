"""Feature extractors for sample-quality metrics, and reference statistics of a dataset.

A feature extractor maps a batch of uint8 RGB images (B, H, W, 3) to the three feature sets of the ADM
evaluator, as float32 numpy arrays:

- ``pool``    (B, D)  features for FID and precision/recall;
- ``spatial`` (B, Ds) mid-level spatial features for sFID;
- ``logits``  (B, C)  class logits for the Inception Score (and class accuracy).

Two are built in:

- ``InceptionFeatures``: the FID InceptionV3 with pytorch-fid's weights (user-supplied file): pool3 (2048),
  mixed_6/conv[..., :7] (2023) and the 1008-way logits without bias, exactly the ADM evaluator's inputs.
  This is what the papers' FID-50K uses.
- ``ProxyFeatures``: the small classifier of ``jdpm.eval.proxy`` for the built-in datasets (shapes,
  digits): penultimate features (128), the first 8 channels of its 8×8 stage (512) and its class logits.
  Numbers are on their own scale ("shapes-FID"), comparable only under one saved classifier.

``dataset_reference`` runs an extractor over real images of a dataset and returns a ``Reference`` (ADM
``.npz`` layout, plus ``pool_features`` for precision/recall), which ``sample.py --eval-stats`` compares
generated samples with.
"""

import hashlib
import logging

import numpy as np

log = logging.getLogger("jdpm.eval.features")

PROXY_SPATIAL_STAGE = 2  # the 8×8 stage of the proxy classifier (32×32 inputs)
PROXY_SPATIAL_CHANNELS = 8


def _batched(fn, images, batch_size):
  """Runs fn over fixed-size chunks (the last one padded, so every call has one shape); concatenates."""
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    outputs.append({k: np.asarray(v, np.float32)[:n] for k, v in fn(chunk).items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def _check_images(images):
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"feature extractors take uint8 RGB images (B, H, W, 3); got {images.dtype} "
                     f"{images.shape}. Convert [-1, 1] floats with jdpm.generate.to_uint8.")
  return images


class InceptionFeatures:
  """FID InceptionV3 features (``jdpm.models.inception``) with pytorch-fid's weights.

  Args:
    weights: the ``pt_inception-2015-12-05-6726825d.pth`` file (default ``$JDPM_INCEPTION_WEIGHTS``);
      a missing file or a wrong hash raises with instructions.
    variables: ready variables instead of a file (e.g. random weights in tests).
    batch_size: images per compiled call.
  """

  def __init__(self, weights=None, *, variables=None, batch_size=100):
    import jax
    from jdpm.models import inception

    if variables is None:
      from jdpm.convert import inception as convert_inception
      variables = convert_inception.load_variables(weights)
    self.model = inception.InceptionV3()
    self.variables = variables
    self.batch_size = batch_size
    self._forward = jax.jit(lambda v, x: self.model.apply(v, x))
    self.name = "inception"

  def __call__(self, images):
    images = _check_images(images)

    def run(chunk):
      out = self._forward(self.variables, chunk)
      return {"pool": out["pool3"], "spatial": out["spatial"], "logits": out["logits_unbiased"]}

    return _batched(run, images, self.batch_size)


class ProxyFeatures:
  """Features of the proxy classifier of a built-in dataset (trained and saved on first use).

  Args:
    dataset: "shapes" or "digits" (the dataset the generator was trained on).
    data_dir: dataset root, where the classifier is saved.
    classifier: a ``jdpm.eval.proxy.TrainedClassifier`` to use instead of the saved one.
    batch_size: images per compiled call.
  """

  def __init__(self, dataset="shapes", data_dir=None, *, classifier=None, batch_size=250):
    import jax
    from jdpm.eval import proxy

    self.classifier = classifier or proxy.load_proxy_classifier(dataset, data_dir)
    self.batch_size = batch_size
    self.name = f"proxy:{self.classifier.dataset}:{self.classifier.fingerprint}"
    model = self.classifier.model
    norm = f"norm{PROXY_SPATIAL_STAGE}"

    def forward(params, images):
      x = images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
      (logits, pool), state = model.apply(
          {"params": params}, x, capture_intermediates=lambda mdl, _: mdl.name == norm,
          mutable=["intermediates"])
      spatial = jax.nn.relu(state["intermediates"][norm]["__call__"][0])[..., :PROXY_SPATIAL_CHANNELS]
      return {"pool": pool, "spatial": spatial.reshape(spatial.shape[0], -1), "logits": logits}

    self._forward = jax.jit(forward)

  def __call__(self, images):
    images = _check_images(images)
    return _batched(lambda chunk: self._forward(self.classifier.params, chunk), images, self.batch_size)


def make_extractor(kind, *, dataset=None, data_dir=None, inception_weights=None):
  """"inception" or "proxy" (the latter for a built-in `dataset`) → a feature extractor."""
  if kind == "inception":
    return InceptionFeatures(inception_weights)
  if kind == "proxy":
    if dataset is None:
      raise ValueError("proxy features need the dataset the model was trained on (shapes or digits).")
    return ProxyFeatures(dataset, data_dir)
  raise ValueError(f"unknown feature extractor {kind!r}; use 'inception' or 'proxy'.")


def dataset_reference(dataset, extractor, *, split="train", num_images=None, data_dir=None,
                      keep_features=10_000, batch_size=500):
  """Reference statistics of real images: `extractor` over the first `num_images` of `split`.

  Args:
    dataset: a jdpm dataset name with uint8 images ("shapes", "digits", "imagenet2012", ...).
    extractor: a feature extractor (``InceptionFeatures``, ``ProxyFeatures``).
    split: which split; num_images: how many of its images (default all).
    keep_features: pool-feature rows kept for precision/recall (ADM keeps 10,000).
  Returns:
    a ``jdpm.eval.Reference``; ``.save(path)`` writes the ADM ``.npz`` layout.
  """
  from tqdm import tqdm

  from jdpm.data import registry
  from jdpm.eval.feature_stats import FeatureStats
  from jdpm.eval.reference import make_reference

  source = registry.data_source(dataset, split, data_dir=data_dir)
  total = len(source) if num_images is None else min(int(num_images), len(source))
  pool, spatial = FeatureStats(keep_features=keep_features), FeatureStats()
  for start in tqdm(range(0, total, batch_size), desc=f"reference features ({dataset}/{split})",
                    unit="batch", leave=False):
    records = source.__getitems__(list(range(start, min(start + batch_size, total))))
    images = np.stack([np.asarray(r["image"]) for r in records])
    if images.dtype != np.uint8:
      raise ValueError(f"{dataset} holds {images.dtype} arrays, not uint8 images: reference statistics "
                       "are computed from real images (use the image dataset, not its latents).")
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    features = extractor(images)
    pool.add(features["pool"])
    spatial.add(features["spatial"])
  return make_reference(pool, spatial)


def fingerprint(*parts) -> str:
  """A short stable hash of strings (identifies what an interrupted evaluation was computing)."""
  h = hashlib.sha256()
  for part in parts:
    h.update(str(part).encode())
    h.update(b"\0")
  return h.hexdigest()[:16]
