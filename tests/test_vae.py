"""The SD VAE (jdpm.models.vae) against diffusers' AutoencoderKL; its converter; latent datasets.

tests/data/vae_tiny.npz comes from tools/make_vae_reference.py: a tiny AutoencoderKL with random
weights (std 0.1, GroupNorm scales around 1), its inputs and diffusers' outputs, all NCHW.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdpm import convert, data
from jdpm.models import vae

TINY = dict(block_out_channels=(16, 24, 32), layers_per_block=1, norm_num_groups=8)
RTOL = 1e-4
KEY = jax.random.key(3)


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def max_relative_error(actual, expected):
  """max |actual − expected| / max |expected|."""
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def reference(data_dir):
  with np.load(data_dir / "vae_tiny.npz") as archive:
    return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def state_dict(reference):
  return convert.load_state_dict(reference)  # the "param/<diffusers key>" entries


@pytest.fixture(scope="module")
def tiny(state_dict):
  return convert.vae_from_diffusers(state_dict, **TINY)


@pytest.fixture(scope="module")
def outputs(tiny, reference):
  """Everything the tiny model computes from the reference inputs, in one compiled call."""
  model, variables = tiny

  def run(variables, x, z, key):
    mean, logvar = model.apply(variables, x, method="encode")
    return {"mean": mean, "logvar": logvar,
            # decode(z) through decode_latents: z · scaling_factor in, divided by it again.
            "decoded": model.decode_latents(variables, model.scaling_factor * z),
            "reconstruction": model.apply(variables, x),  # encode → decode of the posterior mean
            "latents": model.encode_latents(variables, x),
            "sampled": model.encode_latents(variables, x, key),
            "noise": jax.random.normal(key, mean.shape)}

  return jax.jit(run)(variables, nhwc(reference["input/x"]), nhwc(reference["input/z"]), KEY)


def test_matches_diffusers(outputs, reference):
  errors = {name: max_relative_error(outputs[name], nhwc(reference[f"output/{name}"]))
            for name in ("mean", "logvar", "decoded", "reconstruction")}
  print("max relative errors vs diffusers:", errors)
  assert max(errors.values()) < RTOL, errors


def test_old_attention_keys_and_file_formats(tiny, state_dict, tmp_path):
  from safetensors.numpy import save_file

  old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  old = {}
  for key, value in state_dict.items():
    for new_name, old_name in old_names.items():
      key = key.replace(f".attentions.0.{new_name}.", f".attentions.0.{old_name}.")
    old[key] = value
  assert sum(".proj_attn." in k for k in old) == 4 and not any(".to_q." in k for k in old)
  path = tmp_path / "diffusion_pytorch_model.safetensors"
  save_file(old, str(path))
  _, variables = convert.vae_from_diffusers(path, **TINY)
  jax.tree.map(np.testing.assert_array_equal, variables, tiny[1])


def test_wrong_state_dict_is_one_clear_error(state_dict):
  broken = dict(state_dict)
  del broken["decoder.conv_out.bias"]
  broken["encoder.conv_in.weight"] = broken["encoder.conv_in.weight"][:8]
  broken["encoder.mid_block.attentions.0.proj.weight"] = np.zeros((32, 32), np.float32)
  with pytest.raises(ValueError) as info:
    convert.vae_from_diffusers(broken, **TINY)
  message = str(info.value)
  for part in ("1 unexpected key(s) [encoder.mid_block.attentions.0.proj.weight]",
               "1 missing parameter(s) [decoder/conv_out/bias]",
               "1 shape mismatch(es) [encoder.conv_in.weight: (8, 3, 3, 3)"):
    assert part in message, message
  # The SD default config does not fit the tiny weights: the error names the sizes to check.
  with pytest.raises(ValueError, match="block_out_channels=\\(128, 256, 512, 512\\)"):
    convert.vae_from_diffusers(state_dict)


def test_scaled_latents(outputs, tiny):
  scale = tiny[0].scaling_factor
  mean, logvar = (np.asarray(outputs[name], np.float64) for name in ("mean", "logvar"))
  np.testing.assert_allclose(outputs["latents"], scale * mean, rtol=1e-6)
  sample = mean + np.exp(0.5 * logvar) * outputs["noise"]
  np.testing.assert_allclose(outputs["sampled"], scale * sample, rtol=1e-5, atol=1e-6)


def test_sd_vae_shapes_and_parameter_count():
  model = vae.AutoencoderKL(**vae.SD_VAE_CONFIG)
  variables = vae.abstract_variables(model)
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == 83_653_863
  images = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  latents = jax.eval_shape(model.encode_latents, variables, images, jax.random.key(0))
  assert latents.shape == (2, 32, 32, 4) and model.downsampling_factor == 8
  assert jax.eval_shape(model.decode_latents, variables, latents).shape == (2, 256, 256, 3)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(model.encode_latents, variables, jax.ShapeDtypeStruct((2, 3, 256, 256), jnp.float32))


def test_latent_dataset_of_image_and_flip(tiny, tmp_path):
  model, variables = tiny
  encode_fn, params = data.vae_encode_fn(model, variables)
  assert set(params["params"]) == {"encoder", "quant_conv"}  # the decoder stays home
  rng = jax.random.key(7)
  info = data.build_latent_dataset(encode_fn, "shapes/tiny", out_name="shapes_tiny_vae", data_dir=tmp_path,
                                   batch_size=16, splits=["test"], with_flips=True, rng=rng, params=params)
  assert (info.image_shape, info.is_latent, info.splits) == ((8, 8, 4), True, {"test": 100})
  images = data.data_source("shapes/tiny", "test", data_dir=tmp_path)
  latents = data.data_source("shapes_tiny_vae", "test", data_dir=tmp_path)
  # Records 16..31 are batch 1: keys fold_in(rng, 2) for the images, fold_in(rng, 3) for their mirrors.
  batch = np.stack([images[i]["image"] for i in range(16, 32)]).astype(np.float32) / 127.5 - 1
  encode = jax.jit(model.encode_latents)
  expected = encode(variables, batch, jax.random.fold_in(rng, 2))
  expected_flip = encode(variables, np.ascontiguousarray(batch[:, :, ::-1]), jax.random.fold_in(rng, 3))
  for row in (0, 5, 15):
    record = latents[16 + row]
    assert record["label"] == images[16 + row]["label"]
    np.testing.assert_allclose(record["latent"], expected[row], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(record["latent_flip"], expected_flip[row], rtol=1e-5, atol=1e-5)
  # Sampled latents of an image and its mirror are not mirrors of each other (independent noise).
  assert not np.allclose(record["latent_flip"], record["latent"][:, ::-1], atol=1e-3)


def test_extract_latents_command_reads_the_diffusers_folder(reference, tmp_path):
  import json
  import safetensors.numpy
  from jdpm.data import extract_latents
  folder = tmp_path / "tiny-vae"
  folder.mkdir()
  weights = {k[len("param/"):]: np.ascontiguousarray(v) for k, v in reference.items() if k.startswith("param/")}
  safetensors.numpy.save_file(weights, folder / "diffusion_pytorch_model.safetensors")
  (folder / "config.json").write_text(json.dumps(dict(
      _class_name="AutoencoderKL", block_out_channels=list(TINY["block_out_channels"]), layers_per_block=1,
      norm_num_groups=8, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 3,
      up_block_types=["UpDecoderBlock2D"] * 3, scaling_factor=0.18215)))
  extract_latents.main([f"--vae={folder / 'diffusion_pytorch_model.safetensors'}", "--source=shapes/tiny",
                        "--out=tiny_latents", f"--data-dir={tmp_path / 'data'}", "--batch-size=16",
                        "--splits=test", "--mean"])
  latents = data.data_source("tiny_latents", "test", data_dir=tmp_path / "data")
  assert len(latents) == 100 and latents[0]["latent"].shape == (8, 8, 4)
  # --mean: the stored latent is the scaled posterior mean of the centred image.
  model, variables = convert.vae_from_diffusers(folder / "diffusion_pytorch_model.safetensors")
  image = data.data_source("shapes/tiny", "test", data_dir=tmp_path / "data")[3]["image"]
  expected = model.encode_latents(variables, image[None].astype(np.float32) / 127.5 - 1)[0]
  np.testing.assert_allclose(latents[3]["latent"], expected, rtol=1e-5, atol=1e-5)
