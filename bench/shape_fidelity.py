"""Where a `shapes` model loses the class: regeneration from noised real images, and the classifier's tolerance.

  python bench/shape_fidelity.py --workdir=runs/tiny          # a trained train.py run on `shapes`
  python bench/shape_fidelity.py --no-record                  # the classifier part alone, printed only

Two measurements, both by the packaged proxy classifier (`jdpm.eval.proxy`) that the main job's quick
evaluation uses:

1. **The classifier's tolerance.** Its accuracy on real test images after a Gaussian blur (sigma in pixels)
   or added Gaussian noise (std in 0..255 units). Neither changes what a person sees as the class, so this
   says how close to the renderer's pixels a sample must come to be counted as its class.
2. **Class retention of a run** (`--workdir`). Real test images are noised to step t0 of the training
   diffusion (x_t0 = sqrt(abar) x0 + sqrt(1 - abar) eps) and denoised back to 0 with DDIM (`--steps` steps,
   the run's guidance scale and clipping), conditioned on their true label; the accuracy of the results, per
   shape. From small t0 the shape is still in x_t0 and an exact model keeps it; the t0 where accuracy falls
   is the noise level where the model stops drawing the class's shape, and t0 = N - 1 is generation from
   (almost) pure noise.
"""

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

BLURS = (0.5, 0.8, 1.2)  # Gaussian sigma, pixels
NOISES = (5.0, 10.0, 20.0)  # std, 0..255 units
T0S = (100, 200, 300, 400, 600, 999)


def per_shape_accuracy(classifier, images, labels):
  """(overall, [per shape]) accuracy of uint8 images (N, 32, 32, 3) under `classifier`."""
  from jdpm.data import shapes
  logits, _ = classifier.apply(images)
  right = np.asarray(logits).argmax(-1) == labels
  shape_ids = labels // len(shapes.COLOURS)
  return right.mean(), [right[shape_ids == k].mean() for k in range(len(shapes.SHAPES))]


def to_uint8(x):
  """Floats in 0..255 units (perturbed real images, possibly beyond the range) -> uint8, rounded and clipped."""
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def classifier_rows(classifier, images, labels):
  """Table rows (perturbation, accuracy, per shape) on real images under blur and noise."""
  import scipy.ndimage
  x = images.astype(np.float64)
  rng = np.random.default_rng(0)
  cases = [("none", x)]
  cases += [(f"blur sigma {s} px", scipy.ndimage.gaussian_filter(x, (0, s, s, 0))) for s in BLURS]
  cases += [(f"noise std {n:g}", x + rng.normal(0.0, n, x.shape)) for n in NOISES]
  return [(name, *per_shape_accuracy(classifier, to_uint8(v), labels)) for name, v in cases]


def retention_rows(run, images, labels, classifier, steps, seed):
  """Table rows (t0, SNR, accuracy, per shape) of regeneration from real images noised to t0.

  `run` is `jdpm.training.run.restore`'s (config, model, variables, step) of the trained run.
  """
  import jax
  import jax.numpy as jnp
  from jdpm import generate
  from jdpm.diffusion import guidance
  from jdpm.training import objectives

  config, model, variables, step = run
  diffusion = objectives.training_diffusion(config, model)
  scale = float(config.sample.cfg_scale)
  channels = config.sample.get("cfg_channels", -1)
  channels = None if channels is None or channels < 0 else channels
  clip = bool(config.sample.get("clip_denoised", False))
  null = jnp.full(labels.shape, model.num_classes)
  abar = np.asarray(diffusion.alphas_cumprod)

  @jax.jit
  def x0_estimate(x, t, y):
    tt = jnp.full((x.shape[0],), t)
    out = model.apply(variables, jnp.concatenate([x, x]), jnp.concatenate([tt, tt]), jnp.concatenate([y, null]))
    cond, uncond = jnp.split(out, 2)
    out = guidance.combine(cond, uncond, scale, channels) if scale != 1 else cond
    return diffusion.p_mean_variance_from_output(out, x, tt, clip_denoised=clip)["pred_xstart"]

  x0 = jnp.asarray(images, jnp.float32) / 127.5 - 1
  y = jnp.asarray(labels)
  rows = []
  for t0 in T0S:
    noise = jax.random.normal(jax.random.key(seed + t0), x0.shape)
    x = np.sqrt(abar[t0]) * x0 + np.sqrt(1 - abar[t0]) * noise
    grid = np.linspace(t0, 0, steps + 1).round().astype(int)
    for t, s in zip(grid[:-1], grid[1:]):  # DDIM (eta 0); the last step returns the x_0 estimate
      x0_hat = x0_estimate(x, int(t), y)
      eps_hat = (x - np.sqrt(abar[t]) * x0_hat) / np.sqrt(1 - abar[t])
      x = np.sqrt(abar[s]) * x0_hat + np.sqrt(1 - abar[s]) * eps_hat if s > 0 else x0_hat
    accuracy, per_shape = per_shape_accuracy(classifier, generate.to_uint8(x), labels)
    rows.append((t0, abar[t0] / (1 - abar[t0]), accuracy, per_shape))
    print(f"t0 {t0}: accuracy {accuracy:.3f}", flush=True)
  return step, scale, rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="a train.py run on `shapes` (omit: the classifier part only)")
  parser.add_argument("--num-images", type=int, default=500, help="real test images (class-balanced)")
  parser.add_argument("--steps", type=int, default=20, help="DDIM steps from t0 to 0")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
  args = parser.parse_args(argv)

  from jdpm.data import shapes
  from jdpm.eval import proxy
  from jdpm.training import run as run_lib
  run = None
  if args.workdir:  # read first: a wrong --workdir is one line, before any measuring
    try:
      run = run_lib.restore(args.workdir)
    except run_lib.ConfigError as e:
      sys.exit(f"shape_fidelity.py: {e}")
  classifier = proxy.default_classifier("shapes", None)
  images, labels = shapes.generate("test", np.arange(args.num_images))
  header = " | ".join(shapes.SHAPES)
  lines = [f"The packaged proxy classifier on {args.num_images} real test images, perturbed:", "",
           f"| perturbation | accuracy | {header} |", "|---|---:|" + "---:|" * len(shapes.SHAPES)]
  for name, accuracy, per_shape in classifier_rows(classifier, images, labels):
    lines.append(f"| {name} | {accuracy:.3f} | " + " | ".join(f"{a:.2f}" for a in per_shape) + " |")
  if run is not None:
    step, scale, rows = retention_rows(run, images, labels, classifier, args.steps, args.seed)
    lines += ["", f"Class retention of `{args.workdir}` (step {step}): real test images noised to t0, DDIM-"
              f"{args.steps} back to 0 with guidance {scale:g}, accuracy of the results:", "",
              f"| t0 | SNR | accuracy | {header} |", "|---:|---:|---:|" + "---:|" * len(shapes.SHAPES)]
    for t0, snr, accuracy, per_shape in rows:
      lines.append(f"| {t0} | {snr:.3g} | {accuracy:.3f} | " + " | ".join(f"{a:.2f}" for a in per_shape) + " |")
  body = "\n".join(lines)
  common.record("Shape fidelity: class retention and the proxy classifier's tolerance", body, append=not args.no_record)


if __name__ == "__main__":
  main()
