"""What the analysis commands share: the model source (jdpm's built-in text-to-image model, a Stable
Diffusion diffusers folder, or no model: clean built-in scenes only), prompts, sampling with trajectories,
and figure files."""

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdpm import pipelines
from jdpm.data import captioned_shapes
from jdpm.t2i import bundle

# Prompts for Stable Diffusion folders (the built-in model draws captions of its grammar instead).
SD_PROMPTS = ("a red car on a street", "a photo of a cat", "a blue bird on a branch", "a yellow house",
              "a bowl of green apples", "a white horse in a field", "a wooden chair", "a black dog on the grass")


@dataclasses.dataclass
class Source:
  """A model (or just data) to analyse.

  Attributes:
    name: a label for figures.
    kind: "pixels" or "latents" (what the diffusion state is).
    pipeline: a `TextToImagePipeline`, or None (data only).
    proxy_variables: the built-in scene classifier, or None.
    alphas_cumprod: (T,) ᾱ of the discrete schedule.
    image_size: built-in scenes are rendered at this size for data-only analyses.
  """
  name: str
  kind: str
  pipeline: Any
  proxy_variables: Any
  alphas_cumprod: np.ndarray
  image_size: int = 32

  @property
  def builtin(self):
    return self.proxy_variables is not None

  def prompts(self, n, seed=0):
    """n prompts: captions of the scene grammar (built-in / no model) or `SD_PROMPTS` cycled."""
    if self.pipeline is not None and not self.builtin:
      return [SD_PROMPTS[i % len(SD_PROMPTS)] for i in range(n)]
    return [s.caption for s in captioned_shapes.scenes(np.arange(n), seed=seed + 1000)]

  def clean_examples(self, n, seed=0):
    """(n, ...) clean diffusion states: built-in scenes in [-1, 1], or their VAE latents."""
    size = self.image_size
    if self.pipeline is not None:
      size = self.pipeline.image_size[0]
    raw, _, _ = captioned_shapes.generate(n, seed=seed, size=size)
    images = captioned_shapes.to_model_range(raw)
    if self.kind == "latents":
      vae = self.pipeline.vae
      return np.asarray(jax.jit(vae.encode_latents)(self.pipeline.vae_variables, jnp.asarray(images)))
    return images


def add_source_arguments(parser):
  g = parser.add_argument_group("model and sampling")
  g.add_argument("--out", required=True, help="folder for the figures and numbers")
  src = g.add_mutually_exclusive_group()
  src.add_argument("--model", help="a built-in model workdir (python -m jdpm.t2i.train)")
  src.add_argument("--pipeline", help="a Stable Diffusion 1.x/2.x diffusers folder")
  g.add_argument("--image_size", type=int, default=32, help="scene size without a model")
  g.add_argument("--steps", type=int, default=20)
  g.add_argument("--method", default="dpm_solver++")
  g.add_argument("--cfg_scale", type=float, default=4.0)
  g.add_argument("--num_prompts", type=int, default=8)
  g.add_argument("--seed", type=int, default=0)


def load_source(args):
  """The `Source` of parsed `add_source_arguments` (a clear error for an unusable folder)."""
  if getattr(args, "model", None):
    pipe, proxy_vars, config = bundle.load(args.model)
    return Source("built-in T2I model", "pixels", pipe, proxy_vars, _alphas(pipe), config.image_size)
  if getattr(args, "pipeline", None):
    folder = pathlib.Path(args.pipeline)
    if not (folder / "model_index.json").is_file():
      raise SystemExit(f"error: {folder} is not a diffusers pipeline folder (no model_index.json).")
    try:
      pipe = pipelines.load_pipeline(folder)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    return Source(folder.name, "latents", pipe, None, _alphas(pipe))
  return Source("built-in scenes", "pixels", None, None, _alphas(None), args.image_size)


def _alphas(pipe):
  from jdpm.diffusion import betas as betas_lib  # pylint: disable=import-outside-toplevel
  if pipe is None:
    return np.cumprod(1.0 - betas_lib.linear_betas(1000))
  sched = pipe.schedule
  t = (np.arange(sched.total_n) + 1.0) / sched.total_n
  return np.asarray(sched.alpha(jnp.asarray(t)), np.float64) ** 2


def out_dir(path):
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  return path


def sample_with_trajectory(source, prompts, *, steps, method="dpm_solver++", guidance_scale=4.0, seed=0,
                           **kwargs):
  """`text_to_image` with the sampler's trajectory and x̂0 per evaluation, decoded images as numpy."""
  out = pipelines.text_to_image(source.pipeline, list(prompts), steps=steps, method=method,
                                guidance_scale=guidance_scale, seed=seed, return_trajectory=True,
                                order=2 if method != "ddim" else 1, **kwargs)
  return {k: (np.asarray(v) if hasattr(v, "shape") else v) for k, v in out.items()}


def model_source(args, what):
  """`load_source`, refusing the data-only source: `what` needs a model."""
  source = load_source(args)
  if source.pipeline is None:
    raise SystemExit(f"error: {what} needs a model: --model DIR (built-in) or --pipeline FOLDER.")
  return source


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(fig, path, title=None, dpi=110):
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)


def image_grid(images, titles, path, columns=8, title=None):
  """Saves images (N, H, W, 3) in [-1, 1] as a grid PNG with small titles."""
  plt = pyplot()
  images = np.clip((np.asarray(images) + 1) / 2, 0, 1)
  rows = int(np.ceil(len(images) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, text in zip(axes.flat, images, titles):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(text, fontsize=5)
  save_figure(fig, path, title, dpi=120)
