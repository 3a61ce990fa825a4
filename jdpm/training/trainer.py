"""The training loop: config -> data pipeline -> sharded state -> jitted update -> checkpoints and logs.

Run it through ``train.py``. Every run lives in one work directory::

  workdir/config.json          the resolved config (a resumed run must use the same model)
  workdir/checkpoints/<step>/  Orbax checkpoints: train state (+ frozen parameters) + data-iterator position
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
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jdpm import data as data_lib
from jdpm import parallel
from jdpm.models import layers
from jdpm.training import checkpoint as checkpoint_lib
from jdpm.training import dispatch
from jdpm.training import freeze, objectives, optimizers, preemption, schedules
from jdpm.training import metrics as metrics_lib
from jdpm.training import run as run_lib
from jdpm.training.state import create_train_state
from jdpm.training.step import jit_update_fn, make_update_fn

log = logging.getLogger("jdpm.train")


ConfigError = run_lib.ConfigError
model_kwargs = run_lib.model_kwargs
create_model = run_lib.create_model


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a spec "path/to/config.py:arg" (as train.py's --config), e.g. "configs/edt.py:S"."""
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise ConfigError(f"config file {path!r} not found (expected e.g. configs/dit.py:tiny).")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def make_objective(config, model):
  """The training objective named by ``config.objective`` (see `jdpm.training.objectives`)."""
  try:
    return objectives.create(config, model)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate(config, data_info, model=None, objective=None) -> None:
  """Fails fast, with one line, on configs that cannot run on this machine or this data."""
  n_dev = jax.device_count()
  if config.batch_size < 1:
    raise ConfigError(f"batch_size must be a positive integer; got {config.batch_size}.")
  if config.batch_size % n_dev:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {n_dev} devices; "
                      f"set --config.batch_size to a multiple of {n_dev}.")
  if config.grad_accum_steps < 0 or config.grad_accum_steps and (config.batch_size % config.grad_accum_steps or (
      config.batch_size // config.grad_accum_steps) % n_dev):
    raise ConfigError(f"batch_size={config.batch_size} must split into grad_accum_steps="
                      f"{config.grad_accum_steps} micro-batches that are each divisible by {n_dev} devices.")
  h, w, c = data_info.image_shape
  if model is not None and hasattr(model, "sample_shape"):
    expected = tuple(model.sample_shape)
  else:
    size = config.model.get("input_size")
    expected = (size, size, config.model.get("in_channels"))
  if expected != (h, w, c):
    raise ConfigError(f"dataset {data_info.name!r} yields {h}x{w}x{c} inputs but the model expects "
                      f"{'x'.join(map(str, expected))}; set --config.model.input_size/"
                      "--config.model.in_channels.")
  reads_labels = objective is None or "label" in getattr(objective, "batch_keys", ("label",))
  if reads_labels and "num_classes" in config.model and config.model.num_classes != data_info.num_classes:
    raise ConfigError(f"dataset {data_info.name!r} has {data_info.num_classes} classes but "
                      f"config.model.num_classes={config.model.get('num_classes')}.")
  if objective is not None:
    missing = [k for k in objective.batch_keys if k not in data_info.element_spec]
    if missing:
      raise ConfigError(f"objective {config.get('objective', 'denoising')!r} reads batch keys {missing} "
                        f"that dataset {data_info.name!r} does not yield "
                        f"(it yields {sorted(data_info.element_spec)}).")
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}.")


def _same_model(stored: dict | None, current: dict) -> bool:
  """Whether two ``config.model`` dicts (as config.json holds them) build the same module.

  Compared as built modules, not as dicts, so that a field added to a config at the module's default (a new
  model option) does not turn an existing run into "a different model".
  """
  if stored == current:
    return True
  try:
    return run_lib.create_model(ml_collections.ConfigDict({"model": stored})) == run_lib.create_model(
        ml_collections.ConfigDict({"model": current}))
  except (run_lib.ConfigError, KeyError, TypeError, AttributeError):  # a stored model this version cannot build
    return False


def _check_workdir_config(workdir: pathlib.Path, config, allow_batch_size_change=False) -> None:
  """Refuses to resume a run of a different model (or, unless allowed, batch size), then stores the config.

  Called only once the model and objective were built from the config, so a config that fails to build
  never marks a workdir as holding a run.
  """
  path = workdir / run_lib.CONFIG_FILE
  current = json.loads(config.to_json_best_effort())
  ckpt_dir = workdir / run_lib.CHECKPOINT_DIR
  has_run = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
  if path.exists() and has_run:
    stored = json.loads(path.read_text())
    if not _same_model(stored.get("model"), current["model"]):
      raise ConfigError(f"{workdir} holds a run of a different model ({stored.get('model')}); "
                        f"use a new --workdir or the same model config.")
    old_batch = stored.get("batch_size")
    if old_batch is not None and old_batch != current["batch_size"] and not allow_batch_size_change:
      raise ConfigError(
          f"{workdir} was trained with batch_size={old_batch}; resuming with batch_size="
          f"{current['batch_size']} changes the data order and what the learning rate means per example. "
          f"Resume with --config.batch_size={old_batch}, start a new --workdir, or pass "
          f"--allow_batch_size_change to accept the change.")
  if jax.process_index() == 0:
    path.write_text(json.dumps(current, indent=2))


def example_batch(data_info, keys):
  """A batch of one zero example per data key, shaped as the data pipeline yields it (for model init)."""
  batch = {}
  for key in keys:
    shape, dtype = data_info.element_spec[key]
    batch[key] = jnp.zeros((1,) + tuple(shape), dtype)
  return batch


@dataclasses.dataclass
class Trainer:
  """Everything built from a config; `run` trains. Also used by tests and benchmarks piece by piece.

  The train state holds the trainable parameters (with optimizer state and EMA); the frozen parameters
  (``config.frozen_patterns``) are a separate tree, passed to `update` as an argument.
  """
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: object
  objective: object
  optimizer: object
  lr_schedule: object
  state_shardings: object
  abstract_state: object
  frozen_shardings: object
  abstract_frozen: object
  update: object
  init: object

  @classmethod
  def from_config(cls, config, data_info):
    mesh = parallel.make_mesh(config.fsdp)
    model = create_model(config)
    objective = make_objective(config, model)
    validate(config, data_info, model, objective)
    lr_schedule = schedules.make_schedule(config.optimizer)
    optimizer = optimizers.make_optimizer(config.optimizer)
    init = make_init_fn(objective, optimizer, data_info, config.get("frozen_patterns", ()))
    try:
      abstract_state, abstract_frozen = jax.eval_shape(init, jax.random.key(config.seed))
    except ValueError as e:
      if "frozen_patterns" in str(e):
        raise ConfigError(str(e)) from None
      raise
    state_shardings = parallel.tree_shardings(abstract_state, mesh)
    frozen_shardings = parallel.tree_shardings(abstract_frozen, mesh)
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    abstract_state = jax.tree.map(with_sharding, abstract_state, state_shardings)
    abstract_frozen = jax.tree.map(with_sharding, abstract_frozen, frozen_shardings)
    compute_dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    update = make_update_fn(objective, optimizer, ema_decay=config.ema_decay,
                            ema_warmup=config.get("ema_warmup", False),
                            grad_accum_steps=grad_accum_steps(config, model), compute_dtype=compute_dtype,
                            lr_schedule=lr_schedule, norms_every=config.log_every, last_step=config.total_steps)
    update = jit_update_fn(update, state_shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh),
                           frozen_shardings=frozen_shardings)
    return cls(config, mesh, model, objective, optimizer, lr_schedule, state_shardings, abstract_state,
               frozen_shardings, abstract_frozen, update, init)

  def init_state(self):
    """A fresh (train state, frozen parameters) pair, created directly with its shardings (never
    materialised on one device), with ``config.init_from``'s pretrained weights when set."""
    state, frozen = jax.jit(self.init, out_shardings=(self.state_shardings, self.frozen_shardings))(
        jax.random.key(self.config.seed))
    if self.config.get("init_from") and self.config.init_from.get("path"):
      params, frozen = run_lib.load_pretrained(self.config, state.params, frozen)
      state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
      log.info("initialised from %s", self.config.init_from.path)
    return state, frozen


