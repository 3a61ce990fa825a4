"""Checkpoints of the train state and the data iterator, with Orbax, that survive bad steps.

A workdir holds one directory per saved step, written by an Orbax `CheckpointManager`::

  <directory>/<step>/state/   the train state pytree (StandardSave: OCDBT + zarr)
  <directory>/<step>/frozen/  the frozen parameters, when the run has any (see `jdpm.training.freeze`)
  <directory>/<step>/data/    the Grain iterator state, one JSON file per process (when given)
  <directory>/corrupt/<step>  steps found unreadable by `restore`, moved aside (never deleted)

Saves are asynchronous by default: `save` returns once the arrays are copied to host memory and
the files are written in a background thread; the iterator state is read at the call, so it
matches the saved step even if the iterator moves on at once.

`restore` walks the steps from newest to oldest and takes the first that reads back whole. A step
is skipped, with one warning naming it and the reason, when its commit marker is missing, its
metadata does not parse, a file is missing or truncated, or an item does not restore; a save that
never finished (an ``<step>.orbax-checkpoint-tmp`` directory, or on object stores a step directory
without its commit marker) is reported the same way. When an older step restores, the bad newer
steps are moved to ``<directory>/corrupt/`` so that the next save at the same step number does not
collide with them and Orbax's keep-last-N clean-up does not count them in place of good ones.

If steps exist but none of them is usable, `restore` raises `CheckpointError` and moves nothing:
starting from scratch in a workdir that held a run is never done silently. A workdir whose only
content is an unfinished first save restores as empty (None), with a warning.

A checkpoint whose tree structure or array shapes differ from the requested state (a different
model config in the same workdir) raises `CheckpointMismatchError`; older steps are not tried.
So does iterator state saved by a different number of processes.

Limits: only steps newer than the restored one are checked (older bad steps age out through
keep-last-N); a step that fails to restore for a passing reason (a flaky network read) is moved
aside like a bad one, and can be moved back by hand. With several processes, all of them must see
the same files (a shared file system or bucket): they agree on each step's verdict with a small
all-gather, but a read error on one host only can leave the others waiting inside Orbax.
"""

import dataclasses
import json
import logging
import os
import re
import sys
import threading

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_FROZEN = "frozen"
_DATA = "data"
_CORRUPT_DIR = "corrupt"
_COMMIT_MARKER = "commit_success.txt"
_STEP_METADATA = "_CHECKPOINT_METADATA"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_STEP_NAME = re.compile(r"^(0|[1-9]\d*)$")
_TMP_NAME = re.compile(r"^(0|[1-9]\d*)" + re.escape(_TMP_SUFFIX))
_MAX_LISTED_DIFFERENCES = 8
_FROM_METADATA = object()  # restore a tree in its stored structure, without a template

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """Checkpoints exist in the directory but none of them can be restored."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree structure or array shapes differ from the requested train state."""


