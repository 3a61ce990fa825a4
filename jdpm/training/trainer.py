"""The training loop: config -> data pipeline -> sharded state -> jitted update -> checkpoints and logs.

Run it through ``train.py``. Every run lives in one work directory::

  workdir/config.json          the resolved config (a resumed run must use the same model)
  workdir/checkpoints/<step>/  Orbax checkpoints: train state + data-iterator position
  workdir/metrics.jsonl        one JSON line per logged step
  workdir/tensorboard/         TensorBoard event files
  workdir/samples/<step>.png   sample grids drawn with the EMA parameters

A run resumes automatically from the newest good checkpoint in its workdir. SIGTERM (preemption) finishes the
current step, saves, and exits cleanly.
"""

import dataclasses
import importlib.util
import json
import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jdpm import data as data_lib
from jdpm import diffusion as diffusion_lib
from jdpm import models
from jdpm import parallel
from jdpm.training import checkpoint as checkpoint_lib
from jdpm.training import metrics as metrics_lib
from jdpm.training import objectives, optimizers, preemption, schedules
from jdpm.training.state import TrainState, create_train_state
from jdpm.training.step import jit_update_fn, make_update_fn

log = logging.getLogger("jdpm.train")


class ConfigError(ValueError):
  """A config that cannot work; the message says which field and what to do."""


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a spec "path/to/config.py:arg" (as train.py's --config), e.g. "configs/edt.py:S"."""
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise ConfigError(f"config file {path!r} not found (expected e.g. configs/dit.py:tiny).")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def model_kwargs(config) -> dict:
  """The keyword arguments of ``jdpm.models.create`` from ``config.model`` (all fields but ``name``)."""
  kwargs = config.model.to_dict()
  kwargs.pop("name")
  return kwargs


def create_model(config):
  return models.create(config.model.name, **model_kwargs(config))


def create_training_diffusion(config):
  return diffusion_lib.create_diffusion("", noise_schedule=config.diffusion.beta_schedule,
                                        diffusion_steps=config.diffusion.num_timesteps,
                                        learn_sigma=config.model.get("learn_sigma", True))


OBJECTIVES = ("denoising", "edt_masking", "mdt_masking")


def make_objective(config, model):
  """The training objective named by ``config.objective`` (default "denoising").

  "denoising": the DiT loss; "edt_masking": EDT's full + token relation-enhanced masked pass;
  "mdt_masking": MDTv2's full + mask latent modelling pass.
  """
  name = config.get("objective", "denoising")
  diffusion = create_training_diffusion(config)
  common = dict(model=model, diffusion=diffusion, timestep_sampler=config.diffusion.timestep_sampler,
                class_dropout_prob=config.model.get("class_dropout_prob", 0.1),
                min_snr_gamma=config.diffusion.get("min_snr_gamma", 0.0))
  if name == "denoising":
    return objectives.DenoisingObjective(**common)
  if name == "edt_masking":
    from jdpm.training import edt_masking as masking
    return masking.EDTMaskingObjective.from_config(model, diffusion, config)
  if name == "mdt_masking":
    from jdpm.training import mdt_masking
    return mdt_masking.MaskedDenoisingObjective(
        **common, mask_ratio_span=config.get("mask_ratio_span", 0.2),
        per_example_ratio=config.get("mask_per_example_ratio", False))
  raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")


def validate(config, data_info) -> None:
  """Fails fast, with one line, on configs that cannot run on this machine or this data."""
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {n_dev} devices; "
                      f"set --config.batch_size to a multiple of {n_dev}.")
  if config.batch_size % config.grad_accum_steps or (config.batch_size // config.grad_accum_steps) % n_dev:
    raise ConfigError(f"batch_size={config.batch_size} must split into grad_accum_steps="
                      f"{config.grad_accum_steps} micro-batches that are each divisible by {n_dev} devices.")
  h, w, c = data_info.image_shape
  size, channels = config.model.get("input_size"), config.model.get("in_channels")
  if (size, size, channels) != (h, w, c):
    raise ConfigError(f"dataset {data_info.name!r} yields {h}x{w}x{c} inputs but the model expects "
                      f"{size}x{size}x{channels}; set --config.model.input_size/--config.model.in_channels.")
  if config.model.get("num_classes") != data_info.num_classes:
    raise ConfigError(f"dataset {data_info.name!r} has {data_info.num_classes} classes but "
                      f"config.model.num_classes={config.model.get('num_classes')}.")
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}.")


def _check_workdir_config(workdir: pathlib.Path, config) -> None:
  """Stores the config on a fresh run; refuses to resume a run of a different model."""
  path = workdir / "config.json"
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    stored = json.loads(path.read_text())
    if stored.get("model") != current["model"]:
      raise ConfigError(f"{workdir} holds a run of a different model ({stored.get('model')}); "
                        f"use a new --workdir or the same model config.")
  if jax.process_index() == 0:
    path.write_text(json.dumps(current, indent=2))


