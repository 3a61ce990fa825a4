"""Official checkpoints → jdpm variables: formats, layouts, the torch-free .pt reader, errors.

Reference data: dit_tiny.npz (tools/make_dit_reference.py, the official DiT code) and
dit_foreign_state_dict_shapes.npz (tools/make_foreign_shapes.py, the official MDT and EDT code).
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

import jdpm
from jdpm.convert import load_state_dict, load_torch_checkpoint, to_flax_layout, torch_key_to_path
from jdpm.convert.torch_pickle import Opaque

DATA = pathlib.Path(__file__).parent / "data"
TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
# Matches tools/make_pt_fixture.py.
MICRO = dict(input_size=4, patch_size=2, in_channels=2, hidden_size=8, depth=1, num_heads=2,
             num_classes=3, learn_sigma=True)


@functools.cache
def tiny_npz():
  with np.load(DATA / "dit_tiny.npz") as f:
    return dict(f)


def official_params(data):
  return {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}


def assert_trees_equal(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_key_to_path_and_layouts():
  assert torch_key_to_path("blocks.11.adaLN_modulation.1.weight") == (
      "blocks_11", "adaLN_modulation_1", "weight")
  assert torch_key_to_path("pos_embed") == ("pos_embed",)
  linear = np.arange(6).reshape(3, 2)  # (out, in)
  np.testing.assert_array_equal(to_flax_layout(linear, "kernel"), linear.T)
  conv = np.arange(5 * 4 * 3 * 2).reshape(5, 4, 3, 2)  # (out, in, kh, kw)
  flax_conv = to_flax_layout(conv, "kernel")
  assert flax_conv.shape == (3, 2, 4, 5)
  assert flax_conv[2, 1, 3, 4] == conv[4, 3, 2, 1]
  np.testing.assert_array_equal(to_flax_layout(linear, "embedding"), linear)


def test_converted_tree_places_every_official_tensor():
  data = tiny_npz()
  params = jdpm.convert.from_official(data, "DiT", **TINY)["params"]
  sd = official_params(data)
  np.testing.assert_array_equal(params["blocks_1"]["attn"]["qkv"]["kernel"],
                                sd["blocks.1.attn.qkv.weight"].T)
  np.testing.assert_array_equal(params["blocks_0"]["adaLN_modulation_1"]["bias"],
                                sd["blocks.0.adaLN_modulation.1.bias"])
  np.testing.assert_array_equal(params["x_embedder"]["proj"]["kernel"],
                                sd["x_embedder.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["y_embedder"]["embedding_table"]["embedding"],
                                sd["y_embedder.embedding_table.weight"])
  np.testing.assert_array_equal(params["t_embedder"]["mlp_2"]["kernel"],
                                sd["t_embedder.mlp.2.weight"].T)
  num = sum(v.size for k, v in sd.items() if k != "pos_embed")
  assert jdpm.models.count_params(params) == num


def test_npz_safetensors_and_dict_sources_agree(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  data = tiny_npz()
  sd = official_params(data)
  from_dict = jdpm.convert.from_official(sd, "DiT", **TINY)
  from_npz = jdpm.convert.from_official(DATA / "dit_tiny.npz", "DiT", **TINY)
  save_file(sd, str(tmp_path / "dit.safetensors"))
  from_safetensors = jdpm.convert.from_official(tmp_path / "dit.safetensors", "DiT", **TINY)
  ddp = jdpm.convert.from_official({f"module.{k}": v for k, v in sd.items()}, "DiT", **TINY)
  for other in (from_npz, from_safetensors, ddp):
    assert_trees_equal(from_dict, other)


def test_torch_reader_rebuilds_every_tensor_exactly():
  checkpoint = load_torch_checkpoint(DATA / "dit_micro_checkpoint.pt")
  with np.load(DATA / "dit_micro_checkpoint_expected.npz") as f:
    expected = dict(f)
  assert set(checkpoint) == {"model", "ema", "opt", "args", "extras"}
  for key, value in checkpoint["ema"].items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, expected[f"param/{key}"])
  for key, value in checkpoint["model"].items():
    np.testing.assert_array_equal(value, expected[f"model/{key}"])
  dtypes = {"bfloat16": "bfloat16", "float16": "float16", "float64": "float64",
            "int64": "int64", "int32": "int32", "uint8": "uint8", "bool": "bool"}
  for key, value in checkpoint["extras"].items():
    if key in dtypes:
      assert value.dtype.name == dtypes[key], key
    reference = expected[f"extras/{key}"]
    assert value.shape == reference.shape, key
    np.testing.assert_array_equal(np.asarray(value).astype(reference.dtype), reference, key)
  assert checkpoint["extras"]["scalar"] == 2.5
  np.testing.assert_array_equal(checkpoint["extras"]["offset"], [[3, 4], [5, 6]])
  # Non-tensor objects stay inert placeholders; plain containers come back as saved.
  assert isinstance(checkpoint["args"], Opaque)
  assert checkpoint["args"].qualname == "argparse.Namespace"
  assert checkpoint["args"].state == {"model": "DiT-micro", "global_batch_size": 4}
  assert checkpoint["opt"]["param_groups"][0]["lr"] == 1e-4


def test_pt_checkpoint_prefers_ema_weights():
  from_pt = jdpm.convert.from_official(DATA / "dit_micro_checkpoint.pt", "DiT", **MICRO)
  from_npz = jdpm.convert.from_official(DATA / "dit_micro_checkpoint_expected.npz", "DiT",
                                        **MICRO)
  assert_trees_equal(from_pt, from_npz)
  checkpoint = load_torch_checkpoint(DATA / "dit_micro_checkpoint.pt")
  only_model = load_state_dict({"model": checkpoint["model"], "args": checkpoint["args"]})
  np.testing.assert_array_equal(only_model["final_layer.linear.bias"],
                                checkpoint["model"]["final_layer.linear.bias"])
  assert not np.array_equal(checkpoint["model"]["final_layer.linear.bias"],
                            checkpoint["ema"]["final_layer.linear.bias"])


# ----------------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------------


@functools.cache
def foreign_state_dict(family):
  """Zeros with the key names and shapes of the official tiny EDT / MDTv2 models."""
  with np.load(DATA / "dit_foreign_state_dict_shapes.npz") as f:
    return {k.split("/", 1)[1]: np.zeros(tuple(f[k]), np.float32) for k in f.files
            if k.startswith(f"{family}/")}


@pytest.mark.parametrize("family, offending", [
    ("mdt", ["decoder_pos_embed", "mask_token", "rel_pos_bias.relative_position_bias_table"]),
    ("edt", ["relative_position_bias_table"]),
])
def test_other_architecture_state_dict_is_rejected(family, offending):
  with pytest.raises(ValueError, match="unexpected key") as info:
    jdpm.convert.from_official(foreign_state_dict(family), "DiT", **TINY)
  for name in offending:
    assert name in str(info.value)


def test_shape_mismatch_and_missing_keys_are_named():
  sd = official_params(tiny_npz())
  with pytest.raises(ValueError, match=r"y_embedder.embedding_table.weight: \(11, 64\)"):
    jdpm.convert.from_official(sd, "DiT", **{**TINY, "num_classes": 20})
  without_block = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
  with pytest.raises(ValueError, match=r"10 missing parameter\(s\) \[blocks_1/"):
    jdpm.convert.from_official(without_block, "DiT", **TINY)
  with pytest.raises(ValueError, match="sin-cos"):
    jdpm.convert.from_official({**sd, "pos_embed": sd["pos_embed"] + 0.1}, "DiT", **TINY)


def test_bad_names_and_files():
  with pytest.raises(ValueError, match="Unknown model name 'DiT-XXL/2'.*DiT-S/2"):
    jdpm.convert.from_official(tiny_npz(), "DiT-XXL/2")
  with pytest.raises(ValueError, match="does not exist"):
    jdpm.convert.from_official(DATA / "missing.pt", "DiT", **TINY)
  with pytest.raises(ValueError, match="not a torch.save checkpoint"):
    load_torch_checkpoint(pathlib.Path(__file__))  # A text file, not a zip archive.
