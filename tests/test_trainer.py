"""The training loop end to end on a micro DiT: exact resume, SIGTERM, corrupt checkpoints, config errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

from tests import runs  # noqa: E402
from jdpm.training import trainer  # noqa: E402


def micro_config(data_dir, total_steps=20):
  return runs.micro_config(data_dir, total_steps, hidden_size=32, checkpoint_every=10, log_every=5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _params(state):
  return [np.asarray(a) for a in jax.tree.leaves(jax.device_get(state.params))]


def _logged_steps(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_resume_is_exact(tmp_path, data_dir):
  straight = trainer.train(micro_config(data_dir, 20), tmp_path / "straight")
  trainer.train(micro_config(data_dir, 10), tmp_path / "split")
  resumed = trainer.train(micro_config(data_dir, 20), tmp_path / "split")
  assert int(resumed.step) == int(straight.step) == 20
  for a, b in zip(_params(resumed), _params(straight)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(resumed.ema_params), jax.tree.leaves(straight.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Same data order: the losses logged after the resume equal those of the straight run.
  straight_log = {r["step"]: r["loss"] for r in _logged_steps(tmp_path / "straight")}
  split_log = {r["step"]: r["loss"] for r in _logged_steps(tmp_path / "split")}
  assert split_log[15] == straight_log[15] and split_log[20] == straight_log[20]
  assert (tmp_path / "straight" / "tensorboard").is_dir()


def test_corrupt_latest_checkpoint_falls_back(tmp_path, data_dir, caplog):
  workdir = tmp_path / "run"
  trainer.train(micro_config(data_dir, 20), workdir)
  ckpt = workdir / "checkpoints"
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [10, 20]
  # Damage every stored array file of step 20.
  for f in (ckpt / "20" / "state" / "d").iterdir():
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  state = trainer.train(micro_config(data_dir, 20), workdir)  # restores 10, trains 10 more
  assert int(state.step) == 20
  assert "20" in caplog.text and (ckpt / "corrupt").is_dir()
  assert (ckpt / "10").is_dir() and (ckpt / "20" / "commit_success.txt").exists()


def test_bad_configs_fail_with_one_line(tmp_path, data_dir):
  c = micro_config(data_dir)
  c.batch_size = 12  # 8 test devices
  with pytest.raises(trainer.ConfigError, match="divisible by the 8 devices"):
    trainer.train(c, tmp_path / "a")
  c = micro_config(data_dir)
  c.data.name = "no_such_data"
  with pytest.raises(trainer.ConfigError, match="Unknown dataset 'no_such_data'"):
    trainer.train(c, tmp_path / "b")
  c = micro_config(data_dir)
  c.model.in_channels = 4
  with pytest.raises(trainer.ConfigError, match="32x32x3"):
    trainer.train(c, tmp_path / "c")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_saves_and_exits_zero(tmp_path, data_dir, signum):
  workdir = tmp_path / "run"
  cmd = [sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'dit.py'}:tiny",
         f"--workdir={workdir}", "--config.model.hidden_size=32", "--config.model.depth=1",
         "--config.model.num_heads=2", "--config.model.patch_size=8", "--config.data.name=shapes/tiny",
         f"--config.data.data_dir={data_dir}", "--config.batch_size=8", "--config.total_steps=100000",
         "--config.checkpoint_every=100000", "--config.log_every=1", "--config.sample_every=0"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 180
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(0.5)
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  if signum == signal.SIGINT:
    assert "Ctrl-C: saving step" in out
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 3
  assert steps[0] >= max(r["step"] for r in _logged_steps(workdir))
