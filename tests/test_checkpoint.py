"""Checkpointer (Orbax + Grain) and PreemptionGuard.

Every checkpoint here holds a step-dependent state, so a restore that picks the wrong step, the
wrong sharding or the wrong iterator position changes the numbers compared.
"""

import gc
import logging
import os
import pathlib
import shutil
import signal
import time

import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from jdpm.training.checkpoint import CheckpointError, Checkpointer, CheckpointMismatchError
from jdpm.training.preemption import PreemptionGuard

# A failed read leaves a callback of Orbax's event loop behind; it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

_W_SHAPE = (64, 32)  # 8 KiB of float32, sharded over the 8 devices


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((8,), ("data",))


def _state(mesh, value):
  """A nested train-state-like pytree whose every leaf encodes `value`."""
  w = jnp.arange(np.prod(_W_SHAPE), dtype=jnp.float32).reshape(_W_SHAPE) + 1000 * value
  return {
      "params": {"w": jax.device_put(w, NamedSharding(mesh, P("data", None))),
                 "b": jax.device_put(jnp.full((8,), value, jnp.float32), NamedSharding(mesh, P()))},
      "opt_state": (jnp.asarray(value, jnp.int32), {"mu": jnp.full((3,), -value, jnp.float32)}),
      "rng": jax.random.key(value),
  }


def _abstract(mesh, w_spec=P(None, "data"), w_shape=_W_SHAPE):
  replicated = NamedSharding(mesh, P())
  return {
      "params": {"w": jax.ShapeDtypeStruct(w_shape, jnp.float32, sharding=NamedSharding(mesh, w_spec)),
                 "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=replicated)},
      "opt_state": (jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                    {"mu": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=replicated)}),
      "rng": jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
  }


def _assert_is_state(restored, mesh, value):
  expected = jax.device_get(_state(mesh, value))
  got = jax.device_get(restored)
  np.testing.assert_array_equal(got["params"]["w"], expected["params"]["w"])
  np.testing.assert_array_equal(got["params"]["b"], expected["params"]["b"])
  assert int(got["opt_state"][0]) == value
  np.testing.assert_array_equal(got["opt_state"][1]["mu"], expected["opt_state"][1]["mu"])
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]),
                                jax.random.key_data(jax.random.key(value)))


def _save_steps(ckpt, mesh, steps):
  for step in steps:
    assert ckpt.save(step, _state(mesh, step), force=True)
  ckpt.wait()


def _step_dirs(directory):
  return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())


def test_roundtrip_comes_back_with_requested_sharding(tmp_path, mesh):
  with Checkpointer(tmp_path, save_interval_steps=5) as ckpt:
    assert ckpt.restore(_abstract(mesh)) is None  # empty directory: a fresh run
    assert not ckpt.save(7, _state(mesh, 7))     # not a multiple of the interval
    assert ckpt.save(10, _state(mesh, 10))
    ckpt.wait()
    assert ckpt.latest_step() == 10
  # Saved with rows over "data", restored with columns over "data" by a fresh Checkpointer.
  with Checkpointer(tmp_path) as ckpt:
    state, step = ckpt.restore(_abstract(mesh))
  assert step == 10
  _assert_is_state(state, mesh, 10)
  assert state["params"]["w"].sharding == NamedSharding(mesh, P(None, "data"))
  assert state["params"]["w"].addressable_shards[0].data.shape == (64, 4)
  assert state["params"]["b"].sharding == NamedSharding(mesh, P())


def test_keeps_last_n_at_interval(tmp_path, mesh):
  with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
    saved = [ckpt.save(step, _state(mesh, step)) for step in range(1, 8)]
    ckpt.wait()
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.all_steps() == [4, 6]
    assert not ckpt.save(6, _state(mesh, 6), force=True)  # already saved: not an error
  assert _step_dirs(tmp_path) == [4, 6]


