"""shapes-FID: a CPU-sized FID and class accuracy on the built-in datasets (`shapes`, `digits`).

FID needs Inception weights and thousands of samples at 299x299; on the small built-in datasets jdpm measures
sample quality with its own small classifier instead (`jdpm.models.proxy_classifier`):

- `train_proxy_classifier(dataset)` trains it on the dataset's train split (1-2 CPU minutes) and saves it in
  `<data_dir>/proxy_classifier/<dataset>/classifier.npz` with its metadata (test accuracy, steps, seed,
  augmentation, architecture, format version). `python -m jdpm.eval.proxy --dataset shapes` does the same
  from a shell (`jdpm.eval.proxy_train`).
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
with noise prediction at batch 32 after 0 / 300 / 600 / 1,200 training steps ~119 / 78 / 59 / 41, the current
tiny recipe (v-prediction, batch 8) 5.6 after its 8,000 steps. On digits the floor is higher (~1.3:
the classifier saw only 1,500 training images, and the train and test features differ) and noise shows less.
Like FID, the estimate is biased upwards by roughly (feature dim) / N: compare numbers only at the same N
(1,000 to 2,000 samples keep the bias far below the gaps between models). Numbers are only comparable under
one saved classifier: a retrained one (other steps, seed or library versions) has another scale.
Accuracy moves only once a model draws its classes: short CPU runs of the tiny configs (1,200 steps) still
give blobs that score chance (0.1) while their fid already falls steadily with training.

Single process: the images are gathered on this host (pass `jdpm.generate.host_array(samples)` in multi-host
jobs).
"""

import numpy as np

# The classifier's storage and training live in their own modules; their public names are re-exported here.
from jdpm.eval.proxy_store import (CLASSIFIER_FILE, FORMAT_VERSION, PACKAGED_DIR, ProxyClassifierError,  # noqa: F401
                                   TrainedClassifier, atomic_savez, classifier_dir, default_classifier,
                                   load_proxy_classifier, load_split, save_proxy_classifier)
from jdpm.eval.proxy_train import (DEFAULT_BATCH_SIZE, LEARNING_RATE, NOISE_STD, main,  # noqa: F401
                                   train_proxy_classifier)


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
  atomic_savez(path, mu=mu, sigma=sigma, fingerprint=np.array(classifier.fingerprint),
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
  classifier = classifier or default_classifier(dataset, data_dir)
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


if __name__ == "__main__":
  main()
