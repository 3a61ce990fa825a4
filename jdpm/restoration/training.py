"""Training the three DP-IR modules: the denoiser (once), a restorer per task, the fusion per task.

The command line is `jdpm.restoration.train`. One root workdir holds every module: ``denoiser/``
(task-agnostic) and ``<task>/restorer``, ``<task>/fusion``. The loop reuses jdpm's training
pieces: the objective protocol and update step (`jdpm.training.step.make_update_fn`), the optimizer
(`make_optimizer`), the train state, the Orbax `Checkpointer` and the parameter freezing
(`jdpm.training.freeze`): the fusion run holds the full tree ``{"denoiser", "restorer", "fusion"}``,
``frozen_patterns`` put the first two in the frozen half, so that only phi_F is differentiated and
only phi_F's parameters are in the optimizer state.
(jdpm's `train.py` trainer expects a registered model and data set with one forward signature; the
three-module bundle and on-the-fly degradations do not fit it, hence this short loop.)
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jdpm.restoration import dpir
from jdpm.restoration.networks import SIGMA_DATA
from jdpm.training import checkpoint, freeze, optimizers, state as state_lib, step as step_lib


def augment(rng, x):
  """Random flips and 90-degree rotations of a (B, P, P, 3) batch (one draw for the batch)."""
  k1, k2, k3 = jax.random.split(rng, 3)
  x = jnp.where(jax.random.bernoulli(k1), x[:, ::-1], x)
  x = jnp.where(jax.random.bernoulli(k2), x[:, :, ::-1], x)
  return jnp.where(jax.random.bernoulli(k3), jnp.swapaxes(x, 1, 2), x)


@dataclasses.dataclass(frozen=True)
class DenoiserObjective:
  """phi_D on every noise level of the schedule: x~ = x0 + sigma~ eps, sigma~ from a uniform step n;
  loss = lambda(sigma~) |phi_D(x~, sigma~) - x0|^2 with EDM's weighting (unit-variance network target).
  Batch: {"image": (B, H, W, 3) in [0, 1]}."""
  model: dpir.DPIR

  def draw(self, rng, batch, extra):
    del extra
    k_aug, k_t, k_noise = jax.random.split(rng, 3)
    x0 = dpir.to_model(augment(k_aug, batch["image"]))
    n = jax.random.randint(k_t, x0.shape[:1], 0, self.model.num_timesteps)
    return dict(batch, x0=x0, n=n, noise=jax.random.normal(k_noise, x0.shape))

  def per_example_loss(self, params, batch):
    abar = jnp.asarray(self.model.alphas_cumprod, jnp.float32)[batch["n"]]
    sigma = jnp.sqrt((1.0 - abar) / abar)
    x_ve = batch["x0"] + sigma[:, None, None, None] * batch["noise"]
    out = self.model.denoiser.apply({"params": params["denoiser"]}, x_ve, sigma)
    weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
    mse = jnp.mean(jnp.square(out - batch["x0"]), axis=(1, 2, 3))
    return weight * mse, {"mse": mse}

  def update_extra(self, extra, batch, losses, aux):
    return extra


@dataclasses.dataclass(frozen=True)
class RestorerObjective:
  """phi_IR: the mean-squared error of phi_IR(y) against x0 ([0, 1] units) on degradations drawn
  per batch. Batch: {"image": (B, H, W, 3) in [0, 1]}."""
  model: dpir.DPIR
  task: Any

  def draw(self, rng, batch, extra):
    del extra
    k_aug, k_deg = jax.random.split(rng)
    x = augment(k_aug, batch["image"])
    y = self.task.apply(x, self.task.sample(k_deg, x.shape[0]))
    return dict(batch, clean=x, y=y)

  def per_example_loss(self, params, batch):
    out = self.model.restore_ir(params, batch["y"])
    mse = jnp.mean(jnp.square(out - batch["clean"]), axis=(1, 2, 3))
    return mse, {}

  def update_extra(self, extra, batch, losses, aux):
    return extra


@dataclasses.dataclass(frozen=True)
class FusionObjective:
  """phi_F with phi_D and phi_IR frozen: x_n = q(x_n | x0) at a uniform step n <= max_step,
  loss = |phi_F(phi_IR(y), phi_D(x~_n, sigma~_n), n) - x0|^2 in [-1, 1]. Batch as `RestorerObjective`."""
  model: dpir.DPIR
  task: Any
  max_step: int | None = None

  def draw(self, rng, batch, extra):
    del extra
    k_aug, k_deg, k_t, k_noise = jax.random.split(rng, 4)
    x = augment(k_aug, batch["image"])
    y = self.task.apply(x, self.task.sample(k_deg, x.shape[0]))
    top = self.model.num_timesteps if self.max_step is None else self.max_step + 1
    n = jax.random.randint(k_t, x.shape[:1], 0, top)
    return dict(batch, x0=dpir.to_model(x), y=y, n=n, noise=jax.random.normal(k_noise, x.shape))

  def per_example_loss(self, params, batch):
    abar = jnp.asarray(self.model.alphas_cumprod, jnp.float32)[batch["n"]][:, None, None, None]
    x_n = jnp.sqrt(abar) * batch["x0"] + jnp.sqrt(1.0 - abar) * batch["noise"]
    x0_ir = dpir.to_model(self.model.restore_ir(params, batch["y"]))
    x0_d = self.model.denoise(params, x_n, batch["n"])
    out = self.model.fuse(params, x0_ir, x0_d, batch["n"])
    mse = jnp.mean(jnp.square(out - batch["x0"]), axis=(1, 2, 3))
    return mse, {}

  def update_extra(self, extra, batch, losses, aux):
    return extra


def module_dir(workdir, stage, task=None):
  """Where a module's checkpoints live: <workdir>/denoiser or <workdir>/<task>/<stage>."""
  workdir = pathlib.Path(workdir)
  return workdir / "denoiser" if stage == "denoiser" else workdir / task / stage


