"""DP-IR end to end at a tiny scale: the fusion trains with the denoiser and restorer frozen (bit-identical
afterwards, absent from the optimizer state), and one command restores an image file into a PNG panel."""

import jax
import numpy as np
import pytest
from PIL import Image

from configs import dpir as dpir_configs
from jdpm.data import clean_images
from jdpm.restoration import experiment, restore, training
from jdpm.training import checkpoint, freeze


def _random_like(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dpir")
  config = dpir_configs.get_config("sr_fusion_tiny")
  model, task = experiment.build_model(config), experiment.build_task(config)
  # Pretrained modules: random weights saved as module checkpoints (shapes only: no initialisation run).
  p = config.data.patch
  shapes = jax.eval_shape(lambda: experiment.initial_params(config, model, task))
  pretrained = _random_like(shapes, seed=1)
  training.save_module(training.module_dir(workdir, "denoiser"), {"denoiser": pretrained["denoiser"]})
  training.save_module(training.module_dir(workdir, "restorer", "sr"), {"restorer": pretrained["restorer"]})
  data = np.stack([clean_images.patches(clean_images.texture(s, 32), p)[0] for s in range(8)])
  state, frozen, _ = experiment.train_stage(config, workdir, data=data, log=None)
  return workdir, config, pretrained, state, frozen


def test_only_the_fusion_trains_and_the_frozen_modules_stay_bit_identical(trained):
  workdir, config, pretrained, state, frozen = trained
  assert int(state.step) == config.fusion.train.total_steps
  assert set(state.params) == {"fusion"} and set(frozen) == {"denoiser", "restorer"}
  assert all(path.startswith("fusion/") for path in freeze.paths(state.params))
  # Every parameter-shaped leaf of the optimizer state belongs to the fusion module.
  fusion_shapes = sorted(a.shape for a in jax.tree.leaves(state.params))
  opt_shapes = [a.shape for a in jax.tree.leaves(state.opt_state) if a.ndim > 0]
  assert opt_shapes and all(s in fusion_shapes for s in opt_shapes)
  n_fusion = sum(a.size for a in jax.tree.leaves(state.params))
  assert sum(a.size for a in jax.tree.leaves(state.opt_state) if a.ndim > 0) == 2 * n_fusion  # Adam's m and v
  for name in ("denoiser", "restorer"):
    for before, after in zip(jax.tree.leaves(pretrained[name]), jax.tree.leaves(frozen[name])):
      np.testing.assert_array_equal(np.asarray(after), before)
  ckpt = checkpoint.Checkpointer(training.module_dir(workdir, "fusion", "sr"))
  _, stored_frozen, _ = ckpt.read()
  ckpt.close()
  for before, after in zip(jax.tree.leaves(pretrained["denoiser"]), jax.tree.leaves(stored_frozen["denoiser"])):
    np.testing.assert_array_equal(np.asarray(after), before)


def test_restore_one_file_writes_the_image_and_the_panel(trained, tmp_path):
  workdir, config, *_ = trained
  source = tmp_path / "photo.png"
  Image.fromarray((clean_images.texture(103, 40) * 255).astype(np.uint8)).save(source)
  out, panel = tmp_path / "out.png", tmp_path / "panel.png"
  result = restore.restore_file(config, workdir, source, out, synthesize=True, panel_path=panel)
  assert np.asarray(Image.open(out)).shape == (32, 32, 3)
  assert Image.open(panel).width > 3 * 32
  assert result["nfe"] == config.sampler.tau + 1
  assert np.isfinite(result["psnr_dpir"]) and -1 <= result["ssim_dpir"] <= 1


def test_a_missing_frozen_module_names_the_command_that_trains_it(tmp_path):
  config = dpir_configs.get_config("deblur_fusion_tiny")
  with pytest.raises(FileNotFoundError, match="configs/dpir.py:denoiser"):
    experiment.train_stage(config, tmp_path, data=np.zeros((4, 16, 16, 3), np.float32))
