"""FID-50K style evaluation on the fly: draw samples batch by batch, keep only their features, resume.

``evaluate_generator(draw_batch, extractor, reference, num_samples=50_000, batch_size=...)`` calls
``draw_batch(i)`` for i = 0, 1, ... (each call returns uint8 images and the labels they were drawn for), runs
the feature extractor, and accumulates the statistics (``FeatureStats``: float64 mean and scatter, plus the
pool features for precision/recall and the logits for the Inception Score). No image is written to disk.

Every ``save_every`` batches the accumulated state goes to ``state_path`` (written to a temporary file and
renamed, so an interruption never leaves a half-written state). Re-running the same evaluation resumes from
the last saved batch; ``draw_batch(i)`` must therefore depend on ``i`` alone (seed the sampler with
``fold_in(key, i)``), which also makes the result independent of where it was interrupted. The state
carries a fingerprint of the evaluation's settings: a state from different settings is refused with a
message, never silently mixed in.
"""

import logging
import math
import os
import pathlib

import numpy as np

from jdpm.eval.feature_stats import FeatureStats
from jdpm.eval.suite import METRICS, evaluate

log = logging.getLogger("jdpm.eval.sample_eval")

PRECISION_RECALL_ROWS = 10_000  # the ADM evaluator compares 10k sample features with 10k reference ones


class _Accumulator:
  """The running statistics of the samples seen so far, with an exact save/load."""

  def __init__(self):
    self.next_batch = 0
    self.pool = FeatureStats(keep_features=PRECISION_RECALL_ROWS)
    self.spatial = FeatureStats()
    self.logits, self.labels = [], []

  def add(self, features, labels):
    self.pool.add(features["pool"])
    self.spatial.add(features["spatial"])
    self.logits.append(np.asarray(features["logits"], np.float32))
    self.labels.append(np.asarray(labels, np.int64))
    self.next_batch += 1

  @property
  def count(self):
    return self.pool.count

  def all_logits(self):
    return np.concatenate(self.logits) if self.logits else np.zeros((0, 0), np.float32)

  def all_labels(self):
    return np.concatenate(self.labels) if self.labels else np.zeros((0,), np.int64)

  def save(self, path, fingerprint):
    arrays = {"fingerprint": np.array(fingerprint), "next_batch": np.array(self.next_batch),
              "logits": self.all_logits(), "labels": self.all_labels()}
    arrays.update({f"pool/{k}": v for k, v in self.pool.state_dict().items()})
    arrays.update({f"spatial/{k}": v for k, v in self.spatial.state_dict().items()})
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: the previous state stays valid until the new one is complete

  @classmethod
  def load(cls, path, fingerprint):
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = dict(data)
    except Exception as e:  # a damaged state is not worth dying for: say so and start over
      log.warning("evaluation state %s is unreadable (%s); starting the evaluation from the beginning.", path, e)
      return None
    if str(arrays.get("fingerprint")) != fingerprint:
      raise ValueError(
          f"{path} holds an interrupted evaluation with different settings (model, sampler, seed, number of "
          "samples, batch size or features). Delete it to start over, or re-run with the settings it was "
          "started with.")
    acc = cls()
    acc.next_batch = int(arrays["next_batch"])
    acc.pool = FeatureStats.from_state_dict(
        {k[len("pool/"):]: v for k, v in arrays.items() if k.startswith("pool/")})
    acc.spatial = FeatureStats.from_state_dict(
        {k[len("spatial/"):]: v for k, v in arrays.items() if k.startswith("spatial/")})
    if len(arrays["logits"]):
      acc.logits, acc.labels = [arrays["logits"]], [arrays["labels"]]
    return acc


def evaluate_generator(draw_batch, extractor, reference, *, num_samples, batch_size, state_path=None,
                       fingerprint="", save_every=10, metrics=METRICS, class_accuracy=False,
                       progress=True):
  """Samples `num_samples` images in batches and evaluates them against `reference`.

  Args:
    draw_batch: ``draw_batch(i) -> (images (batch_size, H, W, 3) uint8, labels (batch_size,) int)``; must be
      a function of i alone (resumption re-draws from the first unsaved batch).
    extractor: a feature extractor (``jdpm.eval.features``): uint8 images → {"pool", "spatial", "logits"}.
    reference: a ``jdpm.eval.Reference`` of real images under the same extractor.
    num_samples: total samples (the last batch is cut to fit).
    batch_size: images per ``draw_batch`` call.
    state_path: where the running state is saved (None: no resumption).
    fingerprint: a string identifying the settings (model, sampler, seed, ...); see the module docstring.
    save_every: batches between state saves.
    metrics: which of FID, sFID, IS, precision, recall (``jdpm.eval.METRICS``).
    class_accuracy: also report the fraction of samples whose logits' argmax is their label (for a
      classifier trained on the generator's own classes, e.g. the proxy classifier).
  Returns:
    {metric: float} plus "num_samples".
  """
  from tqdm import tqdm

  num_batches = math.ceil(num_samples / batch_size)
  fingerprint = f"{fingerprint}|n={num_samples}|b={batch_size}|features={getattr(extractor, 'name', '?')}"
  acc = None
  if state_path is not None and pathlib.Path(state_path).exists():
    acc = _Accumulator.load(state_path, fingerprint)
    if acc is not None:
      log.info("resuming the evaluation from %s: %d of %d batches done.", state_path, acc.next_batch,
               num_batches)
  acc = acc or _Accumulator()
  bar = tqdm(total=num_batches, initial=acc.next_batch, desc="sampling + features", unit="batch",
             disable=not progress)
  while acc.next_batch < num_batches:
    index = acc.next_batch
    images, labels = draw_batch(index)
    keep = min(batch_size, num_samples - index * batch_size)
    acc.add(extractor(np.asarray(images)[:keep]), np.asarray(labels)[:keep])
    bar.update(1)
    if state_path is not None and (acc.next_batch % save_every == 0 or acc.next_batch == num_batches):
      acc.save(state_path, fingerprint)
  bar.close()
  results = evaluate({"pool_features": acc.pool, "spatial_features": acc.spatial, "logits": acc.all_logits()},
                     reference, metrics=metrics, split_size=_split_size(acc.count))
  if class_accuracy:
    results["class_accuracy"] = float(np.mean(np.argmax(acc.all_logits(), -1) == acc.all_labels()))
  results["num_samples"] = acc.count
  return results


def _split_size(count):
  # ADM: 10 splits of 5000 for 50k samples; fewer samples keep 10 splits (at least 1 row each).
  return max(1, min(5000, count // 10))
