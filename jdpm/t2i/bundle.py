"""The trained built-in model as a text-to-image pipeline, and its proxy alignment metric.

  pipe, proxy_variables, config = jdpm.t2i.bundle.load("runs/t2i")
  out = jdpm.pipelines.text_to_image(pipe, ["a red ring left of a blue square"], steps=20,
                                     guidance_scale=4.0, method="dpm_solver++")
  scores = alignment(proxy_variables, out["images"], prompts)     # per-image correctness

The pipeline is a `jdpm.pipelines.TextToImagePipeline` in pixel space (no VAE) with the word tokenizer, so
every analysis and the acceleration sweep run unchanged on it and on a Stable Diffusion folder.
"""

import json
import pathlib

import jax
import ml_collections
import numpy as np

from jdpm import generate
from jdpm.data import captioned_shapes
from jdpm.diffusion import VPSchedule, betas as betas_lib
from jdpm.pipelines.text_to_image import TextToImagePipeline
from jdpm.t2i import models
from jdpm.training import checkpoint


def is_builtin(path):
  """Whether `path` is a workdir of `jdpm.t2i.train` (rather than a diffusers folder)."""
  return (pathlib.Path(path) / "config.json").is_file() and (pathlib.Path(path) / "checkpoints").is_dir()


def assemble(config, unet_variables, text_variables):
  """A pixel-space `TextToImagePipeline` from the built-in model's config and variables."""
  schedule = VPSchedule.discrete(betas_lib.linear_betas(config.denoiser.num_timesteps))
  return TextToImagePipeline(models.denoiser(config), unet_variables, None, None, models.text_encoder(config),
                             text_variables, None, schedule,
                             generate.MODEL_TYPES[config.denoiser.get("prediction", "epsilon")],
                             word_tokenizer=models.tokenizer(config))


def load(workdir):
  """(pipeline, proxy variables, config) from a `jdpm.t2i.train` workdir."""
  workdir = pathlib.Path(workdir)
  if not is_builtin(workdir):
    raise ValueError(f"{workdir} is not a trained built-in model (no config.json and checkpoints/); train one "
                     f"with `python -m jdpm.t2i.train --config tiny --workdir {workdir}`.")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    state, frozen, _ = ckpt.read()
  return assemble(config, state["unet"], frozen["text"]), state["proxy"], config


def predict(proxy_variables, images, batch=500):
  """{head: (N,) predicted class} of images in about [-1, 1] (clipped)."""
  apply = jax.jit(lambda v, x: models.proxy().apply(v, x)[0])
  images = np.clip(np.asarray(images, np.float32), -1, 1)
  logits = np.concatenate([np.asarray(apply(proxy_variables, images[i:i + batch]))
                           for i in range(0, len(images), batch)])
  return {h: np.argmax(v, -1) for h, v in models.split_heads(logits).items()}


def alignment(proxy_variables, images, prompts):
  """Per-image prompt following by the proxy: {"shape", "colour", "layout", "all"} (N,) bools.

  shape / colour: every object's (both slots of two-object prompts; slot 0 and the size for single ones)
  matches; layout: single vs left-right vs above-below (the relation, given the slot order); all: all of it.
  """
  want = captioned_shapes.label_arrays(list(prompts))
  got = predict(proxy_variables, images)
  eq = {h: got[h] == want[h] for h in want}
  out = {"shape": eq["shape0"] & eq["shape1"], "colour": eq["colour0"] & eq["colour1"],
         "layout": eq["layout"], "size": eq["size"]}
  out["all"] = out["shape"] & out["colour"] & out["layout"] & out["size"]
  return out


def summarize(scores):
  """Means of `alignment`'s booleans."""
  return {k: float(np.mean(v)) for k, v in scores.items()}