@dataclasses.dataclass(frozen=True)
class _BadStep:
  step: int
  reason: str


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs in one directory.

  Example::

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=1000)
    abstract = jax.eval_shape(init_fn, rng)   # then attach NamedShardings to every leaf
    restored = ckpt.restore(abstract, data_iterator)
    state, step = restored if restored is not None else (init_state(), 0)
    for step in range(step + 1, num_steps + 1):
      state = train_step(state, next(data_iterator))
      ckpt.save(step, state, data_iterator)   # a no-op unless step % save_interval_steps == 0
    ckpt.save(step, state, data_iterator, force=True)
    ckpt.close()                              # waits for the last asynchronous save

  Every process of a multi-host run must make the same calls in the same order.
  """

  def __init__(self, directory, *, max_to_keep=3, save_interval_steps=1000, async_save=True):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: a local path or a path understood by `etils.epath` (e.g. ``gs://...``).
      max_to_keep: how many of the newest checkpoints to keep; None keeps all.
      save_interval_steps: `save` writes only at steps that are multiples of this, unless forced.
      async_save: write files in a background thread; call `wait` (or `close`) before reading them.
    """
    if max_to_keep is not None and (int(max_to_keep) != max_to_keep or max_to_keep < 1):
      raise ValueError(f"max_to_keep must be a positive integer or None, got {max_to_keep!r}.")
    if int(save_interval_steps) != save_interval_steps or save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be a positive integer, got {save_interval_steps!r}.")
    directory = os.fspath(directory)
    if "://" not in directory:
      directory = os.path.abspath(directory)  # Orbax wants absolute paths
    self._directory = epath.Path(directory)
    save_policies = [ocp.checkpoint_managers.FixedIntervalPolicy(int(save_interval_steps)),
                     # Saves when JAX's preemption service (multi-host) says all hosts reached a
                     # sync point; inactive otherwise.
                     ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
    keep = None if max_to_keep is None else ocp.checkpoint_managers.LatestN(n=int(max_to_keep))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(save_policies),
        preservation_policy=keep,
        enable_async_checkpointing=bool(async_save),
        # Unfinished saves are reported by `restore` and overwritten by Orbax when their step is
        # saved again; deleting them when opening the directory would hide what happened.
        cleanup_tmp_directories=False,
        create=True)
    self._manager = ocp.CheckpointManager(
        self._directory, options=options, item_names=(_STATE, _FROZEN, _DATA),
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _FROZEN: ocp.StandardCheckpointHandler(),
                       _DATA: grain.checkpoint.CheckpointHandler()})

  @property
  def directory(self):
    """The checkpoint directory, an `epath.Path`."""
    return self._directory

  def latest_step(self):
    """The newest committed step (int), or None; unreadable steps count until `restore` sees them."""
    return self._manager.latest_step()

  def all_steps(self):
    """All committed steps, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step, state, data_iterator=None, *, frozen=None, force=False):
    """Starts saving `state` (and the iterator's position) as checkpoint `step`.

    Args:
      step: the training step (int) the state belongs to, normally ``state.step``.
      state: a pytree of jax.Arrays (sharded or not), NumPy arrays and scalars.
      data_iterator: optional Grain iterator (``iter(grain.MapDataset...)`` or ``iter(DataLoader)``)
        whose position is saved with the state; its state is read now, before `save` returns.
      frozen: the run's frozen parameters (a pytree), saved beside the state when not empty.
      force: save even if `step` is not a multiple of `save_interval_steps`.
    Returns:
      True if a save was started; False if the interval policy skipped it or the step already
      exists (e.g. a forced save at the step the periodic save just wrote).
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    if step in self._manager.all_steps():
      if force:  # the usual end of a run whose last step was a periodic save: nothing to say
        log.debug("Checkpoint for step %d already exists in %s; not saving it again.", step,
                  self._directory)
      return False
    items = {_STATE: ocp.args.StandardSave(state)}
    if jax.tree.leaves(frozen):
      items[_FROZEN] = ocp.args.StandardSave(frozen)
    if data_iterator is not None:
      _check_iterator(data_iterator)
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=force))

  def restore(self, abstract_state, data_iterator=None, *, step=None, abstract_frozen=None,
              read_only=False):
    """Restores the newest usable checkpoint into the given shapes and shardings.

    Args:
      abstract_state: the train state's structure as a pytree whose array leaves are
        `jax.ShapeDtypeStruct`s with shardings (e.g. `jax.eval_shape` plus `NamedSharding`s), or
        concrete jax.Arrays whose shapes, dtypes and shardings are used. Arrays come back with
        these shardings; dtypes are cast when they differ from the stored ones. None: the stored
        structure, every array on one device (for readers that need no optimizer).
      data_iterator: optional Grain iterator to set, in place, to the saved position.
      step: restore exactly this step (no fallback to older steps); None picks the newest good one.
      abstract_frozen: the frozen parameters' structure (like `abstract_state`); when given (even
        empty), the result has a third element, the restored frozen tree ({} when none was saved).
      read_only: never move bad steps aside (readers such as sample.py must not change a run).
    Returns:
      (state, step) — or (state, step, frozen) with `abstract_frozen` — or None if the directory
      holds no checkpoint.
    Raises:
      CheckpointError: checkpoints exist but none is usable (or the requested `step` is not).
      CheckpointMismatchError: a checkpoint does not fit `abstract_state`.
    """
    abstract_state = None if abstract_state is None else _as_abstract(abstract_state)
    if abstract_frozen is not None and abstract_frozen is not _FROM_METADATA:
      abstract_frozen = _as_abstract(abstract_frozen)
    if data_iterator is not None:
      _check_iterator(data_iterator)
    self._manager.wait_until_finished()
    self._manager.reload()
    committed = sorted(self._manager.all_steps(), reverse=True)
    unfinished = self._unfinished_steps(set(committed))
    if step is not None:
      step = int(step)
      if step not in committed:
        raise CheckpointError(f"No committed checkpoint for step {step} in {self._directory}; "
                              f"committed steps: {sorted(committed) or 'none'}.")
      candidates = [step]
    else:
      candidates = committed
      newest = committed[0] if committed else -1
      for bad in unfinished:
        if bad.step > newest:
          log.warning("Ignoring checkpoint step %d in %s: %s.", bad.step, self._directory, bad.reason)
    if not candidates:
      if unfinished:
        log.warning("No finished checkpoint in %s (only interrupted saves); starting from scratch.",
                    self._directory)
      return None

    _quiet_aborted_reads()  # before any read: a failing one prints from other threads at once
    bad_steps = []
    for candidate in candidates:
      restored, reason = self._try_restore(candidate, abstract_state, data_iterator, abstract_frozen)
      if reason is None:
        if read_only:
          for bad in bad_steps:
            log.warning("Checkpoint step %d in %s is unusable (%s); read step %d instead.", bad.step,
                        self._directory, bad.reason, candidate)
        else:
          moved_to = self._move_aside([bad.step for bad in bad_steps])
          for bad, target in zip(bad_steps, moved_to):
            log.warning("Checkpoint step %d in %s is unusable (%s); restored step %d instead and moved "
                        "step %d to %s.", bad.step, self._directory, bad.reason, candidate, bad.step,
                        target)
        state, frozen = restored
        return (state, candidate) if abstract_frozen is None else (state, candidate, frozen)
      if step is not None:
        raise CheckpointError(f"Checkpoint step {candidate} in {self._directory} is unusable: {reason}.")
      bad_steps.append(_BadStep(candidate, reason))
    found = "; ".join(f"step {bad.step}: {bad.reason}" for bad in bad_steps)
    raise CheckpointError(
        f"No usable checkpoint in {self._directory}. Found {found}. Nothing was moved or deleted. "
        "To start training from scratch, use a new workdir (or move these step directories away); "
        "to recover, repair or replace the files named above.")

  def read(self, step=None):
    """Reads a checkpoint for inference, without a template and without changing the directory.

    Every array comes back on the first local device in its stored structure (the optimizer state
    included). Bad newer steps are reported and skipped, never moved.

    Returns:
      (state, frozen, step): the train state as nested dicts ({"params", "ema_params", "opt_state",
      "step", "rng", "extra"}), the frozen parameters ({} when the run has none), and the step; or
      None when the directory holds no checkpoint.
    """
    restored = self.restore(None, step=step, abstract_frozen=_FROM_METADATA, read_only=True)
    if restored is None:
      return None
    state, step, frozen = restored
    return state, frozen, step

  def wait(self):
    """Blocks until all started saves are on disk (and re-raises their errors)."""
    self._manager.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases Orbax's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  # ---------------------------------------------------------------------------------------------
  def _unfinished_steps(self, committed):
    """Interrupted saves: tmp directories, and step-named directories Orbax does not list."""
    unfinished = []
    if not self._directory.exists():
      return unfinished
    for path in self._directory.iterdir():
      if match := _TMP_NAME.match(path.name):
        unfinished.append(_BadStep(int(match.group(1)), f"interrupted save (found {path.name!r})"))
      elif _STEP_NAME.match(path.name) and int(path.name) not in committed and path.is_dir():
        unfinished.append(_BadStep(int(path.name),
                                   f"save was never committed (no {_COMMIT_MARKER})"))
    return sorted(unfinished, key=lambda bad: -bad.step)

  def _try_restore(self, step, abstract_state, data_iterator, abstract_frozen=None):
    """Returns ((state, frozen), None) or (None, reason); raises CheckpointMismatchError. Same on all
    hosts."""
    state, frozen, reason = None, {}, None
    try:
      reason = self._check_files(step, data_iterator is not None)
      if reason is None:
        stored = self._stored_tree(step)
        if abstract_state is None:
          abstract_state = _abstract_from_metadata(stored)
        _check_compatible(stored, abstract_state, self._directory, step)
        items = {_STATE: ocp.args.StandardRestore(abstract_state)}
        if abstract_frozen is not None:
          stored_frozen = self._stored_tree(step, _FROZEN) if self._has_item(step, _FROZEN) else {}
          if abstract_frozen is _FROM_METADATA:
            abstract_frozen = _abstract_from_metadata(stored_frozen)
          _check_compatible(stored_frozen, abstract_frozen, self._directory, step, what="frozen parameters")
          if jax.tree.leaves(abstract_frozen):
            items[_FROZEN] = ocp.args.StandardRestore(abstract_frozen)
        if data_iterator is not None:
          if self._has_data(step):
            items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
          else:
            log.warning("Checkpoint step %d in %s holds no data-iterator state; the iterator keeps "
                        "its current position.", step, self._directory)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = restored[_STATE]
        if _FROZEN in items:
          frozen = restored[_FROZEN]
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any read failure means a bad step
      reason = _failure_reason(e)
    if not _all_processes_agree(reason is None):
      reason = reason or "it could not be restored on another process"
    return ((state, frozen), None) if reason is None else (None, reason)

  def _step_dir(self, step):
    return self._directory / str(step)

  def _check_files(self, step, want_data):
    """Cheap checks before reading arrays; returns a reason string or None."""
    step_dir = self._step_dir(step)
    if not (step_dir / _COMMIT_MARKER).exists():
      return f"commit marker {_COMMIT_MARKER} is missing"
    for name in (_STEP_METADATA, f"{_STATE}/_METADATA"):
      try:
        json.loads((step_dir / name).read_text())
      except FileNotFoundError:
        return f"{name} is missing"
      except (ValueError, OSError) as e:
        return f"{name} is unreadable ({type(e).__name__}: {_first_line(str(e))})"
    if want_data and self._has_data(step):
      index, count = jax.process_index(), jax.process_count()
      data_file = step_dir / _DATA / f"process_{index}-of-{count}.json"
      try:
        json.loads(data_file.read_text())
      except FileNotFoundError:
        saved_by = sorted({p.name.split("-of-")[-1].removesuffix(".json")
                           for p in (step_dir / _DATA).glob("process_*-of-*.json")})
        if saved_by and str(count) not in saved_by:
          raise CheckpointMismatchError(
              f"Checkpoint step {step} in {self._directory} holds data-iterator states of "
              f"{'/'.join(saved_by)} processes, but this run has {count}. Resume with the same "
              "number of processes, or restore without data_iterator (the data order then restarts).")
        return f"{_DATA}/{data_file.name} is missing"
      except (ValueError, OSError) as e:
        return f"{_DATA}/{data_file.name} is unreadable ({type(e).__name__})"
    return None

  def _has_data(self, step):
    return self._has_item(step, _DATA)

  def _has_item(self, step, item):
    return (self._step_dir(step) / item).exists()

  def _stored_tree(self, step, item=_STATE):
    metadata = self._manager.item_metadata(step)[item]
    if metadata is None:
      raise ValueError(f"{item} metadata could not be read")
    return getattr(metadata, "tree", metadata)

  def _move_aside(self, steps):
    """Moves bad step directories to <directory>/corrupt/<step>; returns the new paths."""
    if not steps:
      return []
    corrupt_dir = self._directory / _CORRUPT_DIR
    targets = []
    for step in steps:
      target, copy = corrupt_dir / str(step), 1
      while target.exists():  # the same step number went bad before
        copy += 1
        target = corrupt_dir / f"{step}-{copy}"
      targets.append(target)
    if jax.process_count() > 1:  # every process has named the targets before any is taken
      multihost_utils.sync_global_devices("jdpm_checkpoint_move_aside_start")
    if jax.process_index() == 0:
      corrupt_dir.mkdir(parents=True, exist_ok=True)
      for step, target in zip(steps, targets):
        self._step_dir(step).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jdpm_checkpoint_move_aside_end")
    self._manager.reload()
    return targets


