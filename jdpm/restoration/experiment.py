"""From a ``configs/dpir.py`` config to the task, the modules, the data, a trained stage, a loaded model."""

import numpy as np
import jax

from jdpm.data import clean_images
from jdpm.diffusion import named_beta_schedule
from jdpm.restoration import degradations, dpir, networks, training as train


def build_task(config):
  """The degradation of ``config.task`` with ``config.degradation``'s settings."""
  return degradations.create(config.task, **dict(config.degradation))


def build_model(config):
  """The `DPIR` bundle (modules and schedule) described by `config`."""
  betas = named_beta_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
  restorer_cls = networks.BurstRestorer if config.restorer.kind == "burst" else networks.ResidualRestorer
  return dpir.DPIR(denoiser=networks.Denoiser(**dict(config.denoiser.model)),
                   restorer=restorer_cls(**dict(config.restorer.model)),
                   fusion=networks.FusionNet(**dict(config.fusion.model)),
                   alphas_cumprod=np.cumprod(1.0 - betas))


def images(config, split):
  """(N, P, P, 3) clean patches: the user's folder when ``config.data.folder`` is set, else built-in."""
  d = config.data
  limit = int(d.limit) or None
  if d.folder:
    if split == "test":
      return clean_images.folder_patches(f"{d.folder}/test", d.patch, limit=limit, seed=config.seed)
    return clean_images.folder_patches(f"{d.folder}/train", d.patch, limit=limit, seed=config.seed)
  return clean_images.builtin_patches(split, d.patch, d.downscale, limit=limit, seed=config.seed)


def initial_params(config, model, task, modules=dpir.MODULES):
  """Fresh parameters of `modules` (shapes from the config's patch size)."""
  p = int(config.data.patch)
  example_y = np.zeros((1,) + task.observed_shape(p, p), np.float32)
  return dpir.init_params(model, jax.random.PRNGKey(config.seed), example_y, (1, p, p, 3), modules)


def train_stage(config, workdir, data=None, log=print):
  """Trains ``config.stage`` and saves it under `workdir`; the fusion stage loads the frozen modules.

  Returns:
    (state, frozen, seconds) of `jdpm.restoration.train.train_module`.
  """
  model, task = build_model(config), build_task(config)
  stage = config.stage
  if stage not in dpir.MODULES:
    raise ValueError(f"config.stage must be 'denoiser', 'restorer' or 'fusion'; got {stage!r}.")
  directory = train.module_dir(workdir, stage, config.task)
  if stage == "fusion":  # the frozen modules first: a missing one is reported before any work
    frozen = {"denoiser": train.load_module(workdir, "denoiser"),
              "restorer": train.load_module(workdir, "restorer", config.task)}
  data = images(config, "train") if data is None else data
  params = initial_params(config, model, task, modules=(stage,))
  if stage == "denoiser":
    return train.train_module(train.DenoiserObjective(model), params, config.denoiser.train, directory, data,
                              seed=config.seed, log=log)
  if stage == "restorer":
    return train.train_module(train.RestorerObjective(model, task), params, config.restorer.train, directory,
                              data, seed=config.seed, log=log)
  params.update(frozen)
  max_step = None if config.fusion.max_step < 0 else int(config.fusion.max_step)
  return train.train_module(train.FusionObjective(model, task, max_step), params, config.fusion.train,
                            directory, data, frozen_patterns=tuple(config.frozen_patterns), seed=config.seed,
                            log=log)


def load(config, workdir, *, restorer_workdir=None, denoiser_workdir=None):
  """(model, params) of a trained DP-IR: the three modules from their checkpoints.

  restorer_workdir / denoiser_workdir: take that module from another root workdir (the swap study).
  """
  model = build_model(config)
  params = {"denoiser": train.load_module(denoiser_workdir or workdir, "denoiser"),
            "restorer": train.load_module(restorer_workdir or workdir, "restorer", config.task),
            "fusion": train.load_module(workdir, "fusion", config.task)}
  return model, params
