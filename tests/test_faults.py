"""Faults a person meets, each reproduced: bad commands, Ctrl-C, a corrupt checkpoint, a changed batch size.

Every user error must come back as one short message that names the problem and the fix (no traceback),
and no fault may lose a good checkpoint or make a reader (sample.py) change the run.

The pipeline-folder faults use tests/data/diffusers_tiny (tools/make_diffusers_reference.py).
"""

import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from jdpm import generate
from jdpm.training import trainer
from tests.runs import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
MICRO = ["--config.model.hidden_size=16", "--config.model.depth=1", "--config.model.num_heads=2",
         "--config.model.patch_size=8", "--config.data.name=shapes/tiny", "--config.batch_size=8",
         "--config.sample_every=0", "--config.log_every=2", "--config.checkpoint_every=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _run(script, *args):
  proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  out = proc.stdout + proc.stderr
  # Progress bars redraw in place; what a person reads are the other lines.
  lines = [line for line in out.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("train:")]
  return proc.returncode, out, lines


def _train(workdir, data_dir, *args):
  return _run("train.py", "--config=configs/dit.py:tiny", f"--workdir={workdir}", *MICRO,
              f"--config.data.data_dir={data_dir}", *args)


@pytest.mark.parametrize("args, expected", [
    (["--config.model.name=DiTT"], "DiTT"),
    (["--config.batchsize=3"], 'Did you mean "batch_size"'),
    (["--config.batch_size=0"], "batch_size must be a positive integer"),
    (["--config=configs/nope.py:tiny"], "configs/nope.py"),
])
def test_bad_training_commands_print_one_line(tmp_path, data_dir, args, expected):
  rc, out, lines = _train(tmp_path / "run", data_dir, *args)
  assert rc != 0
  assert "Traceback" not in out and len(lines) == 1, out[-2000:]
  assert expected in lines[0] and lines[0].startswith("train.py: ")
  assert not (tmp_path / "run" / "config.json").exists()


def test_sample_on_a_missing_workdir_says_so(tmp_path):
  rc, out, lines = _run("sample.py", f"--workdir={tmp_path / 'nowhere'}")
  assert rc != 0 and "Traceback" not in out and len(lines) == 1, out[-2000:]
  assert "does not exist" in lines[0]


def test_corrupt_newest_checkpoint_one_warning_and_readers_never_write(tmp_path, data_dir):
  workdir = tmp_path / "run"
  trainer.train(micro_config(data_dir, 4), workdir)
  step_dir = workdir / "checkpoints" / "4"
  # The reproducer truncates the largest data file of the newest step; which arrays a file holds
  # varies, so every data file is cut here (the step is then surely unreadable).
  for data_file in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
  # A reader reports the bad step, samples from the previous one and moves nothing.
  before = sorted(str(p) for p in workdir.rglob("*"))
  rc, out, lines = _run("sample.py", f"--workdir={workdir}", "--num-samples=8", f"--out={tmp_path / 's.png'}")
  assert rc == 0, out[-3000:]
  assert sorted(str(p) for p in workdir.rglob("*")) == before
  assert "Event loop is closed" not in out and "Traceback" not in out
  assert len(lines) <= 3, lines
  assert any("step 4" in line and "OUT_OF_RANGE" in line for line in lines), lines
  # Training moves it aside with one warning naming the real cause, resumes from step 2 and goes on.
  rc, out, lines = _train(workdir, data_dir, "--config.total_steps=6")
  assert rc == 0, out[-3000:]
  assert "Event loop is closed" not in out and "Traceback" not in out
  warnings = [line for line in lines if "unusable" in line]
  assert len(warnings) == 1 and "OUT_OF_RANGE" in warnings[0], lines
  assert len(lines) <= 5, lines
  assert (workdir / "checkpoints" / "corrupt" / "4").is_dir() and (workdir / "checkpoints" / "6").is_dir()
  assert not any("already exists" in line for line in lines)


def test_resuming_with_another_batch_size_needs_consent(tmp_path, data_dir):
  workdir = tmp_path / "run"
  trainer.train(micro_config(data_dir, 2), workdir)
  bigger = micro_config(data_dir, 4)
  bigger.batch_size = 16
  with pytest.raises(trainer.ConfigError, match="trained with batch_size=8.*--allow_batch_size_change"):
    trainer.train(bigger, workdir)
  assert int(trainer.train(bigger, workdir, allow_batch_size_change=True).step) == 4


def test_a_model_option_added_at_its_default_keeps_a_run_resumable():
  """config.json of an older run lacks fields a config gained since; built, the two are the same module."""
  before = dict(name="ClassUNet", input_size=32, block_out_channels=[32, 64, 64])  # lists, as JSON has them
  now = dict(before, resnet_time_scale_shift="default", space_to_depth=1)
  assert trainer._same_model(before, now)
  assert not trainer._same_model(before, dict(now, space_to_depth=2))
  assert not trainer._same_model(dict(before, no_such_field=1), now)  # a run this version cannot build
  assert not trainer._same_model(None, now)


def test_sample_grid_has_class_names_and_readable_tiles(tmp_path):
  images = np.linspace(-1, 1, 4 * 32 * 32 * 3).reshape(4, 32, 32, 3)
  path = generate.save_grid(images, tmp_path / "g.png", ncol=2, column_labels=["red circle", "blue circle"])
  grid = np.asarray(PIL.Image.open(path))
  assert grid.shape == (14 + 2 * 66 + 2, 2 * 66 + 2, 3)  # tiles enlarged 2x to 64 px, a 14-px header
  header = grid[:14]
  assert (header < 128).any()  # the names are drawn


def test_sample_pipeline_bad_folder_and_prompt_errors(tmp_path):
  rc, out, lines = _run("sample.py", f"--pipeline={tmp_path}", "--prompt=a red ring")
  assert rc != 0 and "Traceback" not in out and len(lines) == 1, out[-2000:]
  assert "not a diffusers pipeline folder" in lines[0]
  rc, out, _ = _run("sample.py", f"--pipeline={tmp_path}")
  assert rc != 0 and "needs at least one --prompt" in out


def test_sample_pipeline_writes_a_grid(tmp_path):
  """The tiny random pipeline folder end to end (prompts need transformers' tokenizer: else one line)."""
  folder = ROOT / "tests" / "data" / "diffusers_tiny" / "pipeline"
  rc, out, lines = _run("sample.py", f"--pipeline={folder}", "--prompt=a red ring", "--prompt=a blue square",
                        "--steps=3", f"--out={tmp_path / 't2i.png'}")
  assert "Traceback" not in out, out[-3000:]
  try:
    import transformers  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    assert rc != 0 and len(lines) == 1 and "transformers" in lines[0], out[-2000:]
    return
  assert rc == 0 and (tmp_path / "t2i.png").is_file(), out[-3000:]
