"""jdpm.convert.from_diffusers: folders, pipelines, variants, shards, state dicts and its errors.

Model outputs are checked in test_unet.py and test_clip_text.py; here the VAE (stored as an fp16
variant whose weights the reference also used) and everything about reading folders.

Reference folder: tests/data/diffusers_tiny, written by tools/make_diffusers_reference.py.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jdpm
from jdpm.convert import diffusers as diffusers_convert
from jdpm.models import clip_text, unet, vae

RTOL = 1e-5


def max_relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def tiny(data_dir):
  return data_dir / "diffusers_tiny"


@pytest.fixture(scope="module")
def ref(tiny):
  with np.load(tiny / "reference.npz") as archive:
    return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def pipeline(tiny):
  return jdpm.convert.from_diffusers(tiny / "pipeline")


def test_pipeline_folder_gives_every_component(pipeline, tiny, ref):
  assert set(pipeline) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
  assert isinstance(pipeline["unet"][0], unet.UNet2DConditionModel)
  assert isinstance(pipeline["vae"][0], vae.AutoencoderKL)
  assert isinstance(pipeline["text_encoder"][0], clip_text.CLIPTextModel)
  assert pipeline["tokenizer"] == str(tiny / "pipeline" / "tokenizer")
  scheduler = pipeline["scheduler"]
  assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["beta_schedule"] == "scaled_linear"
  np.testing.assert_allclose(diffusers_convert.scheduler_betas(scheduler), ref["scheduler/betas"],
                             rtol=1e-6)


def test_fp16_variant_vae_matches_diffusers(pipeline, ref):
  model, variables = pipeline["vae"]
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
  mean, logvar = jax.jit(lambda x: model.apply(variables, x, method=vae.AutoencoderKL.encode))(ref["vae/x"])
  decoded = jax.jit(lambda z: model.apply(variables, z, method=vae.AutoencoderKL.decode))(ref["vae/mean"])
  assert max_relative_error(mean, ref["vae/mean"]) < RTOL
  assert max_relative_error(logvar, ref["vae/logvar"]) < RTOL
  assert max_relative_error(decoded, ref["vae/decoded"]) < RTOL


def test_components_subset_and_weights_file_path(tiny):
  loaded = jdpm.convert.from_diffusers(tiny / "pipeline", components=["text_encoder"])
  assert set(loaded) == {"text_encoder"}
  model, _ = jdpm.convert.from_diffusers(tiny / "pipeline" / "text_encoder" / "model.safetensors")
  assert model.hidden_size == 16


def test_state_dict_with_config(tiny):
  folder = tiny / "pipeline" / "text_encoder"
  state_dict = load_file(folder / "model.safetensors")
  config = json.loads((folder / "config.json").read_text())
  _, from_dict = jdpm.convert.from_diffusers(state_dict, config=config)
  _, from_path = jdpm.convert.from_diffusers(state_dict, config=folder / "config.json")
  jax.tree.map(np.testing.assert_array_equal, from_dict, from_path)
  # transformers 4.x prefixed "text_model." and kept the position_ids buffer.
  old = {f"text_model.{k}": v for k, v in state_dict.items()}
  old["text_model.embeddings.position_ids"] = np.arange(77)[None]
  _, from_old = jdpm.convert.from_diffusers(old, config=config)
  jax.tree.map(np.testing.assert_array_equal, from_dict, from_old)
  with pytest.raises(ValueError, match="config"):
    jdpm.convert.from_diffusers(state_dict)


def test_sharded_folder_reads_every_shard(tiny):
  files = diffusers_convert.find_weights(tiny / "unet_sd2")
  assert len(files) == 4 and all("-of-00004" in f.name for f in files)


def test_missing_tensor_names_the_key_and_expected_shape(tiny, tmp_path):
  folder = tmp_path / "unet"
  shutil.copytree(tiny / "pipeline" / "unet", folder)
  weights = folder / "diffusion_pytorch_model.safetensors"
  state_dict = load_file(weights)
  del state_dict["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
  state_dict["conv_in.weight"] = np.zeros((8, 4, 5, 5), np.float32)
  save_file(state_dict, weights)
  with pytest.raises(ValueError) as info:
    jdpm.convert.from_diffusers(folder)
  message = str(info.value)
  assert "mid_block/attentions_0/transformer_blocks_0/attn2/to_k/kernel" in message
  assert "conv_in.weight: (8, 4, 5, 5) (expected (3, 3, 4, 8)" in message


def test_config_mismatch_names_the_shapes(tiny):
  with pytest.raises(ValueError, match=r"attn2.to_k.weight: \(8, 16\) \(expected \(24, 8\)"):
    jdpm.convert.from_diffusers(tiny / "pipeline" / "unet", cross_attention_dim=24)


def test_unknown_block_type_is_one_clear_error(tiny, tmp_path):
  folder = tmp_path / "unet"
  shutil.copytree(tiny / "pipeline" / "unet", folder)
  config = json.loads((folder / "config.json").read_text())
  config["down_block_types"][1] = "SkipDownBlock2D"
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="block type.*SkipDownBlock2D"):
    jdpm.convert.from_diffusers(folder)


@pytest.mark.parametrize("case", ["missing", "no_config", "no_weights", "variant"])
def test_folder_errors(tiny, tmp_path, case):
  if case == "missing":
    path, match = tmp_path / "nowhere", "does not exist"
  elif case == "no_config":
    path, match = tmp_path, "no config.json"
  else:
    path = tmp_path / "text_encoder"
    shutil.copytree(tiny / "pipeline" / "text_encoder", path)
    if case == "no_weights":
      (path / "model.safetensors").unlink()
    match = "No weights"
  kwargs = {"variant": "fp16"} if case == "variant" else {}
  with pytest.raises(ValueError, match=match):
    jdpm.convert.from_diffusers(path, **kwargs)


def test_unsupported_class_is_a_clear_error():
  with pytest.raises(ValueError, match="Unsupported model class 'ControlNetModel'"):
    jdpm.convert.from_diffusers({}, config={"_class_name": "ControlNetModel"})


def test_weight_variants_are_recognised():
  assert diffusers_convert._variant_of("diffusion_pytorch_model.fp16.safetensors") == "fp16"
  assert diffusers_convert._variant_of("diffusion_pytorch_model.safetensors") is None
  assert diffusers_convert._variant_of("diffusion_pytorch_model.safetensors.index.fp16.json") == "fp16"
  assert diffusers_convert._variant_of("diffusion_pytorch_model.safetensors.index.json") is None
  assert diffusers_convert._variant_of("model.fp16-00001-of-00002.safetensors") == "fp16"