def test_async_save_snapshots_arrays_and_iterator_at_call(tmp_path, mesh):
  dataset = grain.MapDataset.range(100).shuffle(seed=1).to_iter_dataset()
  iterator = iter(dataset)
  consumed = [next(iterator) for _ in range(5)]
  state = _state(mesh, 3)
  with Checkpointer(tmp_path, async_save=True) as ckpt:
    assert ckpt.save(3, state, iterator, force=True)
    # As a donating train step would: the buffers and the iterator move on before the write ends.
    jax.tree.map(lambda x: x.delete(), state)
    [next(iterator) for _ in range(7)]
    ckpt.wait()
    resumed = iter(dataset)
    restored, step = ckpt.restore(_abstract(mesh), resumed)
  assert step == 3
  _assert_is_state(restored, mesh, 3)
  reference = iter(dataset)
  expected = [next(reference) for _ in range(9)]
  assert consumed == expected[:5]
  assert [next(resumed) for _ in range(4)] == expected[5:]


@pytest.mark.parametrize("kind", ["map_dataset", "data_loader"])
def test_iterator_resumes_where_uninterrupted_one_goes(tmp_path, mesh, kind):
  def make_iterator():
    if kind == "map_dataset":
      return iter(grain.MapDataset.range(100).shuffle(seed=5).batch(4).to_iter_dataset())
    sampler = grain.samplers.IndexSampler(num_records=100, shuffle=True, seed=5, num_epochs=1)
    loader = grain.DataLoader(data_source=list(range(100)), sampler=sampler,
                              operations=[grain.transforms.Batch(4)], worker_count=0)
    return iter(loader)

  reference = make_iterator()
  expected = [np.asarray(next(reference)) for _ in range(12)]
  iterator = make_iterator()
  for _ in range(6):
    next(iterator)
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(6, _state(mesh, 6), iterator, force=True)
    resumed = make_iterator()
    _, step = ckpt.restore(_abstract(mesh), resumed)
  assert step == 6
  got = [np.asarray(next(resumed)) for _ in range(6)]
  np.testing.assert_array_equal(np.stack(got), np.stack(expected[6:]))
  assert sorted(np.concatenate(expected[:6] + got).tolist()) != list(range(48))  # really shuffled


def _data_files(step_dir):
  """The OCDBT data files of the state item (under state/d/ and state/ocdbt.process_*/d/)."""
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _truncate_data_files(step_dir):
  for path in _data_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)


def _delete_data_files(step_dir):
  for path in _data_files(step_dir):
    path.unlink()


_CORRUPTIONS = {
    "truncated_files": (_truncate_data_files, "OUT_OF_RANGE"),
    "deleted_files": (_delete_data_files, "NOT_FOUND"),
    "no_commit_marker": (lambda d: (d / "commit_success.txt").unlink(), "commit marker"),
    "bad_metadata": (lambda d: (d / "state" / "_METADATA").write_text("{\"tree_meta"), "_METADATA"),
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_corrupt_newest_falls_back_and_keeps_good_ones(tmp_path, mesh, caplog, corruption):
  corrupt, reason = _CORRUPTIONS[corruption]
  with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1, 2, 3])
  corrupt(tmp_path / "3")
  with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
    with caplog.at_level(logging.WARNING, logger="jdpm.training.checkpoint"):
      state, step = ckpt.restore(_abstract(mesh))
    assert step == 2
    _assert_is_state(state, mesh, 2)
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1 and "step 3" in warnings[0] and reason in warnings[0], warnings
    assert "restored step 2 instead" in warnings[0]
    assert (tmp_path / "corrupt" / "3").is_dir()  # moved aside, not deleted
    # Training goes on from step 2 and saves step 3 again: no collision; the good ones stay.
    assert ckpt.save(3, _state(mesh, 30), force=True)
    ckpt.wait()
    assert _step_dirs(tmp_path) == [1, 2, 3]
    state, step = ckpt.restore(_abstract(mesh))
  assert step == 3
  np.testing.assert_array_equal(jax.device_get(state["params"]["b"]), np.full((8,), 30.0))