def _check_iterator(data_iterator):
  if not (hasattr(data_iterator, "get_state") and hasattr(data_iterator, "set_state")):
    raise TypeError(
        f"data_iterator must be a Grain iterator with get_state()/set_state() (e.g. "
        f"iter(grain.MapDataset...) or iter(grain.DataLoader(...))), got {type(data_iterator).__name__}.")


def _as_abstract(tree):
  """Array leaves -> ShapeDtypeStruct with their sharding; checks every struct has a sharding."""
  def convert(leaf):
    if isinstance(leaf, jax.Array):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      raise ValueError(
          f"abstract_state leaf {leaf} has no sharding. Give every ShapeDtypeStruct a sharding (e.g. "
          "jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))) so arrays are "
          "restored where they belong.")
    return leaf
  return jax.tree.map(convert, tree)


def _abstract_from_metadata(stored_tree):
  """The stored tree as ShapeDtypeStructs on the first local device (for restores without a template)."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def convert(leaf):
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)

  return jax.tree.map(convert, stored_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_shapes(tree):
  """{'a/b/0': shape} for every leaf; namedtuples, dataclasses and dicts give the same paths."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(_key_name(key) for key in path)
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      # Orbax stores typed PRNG keys as their raw uint32 key data.
      flat[name] = tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    else:
      shape = getattr(leaf, "shape", None)
      flat[name] = tuple(shape) if shape is not None else np.shape(leaf)
  return flat