def load_module(workdir, stage, task=None, *, name=None):
  """The trained parameters (EMA) of one module from its checkpoint directory.

  Raises:
    FileNotFoundError: with the command that trains the missing module.
  """
  directory = module_dir(workdir, stage, task)
  found = None
  if directory.is_dir():
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=None)
    try:
      found = ckpt.read()
    finally:
      ckpt.close()
  if found is None:
    arg = "denoiser" if stage == "denoiser" else f"{task}_{stage}"
    raise FileNotFoundError(
        f"no trained {stage} checkpoint in {directory}; train it first with: python -m "
        f"jdpm.restoration.train --config=configs/dpir.py:{arg} --workdir={pathlib.Path(workdir)}")
  state, frozen, _ = found
  params = freeze.merge(state["ema_params"], frozen)
  key = name or ("denoiser" if stage == "denoiser" else stage)
  return jax.tree.map(jnp.asarray, params[key])


def save_module(directory, params):
  """Saves pretrained parameters ({"denoiser": ...} or {"restorer": ...}) as a module checkpoint
  that `load_module` reads, e.g. weights trained elsewhere and converted to this layout."""
  state = state_lib.create_train_state(params, optax.set_to_zero(), jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, async_save=False)
  ckpt.save(0, state, force=True)
  ckpt.close()


def train_module(objective, params, config, directory, images, *, frozen_patterns=(), seed=0, log=print):
  """Trains `params` (the full module dict) with `objective`; returns (state, frozen, seconds).

  Args:
    objective: a DP-IR objective (the `jdpm.training.step.Objective` protocol).
    params: {"denoiser": ..., "restorer": ..., "fusion": ...} (the modules the objective reads).
    config: fields batch_size, total_steps, time_budget_s, ema_decay and the optimizer sub-dict
      (see `jdpm.training.optimizers.make_optimizer`).
    directory: the checkpoint directory (the final state is saved there with the frozen half).
    images: (N, P, P, 3) float32 training patches in [0, 1].
    frozen_patterns: regular expressions of `jdpm.training.freeze.split`.
  """
  directory = pathlib.Path(directory)
  if directory.is_dir() and any(directory.iterdir()):
    raise ValueError(f"{directory} already holds a trained module; delete it to train again, or use "
                     f"another --workdir.")
  trainable, frozen = freeze.split(params, frozen_patterns)
  tx = optimizers.make_optimizer(config.optimizer)
  rng = jax.random.PRNGKey(seed)
  state = state_lib.create_train_state(trainable, tx, rng)
  update = jax.jit(step_lib.make_update_fn(objective, tx, ema_decay=config.ema_decay, ema_warmup=True),
                   donate_argnums=0)
  batch_size = min(int(config.batch_size), len(images))
  order = np.random.default_rng(seed)
  budget = float(config.get("time_budget_s", 0.0) or 0.0)
  start = None
  bar = tqdm.tqdm(total=int(config.total_steps), desc=f"train {directory.name}", unit="step",
                  dynamic_ncols=True, disable=log is None)
  for i in range(int(config.total_steps)):
    batch = {"image": jnp.asarray(images[order.choice(len(images), batch_size, replace=False)])}
    state, metrics = update(state, batch, frozen)
    bar.update(1)
    if start is None:
      jax.block_until_ready(state.step)
      start = time.time()  # compilation excluded
    if (i + 1) % 50 == 0:
      bar.set_postfix(loss=f"{float(metrics['loss']):.4g}")
    if budget and time.time() - start >= budget:
      break
  bar.close()
  seconds = time.time() - (start or time.time())
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, async_save=False)
  ckpt.save(int(state.step), state, frozen=frozen, force=True)
  ckpt.close()
  return state, frozen, seconds