def test_interrupted_save_tmp_dir_is_skipped(tmp_path, mesh, caplog):
  with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1, 2])
  # What a save killed before its final rename leaves behind.
  partial = tmp_path / "3.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "2", partial)
  (partial / "commit_success.txt").unlink()
  with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
    with caplog.at_level(logging.WARNING, logger="jdpm.training.checkpoint"):
      state, step = ckpt.restore(_abstract(mesh))
    assert step == 2
    _assert_is_state(state, mesh, 2)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "step 3" in messages[0] and "interrupted save" in messages[0]
    assert ckpt.save(3, _state(mesh, 3), force=True)
    ckpt.wait()
  assert _step_dirs(tmp_path) == [2, 3]
  assert not partial.exists()  # Orbax replaced the partial save of the same step
  with Checkpointer(tmp_path) as ckpt:
    state, step = ckpt.restore(_abstract(mesh))
  assert step == 3
  _assert_is_state(state, mesh, 3)


def test_only_interrupted_first_save_restores_as_empty(tmp_path, mesh, caplog):
  (tmp_path / "5.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  with Checkpointer(tmp_path) as ckpt:
    with caplog.at_level(logging.WARNING, logger="jdpm.training.checkpoint"):
      assert ckpt.restore(_abstract(mesh)) is None
  assert any("interrupted save" in r.getMessage() for r in caplog.records)


def test_no_usable_checkpoint_raises_and_moves_nothing(tmp_path, mesh):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1, 2])
  for step in (1, 2):
    _truncate_data_files(tmp_path / str(step))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointError, match=r"No usable checkpoint.*step 2: .*step 1: .*new workdir"):
      ckpt.restore(_abstract(mesh))
    with pytest.raises(CheckpointError, match="step 2 .* unusable"):
      ckpt.restore(_abstract(mesh), step=2)
  assert _step_dirs(tmp_path) == [1, 2]
  assert not (tmp_path / "corrupt").exists()


def test_explicit_step_restores_that_step(tmp_path, mesh):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1, 2])
    state, step = ckpt.restore(_abstract(mesh), step=1)
    assert step == 1
    _assert_is_state(state, mesh, 1)
    with pytest.raises(CheckpointError, match=r"step 7.*committed steps: \[1, 2\]"):
      ckpt.restore(_abstract(mesh), step=7)


def test_config_mismatch_names_workdir(tmp_path, mesh):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1, 2])
    with pytest.raises(CheckpointMismatchError) as error:
      ckpt.restore(_abstract(mesh, w_shape=(64, 64)))
    message = str(error.value)
    assert str(tmp_path) in message and "new workdir" in message
    assert "params/w: checkpoint (64, 32) vs expected (64, 64)" in message
    extra = _abstract(mesh)
    extra["params"]["scale"] = extra["params"]["b"]
    with pytest.raises(CheckpointMismatchError, match="params/scale: in the train state, missing"):
      ckpt.restore(extra)
    # Iterator state written by two processes cannot be resumed by one.
    ckpt.save(3, _state(mesh, 3), iter(grain.MapDataset.range(9).to_iter_dataset()), force=True)
    ckpt.wait()
    saved = tmp_path / "3" / "data" / "process_0-of-1.json"
    for process in range(2):
      (tmp_path / "3" / "data" / f"process_{process}-of-2.json").write_text(saved.read_text())
    saved.unlink()
    with pytest.raises(CheckpointMismatchError, match="of 2 processes, but this run has 1"):
      ckpt.restore(_abstract(mesh), iter(grain.MapDataset.range(9).to_iter_dataset()))
    # A mismatch is not corruption: nothing is moved.
    assert _step_dirs(tmp_path) == [1, 2, 3]


def test_abstract_state_needs_shardings(tmp_path, mesh):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    _save_steps(ckpt, mesh, [1])
    with pytest.raises(ValueError, match="has no sharding"):
      ckpt.restore(jax.eval_shape(lambda: _state(mesh, 1)))
    # Concrete arrays work as templates: their shardings are used.
    state, step = ckpt.restore(_state(mesh, 0))
  assert step == 1
  _assert_is_state(state, mesh, 1)
  assert state["params"]["w"].sharding == NamedSharding(mesh, P("data", None))


def _wait_for(predicate, timeout=2.0):
  deadline = time.monotonic() + timeout
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.001)
  return predicate()