def _check_compatible(stored_tree, abstract_state, directory, step, what="train state"):
  stored, wanted = _flat_shapes(stored_tree), _flat_shapes(abstract_state)
  differences = [f"{name}: checkpoint {stored[name]} vs expected {wanted[name]}"
                 for name in sorted(stored.keys() & wanted.keys()) if stored[name] != wanted[name]]
  differences += [f"{name}: in the {what}, missing from the checkpoint"
                  for name in sorted(wanted.keys() - stored.keys())]
  differences += [f"{name}: in the checkpoint, not in the {what}"
                  for name in sorted(stored.keys() - wanted.keys())]
  if differences:
    listed = "; ".join(differences[:_MAX_LISTED_DIFFERENCES])
    more = len(differences) - _MAX_LISTED_DIFFERENCES
    listed += f"; and {more} more" if more > 0 else ""
    raise CheckpointMismatchError(
        f"Checkpoint step {step} in {directory} does not match the {what} ({listed}). The "
        "workdir probably holds a run with a different model or optimizer config: use a new workdir "
        "for this config (or delete the old checkpoints).")


def _all_processes_agree(ok):
  """True only if `ok` is True on every process, so all hosts take the same branch."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray(ok, np.int32))
  return bool(np.all(flags))


def _is_closed_loop_error(error):
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def _is_read_leftover(error):
  """An error of an aborted checkpoint read that nobody awaits any more."""
  text = str(error)
  return _is_closed_loop_error(error) or "error while reading array index" in text or (
      "OUT_OF_RANGE" in text and "OCDBT" in text)


class _DropReadLeftovers(logging.Filter):
  """asyncio's "Future exception was never retrieved" records of an aborted read (already reported)."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    if error is None and isinstance(record.msg, str):
      context = getattr(record, "args", None)
      error = context.get("exception") if isinstance(context, dict) else None
    return not (_is_read_leftover(error) or "Event loop is closed" in message
                or ("never retrieved" in message and ("OCDBT" in message or "array index" in message)))