def grad_accum_steps(config, model) -> int:
  """``config.grad_accum_steps``, or for 0 ("auto") the CPU micro-batching of `jdpm.parallel.microbatch`.

  Auto gives 1 on GPU and TPU, and for models other than the class-conditional transformers (DiT, EDT,
  MDTv2) it was measured on.
  """
  if config.grad_accum_steps:
    return config.grad_accum_steps
  if not isinstance(model, layers.PatchDenoiserGeometry):
    return 1
  steps = parallel.cpu_grad_accum_steps(model, config.batch_size // jax.device_count())
  if steps > 1:
    log.info("grad_accum_steps auto: %d micro-batches per step (cache-sized on CPU)", steps)
  return steps


def make_init_fn(objective, optimizer, data_info, frozen_patterns=()):
  """``init(rng) -> (TrainState, frozen)`` for `jax.eval_shape` and the sharded `jax.jit` init.

  The model's example inputs come from the objective and the data (`example_batch`); parameters matching
  `frozen_patterns` are split off (see `jdpm.training.freeze`).
  """
  example = example_batch(data_info, objective.batch_keys)

  def init(rng):
    rng_params, rng_train = jax.random.split(rng)
    params = objective.init_params(rng_params, example)
    params, frozen = freeze.split(params, frozen_patterns)
    return create_train_state(params, optimizer, rng_train, extra=objective.init_extra()), frozen

  return init


def train(config: ml_collections.ConfigDict, workdir: str, *, sample_fn=None, allow_batch_size_change=False):
  """Trains `config` in `workdir`, resuming from its newest good checkpoint.

  Args:
    config: a config from ``configs/*.py``.
    workdir: the run's directory (created if missing).
    sample_fn: optional ``sample_fn(model, ema_params, config, path, mesh=...)`` writing a sample grid PNG
      (ema_params merged with the frozen parameters); called every ``config.sample_every`` steps and at the
      end of training (process 0 writes).
    allow_batch_size_change: resume a run whose stored batch_size differs (refused otherwise).
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
  trainer = Trainer.from_config(config, data_info)
  _check_workdir_config(workdir, config, allow_batch_size_change)
  data_iter = data_lib.make_train_iterator(
      config.data.name, "train", config.batch_size, seed=config.seed, data_dir=data_dir,
      random_flip=config.data.random_flip, worker_count=config.data.worker_count)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints,
                                     save_interval_steps=config.checkpoint_every)
  restored = ckpt.restore(trainer.abstract_state, data_iter, abstract_frozen=trainer.abstract_frozen)
  if restored is None:
    (state, frozen), start = trainer.init_state(), 0
    log.info("starting a new run in %s", workdir)
  else:
    state, start, frozen = restored
    log.info("resumed from step %d in %s", start, workdir)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  n_frozen = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(frozen))
  log.info("model %s: %.2f M trained parameters%s; %d devices, global batch %d", config.model.name,
           n_params / 1e6, f" (+ {n_frozen / 1e6:.2f} M frozen)" if n_frozen else "", jax.device_count(),
           config.batch_size)

  writer = metrics_lib.MetricsWriter(workdir)
  pending = None  # (step, device metrics) of the previous step: fetched one step late.
  t_last, steps_since = time.time(), 0
  bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  step = start
  in_flight = dispatch.InFlightLimit()  # a bounded queue of dispatched steps (see `jdpm.training.dispatch`)
  budget = config.get("time_budget_s", 0) or None  # wall-clock seconds of training, compilation excluded
  clock = None
  # SIGTERM (preemption) and the first Ctrl-C finish the current step, save it and stop; a second Ctrl-C
  # aborts at once (the newest periodic checkpoint is then the one to resume from).
  with preemption.PreemptionGuard(handle_sigint=True) as guard:
    while step < config.total_steps:
      batch = parallel.global_batch(next(data_iter), trainer.mesh)
      batch.pop("index", None)
      state, metrics = trainer.update(state, batch, frozen)
      in_flight.add(metrics)  # not the state: the next step donates its buffers
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
      ckpt.save(step, state, data_iter, frozen=frozen)
      if sample_fn is not None and config.sample_every and step % config.sample_every == 0:
        _sample(sample_fn, trainer, state, frozen, workdir / "samples" / f"{step:08d}.png")
      if guard.should_stop_all():
        how = "Ctrl-C" if guard.received_signal == signal.SIGINT else "stop requested (signal)"
        log.warning("%s: saving step %d and exiting (re-run the same command to resume)", how, step)
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
    ckpt.save(step, state, data_iter, frozen=frozen, force=True)
    ckpt.wait()
  bar.close()
  if sample_fn is not None and step == config.total_steps and step % max(config.sample_every, 1):
    _sample(sample_fn, trainer, state, frozen, workdir / "samples" / f"{step:08d}.png")
  writer.close()
  ckpt.close()
  return state


def _sample(sample_fn, trainer, state, frozen, path):
  sample_fn(trainer.model, freeze.merge(state.ema_params, frozen), trainer.config, path, mesh=trainer.mesh)


def _log(writer, bar, step, metrics):
  values = {k: float(v) for k, v in jax.device_get(metrics).items() if not math.isnan(float(v))}
  writer.write(step, values)
  bar.set_postfix(loss=f"{values['loss']:.4f}", it_s=f"{values.get('steps_per_sec', 0):.2f}")
