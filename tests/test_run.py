"""A run from the outside: frozen parameters through the trainer and its checkpoints, `run.restore` (read
only, no optimizer), `config.init_from`, old checkpoints, and the import rules between jdpm's folders."""

import ast
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from jdpm.training import freeze, run, trainer
from tests.runs import micro_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEGACY_RUN = ROOT / "tests" / "data" / "legacy_run"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _leaves(tree):
  return {p: np.asarray(v) for p, v in zip(freeze.paths(tree), jax.tree.leaves(tree))}


def test_frozen_parameters_through_trainer_checkpoints_and_restore(tmp_path, data_dir):
  config = micro_config(data_dir)
  config.frozen_patterns = ("y_embedder/.*", "x_embedder/.*")
  state = trainer.train(config, tmp_path / "run")
  assert not any(p.startswith(("y_embedder", "x_embedder")) for p in freeze.paths(state.params))
  assert not any(f"/{name}/" in f"/{p}" for p in freeze.paths(state.opt_state)
                 for name in ("y_embedder", "x_embedder"))
  assert any("/t_embedder/" in f"/{p}" for p in freeze.paths(state.opt_state))
  # The frozen parameters are saved beside the state and equal their initial values bit for bit.
  assert (tmp_path / "run" / "checkpoints" / "4" / "frozen").is_dir()
  fresh_state, fresh_frozen = trainer.Trainer.from_config(
      config, trainer.data_lib.dataset_info("shapes/tiny", data_dir=str(data_dir))).init_state()
  _, _, variables, step = run.restore(tmp_path / "run")
  assert step == 4
  restored = _leaves(variables["params"])
  for path, value in _leaves(fresh_frozen).items():
    np.testing.assert_array_equal(restored[path], value)
  for path, value in _leaves(state.ema_params).items():
    np.testing.assert_array_equal(restored[path], value)
  # Resuming restores them too (a longer run continues from step 4).
  config.total_steps = 6
  resumed = trainer.train(config, tmp_path / "run")
  assert int(resumed.step) == 6


def test_restore_reads_without_writing(tmp_path, data_dir):
  trainer.train(micro_config(data_dir), tmp_path / "run")
  newest = tmp_path / "run" / "checkpoints" / "4" / "state" / "_METADATA"
  newest.write_text("{not json")
  before = sorted(str(p) for p in (tmp_path / "run").rglob("*"))
  _, _, _, step = run.restore(tmp_path / "run")
  assert step == 2  # the bad newest step is skipped...
  assert sorted(str(p) for p in (tmp_path / "run").rglob("*")) == before  # ...and nothing moved
  with pytest.raises(run.ConfigError, match="does not exist"):
    run.restore(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(run.ConfigError, match="no config.json"):
    run.restore(tmp_path / "empty")


def test_init_from_a_jdpm_run(tmp_path, data_dir):
  trainer.train(micro_config(data_dir), tmp_path / "pretrained")
  _, _, pretrained, _ = run.restore(tmp_path / "pretrained")
  config = micro_config(data_dir, total_steps=1)
  config.seed = 7  # a different random init, overwritten by the pretrained weights
  config.init_from.path = str(tmp_path / "pretrained")
  info = trainer.data_lib.dataset_info("shapes/tiny", data_dir=str(data_dir))
  state, _ = trainer.Trainer.from_config(config, info).init_state()
  for path, value in _leaves(pretrained["params"]).items():
    np.testing.assert_array_equal(_leaves(state.params)[path], value)
    np.testing.assert_array_equal(_leaves(state.ema_params)[path], value)
  # Only a sub-tree, into a model whose other parts stay random; and a mismatch names the path.
  config.init_from.update(dict(source="final_layer", target="final_layer"))
  state, _ = trainer.Trainer.from_config(config, info).init_state()
  np.testing.assert_array_equal(_leaves(state.params)["final_layer/linear/kernel"],
                                _leaves(pretrained["params"])["final_layer/linear/kernel"])
  config.init_from.update(dict(source="final_layer", target="t_embedder"))
  with pytest.raises(run.ConfigError, match="does not fit"):
    trainer.Trainer.from_config(config, info).init_state()


def test_checkpoints_of_the_previous_trainer_still_restore(tmp_path, data_dir):
  """tests/data/legacy_run: 2 steps of train.py before frozen parameters and objectives by name existed
  (`python train.py --config=configs/dit.py:tiny --config.model.hidden_size=16 --config.model.depth=1
  --config.model.num_heads=2 --config.model.patch_size=8 --config.total_steps=2 --config.batch_size=8
  --config.data.name=shapes/tiny --config.checkpoint_every=2 --config.sample_every=0` at commit 983e89a)."""
  workdir = tmp_path / "legacy"
  shutil.copytree(LEGACY_RUN, workdir)
  legacy, model, variables, step = run.restore(workdir)
  assert step == 2 and legacy.model.hidden_size == 16
  x = np.zeros((1,) + model.sample_shape, np.float32)
  out = model.apply(variables, x, np.array([0]), np.array([1]))
  assert out.shape == (1, 32, 32, 6) and np.all(np.isfinite(out))
  # Training resumes from it with the current trainer, keeping the label dropout the run was made with (the
  # tiny recipe's has changed since, and a different model config is refused on resume).
  config = micro_config(data_dir, total_steps=3)
  config.data.name = "shapes/tiny"
  config.model.class_dropout_prob = legacy.model.class_dropout_prob
  resumed = trainer.train(config, workdir)
  assert int(resumed.step) == 3


def test_failed_first_start_does_not_lock_the_workdir(tmp_path, data_dir):
  bad = micro_config(data_dir)
  bad.model.name = "DiTT"
  with pytest.raises(trainer.ConfigError, match="DiTT"):
    trainer.train(bad, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
  good = micro_config(data_dir, total_steps=1)
  assert int(trainer.train(good, tmp_path / "run").step) == 1


# -- what each folder may import -----------------------------------------------------------------------

def _imports(folder):
  found = {}
  for path in (ROOT / "jdpm" / folder).rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      found.setdefault(str(path.relative_to(ROOT)), set()).update(names)
  return found


@pytest.mark.parametrize("folder, forbidden", [
    ("samplers", ("flax",)),
    ("diffusion", ("flax",)),
    ("models", ("jdpm.training", "jdpm.data", "jdpm.eval", "optax", "orbax")),
])
def test_folder_imports(folder, forbidden):
  bad = [f"{path} imports {name}" for path, names in _imports(folder).items() for name in sorted(names)
         if any(name == f or name.startswith(f + ".") for f in forbidden)]
  assert not bad, bad


def test_stored_config_is_json(tmp_path, data_dir):
  trainer.train(micro_config(data_dir, total_steps=1), tmp_path / "run")
  stored = json.loads((tmp_path / "run" / "config.json").read_text())
  assert stored["objective"] == "denoising" and stored["frozen_patterns"] == []
  assert run.load_config(tmp_path / "run").model.hidden_size == 16