@dataclasses.dataclass
class Trainer:
  """Everything built from a config; `run` trains. Also used by tests and benchmarks piece by piece."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: object
  objective: objectives.DenoisingObjective
  optimizer: object
  lr_schedule: object
  state_shardings: object
  abstract_state: object
  update: object
  init: object

  @classmethod
  def from_config(cls, config, data_info):
    mesh = parallel.make_mesh(config.fsdp)
    model = create_model(config)
    objective = make_objective(config, model)
    lr_schedule = schedules.make_schedule(config.optimizer)
    optimizer = optimizers.make_optimizer(config.optimizer)
    init = make_init_fn(model, optimizer, objective, data_info)
    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = parallel.tree_shardings(abstract, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    compute_dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    update = make_update_fn(objective, optimizer, ema_decay=config.ema_decay,
                            ema_warmup=config.get("ema_warmup", False),
                            grad_accum_steps=config.grad_accum_steps, compute_dtype=compute_dtype,
                            lr_schedule=lr_schedule)
    update = jit_update_fn(update, shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh))
    return cls(config, mesh, model, objective, optimizer, lr_schedule, shardings, abstract, update, init)

  def init_state(self) -> TrainState:
    """A fresh train state, created directly with its shardings (never materialised on one device)."""
    return jax.jit(self.init, out_shardings=self.state_shardings)(jax.random.key(self.config.seed))


def make_init_fn(model, optimizer, objective, data_info):
  """``init(rng) -> TrainState`` for `jax.eval_shape` and the sharded `jax.jit` init."""
  h, w, c = data_info.image_shape

  def init(rng):
    rng_params, rng_train = jax.random.split(rng)
    x = jnp.zeros((1, h, w, c), jnp.float32)
    params = model.init(rng_params, x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))["params"]
    return create_train_state(params, optimizer, rng_train, extra=objective.init_extra())

  return init


def train(config: ml_collections.ConfigDict, workdir: str, *, sample_fn=None) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest good checkpoint.

  Args:
    config: a config from ``configs/*.py``.
    workdir: the run's directory (created if missing).
    sample_fn: optional ``sample_fn(trainer, state, step, path)`` writing a sample grid PNG; called every
      ``config.sample_every`` steps and at the end of training (process 0 writes).
  Returns:
    the final train state.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = config.data.data_dir or None
  try:
    data_info = data_lib.dataset_info(config.data.name, data_dir=data_dir)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  validate(config, data_info)
  _check_workdir_config(workdir, config)

  trainer = Trainer.from_config(config, data_info)
  data_iter = data_lib.make_train_iterator(
      config.data.name, "train", config.batch_size, seed=config.seed, data_dir=data_dir,
      random_flip=config.data.random_flip, worker_count=config.data.worker_count)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints,
                                     save_interval_steps=config.checkpoint_every)
  restored = ckpt.restore(trainer.abstract_state, data_iter)
  if restored is None:
    state, start = trainer.init_state(), 0
    log.info("starting a new run in %s", workdir)
  else:
    state, start = restored
    log.info("resumed from step %d in %s", start, workdir)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  log.info("model %s: %.2f M parameters; %d devices, global batch %d", config.model.name, n_params / 1e6,
               jax.device_count(), config.batch_size)

  writer = metrics_lib.MetricsWriter(workdir)
  pending = None  # (step, device metrics) of the previous step: fetched one step late.
  t_last, steps_since = time.time(), 0
  bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  step = start
  budget = config.get("time_budget_s", 0) or None  # wall-clock seconds of training, compilation excluded
  clock = None
  with preemption.PreemptionGuard() as guard:
    while step < config.total_steps:
      batch = parallel.global_batch(next(data_iter), trainer.mesh)
      batch.pop("index", None)
      state, metrics = trainer.update(state, batch)
      step += 1
      steps_since += 1
      if pending is not None:
        _log(writer, bar, *pending)
        pending = None
      if step % config.log_every == 0 or step == config.total_steps:
        now = time.time()
        metrics = dict(metrics, steps_per_sec=steps_since / max(now - t_last, 1e-9))
        t_last, steps_since = now, 0
        pending = (step, metrics)
      bar.update(1)
      ckpt.save(step, state, data_iter)
      if sample_fn is not None and config.sample_every and step % config.sample_every == 0:
        sample_fn(trainer, state, step, workdir / "samples" / f"{step:08d}.png")
      if guard.should_stop_all():
        log.warning("stop requested (signal); saving step %d and exiting", step)
        break
      if budget is not None:
        if clock is None:  # start the clock after the first (compiling) step
          jax.block_until_ready(state.step)
          clock = time.time()
        elif time.time() - clock >= budget:
          log.info("time budget of %.0f s spent at step %d; saving and stopping", budget, step)
          break
    if pending is not None:
      _log(writer, bar, *pending)
    ckpt.save(step, state, data_iter, force=True)
    ckpt.wait()
  bar.close()
  if sample_fn is not None and step == config.total_steps and step % max(config.sample_every, 1):
    sample_fn(trainer, state, step, workdir / "samples" / f"{step:08d}.png")
  writer.close()
  ckpt.close()
  return state


def _log(writer, bar, step, metrics):
  values = {k: float(v) for k, v in jax.device_get(metrics).items() if not math.isnan(float(v))}
  writer.write(step, values)
  bar.set_postfix(loss=f"{values['loss']:.4f}", it_s=f"{values.get('steps_per_sec', 0):.2f}")
