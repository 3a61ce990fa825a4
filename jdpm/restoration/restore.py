"""Restore one image file with a trained DP-IR, and write a PNG panel.

    python -m jdpm.restoration.restore --config=configs/dpir.py:sr --workdir=runs/dpir \\
        --input=photo.png --output=restored.png --synthesize --panel=panel.png

--synthesize treats the input as the ground truth and degrades it with the task's operator (the
panel then shows degraded | restorer | DP-IR | ground truth and the metrics are printed); without
it the input is the observation itself (a low-resolution image for "sr", a blurry one for
"deblur"; the burst task needs --synthesize or an .npz file with a "burst" array (frames, h, w)).
Sampler settings come from the config (``--config.sampler.tau=...``, ``--config.sampler.steps=...``).
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jdpm.data import clean_images
from jdpm.eval import image_quality
from jdpm.restoration import experiment, sampler


def _to_uint8(img):
  return (np.clip(np.asarray(img), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path, img):
  """Writes one (H, W, 3) image in [0, 1] as an 8-bit PNG."""
  Image.fromarray(_to_uint8(img)).save(path)


def save_panel(path, tiles, gap=4, label_height=14):
  """A row of captioned images, each scaled (nearest) to the tallest: tiles = [(caption, (H, W, 3))]."""
  height = max(t.shape[0] for _, t in tiles)
  scaled = []
  for caption, t in tiles:
    im = Image.fromarray(_to_uint8(t))
    factor = height / t.shape[0]
    scaled.append((caption, im.resize((round(t.shape[1] * factor), height), Image.NEAREST)))
  width = sum(im.width for _, im in scaled) + gap * (len(scaled) - 1)
  panel = Image.new("RGB", (width, height + label_height), "white")
  draw = ImageDraw.Draw(panel)
  x = 0
  for caption, im in scaled:
    panel.paste(im, (x, label_height))
    draw.text((x + 2, 1), caption, fill="black")
    x += im.width + gap
  panel.save(path)


def observation_view(task, y):
  """A displayable (h, w, 3) view of one observation (the first frame of a burst, as a grey mosaic)."""
  y = np.asarray(y)
  if task.name == "burst":
    return np.repeat(y[0][..., None], 3, axis=-1)
  return y


def crop_to_multiple(img, multiple):
  h, w = img.shape[:2]
  return img[: h - h % multiple, : w - w % multiple]


def restore_file(config, workdir, input_path, output_path, *, synthesize=False, panel_path=None, seed=0):
  """Restores one file; returns a dict of the measured values (NFE, and PSNR/SSIM with a ground truth)."""
  model, params = experiment.load(config, workdir)
  task = experiment.build_task(config)
  input_path = pathlib.Path(input_path)
  rng = jax.random.PRNGKey(seed)
  truth = None
  if input_path.suffix == ".npz":
    y = jnp.asarray(np.load(input_path)["burst"])[None]
  else:
    img = clean_images.load_image(input_path)
    if synthesize:
      scale = getattr(task, "scale", 1)
      truth = crop_to_multiple(img, 2 * scale * 4)
      k_deg, rng = jax.random.split(rng)
      y = task.apply(jnp.asarray(truth)[None], task.sample(k_deg, 1))
    elif task.name == "burst":
      raise ValueError("the burst task restores a burst: pass an .npz with a 'burst' array (frames, h, w), "
                       "or --synthesize with a clean image.")
    else:
      y = jnp.asarray(crop_to_multiple(img, 4))[None]
  s = config.sampler
  x0_ir = model.restore_ir(params, y)
  nfe = sampler.nfe(model.num_timesteps, s.steps, s.tau)
  out, _ = jax.jit(lambda p, y, r, x0: model.restore(p, y, r, steps=s.steps, tau=s.tau, eta=s.eta, x0_ir=x0))(
      params, y, rng, x0_ir)
  out = jnp.clip(out, 0.0, 1.0)
  save_png(output_path, out[0])
  result = {"nfe": nfe}
  tiles = [("degraded", observation_view(task, y[0])), ("restorer", x0_ir[0]), (f"DP-IR ({nfe} NFE)", out[0])]
  if truth is not None:
    tiles.append(("ground truth", truth))
    for name, est in (("restorer", x0_ir[0]), ("dpir", out[0])):
      result[f"psnr_{name}"] = float(image_quality.psnr(jnp.clip(est, 0, 1), truth))
      result[f"ssim_{name}"] = float(image_quality.ssim(jnp.clip(est, 0, 1), truth))
  if panel_path:
    save_panel(panel_path, tiles)
  return result


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  del argv
  f = flags.FLAGS
  try:
    result = restore_file(f.config, f.workdir, f.input, f.output, synthesize=f.synthesize, panel_path=f.panel,
                          seed=f.seed)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"jdpm.restoration.restore: {e}")
  print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "e.g. configs/dpir.py:sr", lock_config=True)
  flags.DEFINE_string("workdir", None, "root directory of the trained DP-IR modules")
  flags.DEFINE_string("input", None, "an image file (or an .npz with a 'burst' array)")
  flags.DEFINE_string("output", None, "where to write the restored PNG")
  flags.DEFINE_bool("synthesize", False, "the input is a clean image: degrade it first, report metrics")
  flags.DEFINE_string("panel", "", "optional PNG panel: degraded | restorer | DP-IR | ground truth")
  flags.DEFINE_integer("seed", 0, "seed of the degradation and the reverse process")
  flags.mark_flags_as_required(["config", "workdir", "input", "output"])
  app.run(main)