_QUIETED = []


def _quiet_aborted_reads():
  """Silences the leftovers of an aborted TensorStore read (once per process).

  When a step fails to read, Orbax's other pending array reads are finalised later and print thousands of
  lines ("Exception ignored in: <coroutine ...>", "Event loop is closed" and TensorStore specs). They are
  harmless (the failure itself was reported in one line), so those — and only those — are dropped.
  """
  if _QUIETED:
    return
  _QUIETED.append(True)
  previous_unraisable, previous_thread, previous_except = sys.unraisablehook, threading.excepthook, sys.excepthook

  def unraisable(info):
    code = getattr(info.object, "cr_code", None)  # a coroutine of the aborted read, finalised later
    from_read = code is not None and ("orbax" in code.co_filename or "tensorstore" in code.co_filename)
    if not (from_read or _is_read_leftover(info.exc_value)):
      previous_unraisable(info)

  def thread_hook(args):
    if not _is_read_leftover(args.exc_value):
      previous_thread(args)

  def except_hook(kind, value, tb):  # callbacks from TensorStore's threads are printed through here
    if not _is_read_leftover(value):
      previous_except(kind, value, tb)

  sys.unraisablehook, threading.excepthook, sys.excepthook = unraisable, thread_hook, except_hook
  logging.getLogger("asyncio").addFilter(_DropReadLeftovers())


def _failure_reason(error):
  """One line naming why a step could not be read: the innermost cause of the exception chain (TensorStore
  wraps the real reason, e.g. "OUT_OF_RANGE: ... byte range ... not valid", in a generic outer error)."""
  chain = []
  while error is not None and all(error is not seen for seen in chain):
    chain.append(error)
    error = error.__cause__ or error.__context__
  root = chain[-1]
  return f"{type(root).__name__}: {_first_line(str(root))}"


def _first_line(text, limit=300):
  text = text.split(" [tensorstore_spec=")[0]  # TensorStore appends its whole JSON spec
  line = text.strip().splitlines()[0] if text.strip() else ""
  return line if len(line) <= limit else line[:limit] + "..."