def test_preemption_guard_turns_sigterm_into_flag():
  previous = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    assert not guard.should_stop and not guard.should_stop_all()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: guard.should_stop)  # and the process is still alive
    assert guard.should_stop_all()
    assert guard.received_signal == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is previous


def test_preemption_guard_second_sigint_interrupts():
  # Python runs a signal handler in whatever main-thread code comes next, garbage-collector
  # finalizers included, and an exception raised inside a finalizer is printed and dropped. With
  # the objects earlier tests leave behind, a collection during the wait could swallow the
  # KeyboardInterrupt, so the collector stays off while the signals are in flight.
  # The handler to restore is whatever SIGINT had before: Python's default_int_handler, or SIG_IGN when the
  # tests run from a shell that ignores SIGINT for background jobs.
  previous = signal.getsignal(signal.SIGINT)
  gc.collect()
  gc.disable()
  try:
    with PreemptionGuard(handle_sigint=True) as guard:
      os.kill(os.getpid(), signal.SIGINT)
      assert _wait_for(lambda: guard.should_stop)
      assert guard.received_signal == signal.SIGINT
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: False, timeout=2.0)
  finally:
    gc.enable()
  assert signal.getsignal(signal.SIGINT) is previous


_TWO_PROCESS_WORKER = r'''
import json, os, pathlib, signal, sys, time
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
import grain
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from jdpm.training.checkpoint import Checkpointer
from jdpm.training.preemption import PreemptionGuard

sharding = NamedSharding(jax.make_mesh((4,), ("data",)), P("data"))
full = lambda v: np.arange(32, dtype=np.float32).reshape(8, 4) + v
state = lambda v: {"w": jax.make_array_from_callback((8, 4), sharding, lambda idx: full(v)[idx])}
dataset = grain.MapDataset.range(40).shuffle(seed=process_id).to_iter_dataset()  # one stream per host
iterator = iter(dataset)
[next(iterator) for _ in range(3)]
with Checkpointer(workdir) as ckpt:
  ckpt.save(1, state(1), iterator, force=True)
  expected = [next(iterator) for _ in range(3)]
  ckpt.save(2, state(2), iterator, force=True)
  ckpt.wait()
  if process_id == 0:  # the shared step 2 loses its data files
    for path in (pathlib.Path(workdir) / "2" / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        path.unlink()
  multihost_utils.sync_global_devices("corrupted")
  resumed = iter(dataset)
  restored, step = ckpt.restore({"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharding)},
                                resumed)
local = np.concatenate([np.asarray(s.data) for s in sorted(restored["w"].addressable_shards,
                                                            key=lambda s: s.index[0].start)])
with PreemptionGuard() as guard:
  if process_id == 1:
    os.kill(os.getpid(), signal.SIGTERM)
    while not guard.should_stop:
      time.sleep(0.001)
  local_flag = guard.should_stop
  stop_all = guard.should_stop_all()
print("RESULT " + json.dumps({
    "step": step, "w": bool(np.array_equal(local, full(1)[process_id * 4:(process_id + 1) * 4])),
    "iterator": [next(resumed) for _ in range(3)] == expected,
    "entries": sorted(os.listdir(workdir)), "corrupt": sorted(os.listdir(pathlib.Path(workdir) / "corrupt")),
    "local_flag": local_flag, "stop_all": stop_all}), flush=True)
'''


def test_two_processes_agree_on_fallback_and_stop(tmp_path):
  """Two hosts (processes) on 127.0.0.1 sharing a directory; one is sent SIGTERM."""
  import json
  import socket
  import subprocess
  import sys

  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  worker = tmp_path / "worker.py"
  worker.write_text(_TWO_PROCESS_WORKER)
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
  processes = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(tmp_path / "ckpt")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  results = []
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
    results.append(json.loads(output.split("RESULT ", 1)[1]))
  for process_id, result in enumerate(results):
    assert result["step"] == 1 and result["w"] and result["iterator"], result
    assert result["entries"] == ["1", "corrupt"] and result["corrupt"] == ["2"], result
    assert result["local_flag"] == (process_id == 1) and result["stop_all"], result
