"""`sample.py --pipeline=WORKDIR` on a built-in text-to-image workdir: prompts drawn with the condition-dropping
acceleration (exact network-call count) and without. The workdir is written as `jdpm.t2i.train.train` writes
one (config.json, a checkpoint with the denoiser, the proxy and the frozen text encoder), with random weights:
training it, even at the `test` config's 3 steps a stage, costs a minute of compilation."""

import jax.numpy as jnp
import numpy as np
import pytest

import sample
from configs import t2i
from jdpm.t2i import bundle, models
from jdpm.training import checkpoint
from tests.random_weights import random_variables


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("t2i") / "run"
  config = t2i.get_config("test")
  ids = models.tokenizer(config).encode(["a red ring"])
  text_vars = random_variables(models.text_encoder(config), ids)
  context = jnp.zeros((1, config.context_length, config.text.hidden_size))
  unet_vars = random_variables(models.denoiser(config), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), context)
  with checkpoint.Checkpointer(path / "checkpoints", async_save=False) as ckpt:
    ckpt.save(config.denoiser.steps, {"unet": unet_vars, "proxy": {"w": jnp.zeros(2)}},
              frozen={"text": text_vars}, force=True)
  (path / "config.json").write_text(config.to_json(indent=1))
  return path


def test_trained_workdir_loads_as_a_pipeline(workdir):
  pipe, proxy_vars, config = bundle.load(workdir)
  assert config.denoiser.prediction == "v" and pipe.model_type == "v"
  assert proxy_vars is not None


def test_sample_py_draws_prompts_from_a_builtin_model(workdir, tmp_path, capsys):
  prompts = ["a red ring left of a blue square", "a big green circle"]
  args = [f"--pipeline={workdir}", *(f"--prompt={p}" for p in prompts), "--steps=4", "--sampler=ddim"]
  full = sample.main([*args, f"--out={tmp_path / 'full.png'}"])
  dropped = sample.main([*args, "--drop-text-last=2", f"--out={tmp_path / 'dropped.png'}"])
  assert (tmp_path / "full.png").is_file() and (tmp_path / "dropped.png").is_file()
  assert full["network_calls"] == 8 and dropped["network_calls"] == 6
  assert "6 network calls" in capsys.readouterr().out
  a, b = np.asarray(full["images"]), np.asarray(dropped["images"])
  assert a.shape == b.shape == (2, 16, 16, 3) and not np.array_equal(a, b)


def test_sample_py_names_what_a_pipeline_folder_lacks(tmp_path):
  with pytest.raises(SystemExit, match="not a diffusers pipeline folder .* or a built-in"):
    sample.main([f"--pipeline={tmp_path}", "--prompt=a red ring"])
