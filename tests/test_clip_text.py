"""CLIP's text transformer (jdpm.models.clip_text) against transformers' CLIPTextModel.

Two references, both random weights in float32: tests/data/diffusers_tiny/pipeline/text_encoder
(GELU, legacy eos_token_id 2: the pooled position is argmax(input_ids)) from
tools/make_diffusers_reference.py, and tests/data/diffusers_sd1_tiny/text_encoder (quick-GELU,
eos_token_id 999 = pad: the pooled position is the first EOS), copied from the project's golden data by
tools/copy_golden_reference.py.
"""

import sys

import jax
import numpy as np
import pytest

import jdpm
from jdpm.models import clip_text
from jdpm.models.counting import count_params

RTOL = 1e-5
OUTPUTS = ("last_hidden_state", "penultimate_hidden_state", "pooled")


def max_relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name,expected", [("CLIP-L/14-text", 123_060_480),
                                           ("OpenCLIP-H/14-text", 340_387_840)])
def test_text_tower_parameter_counts_equal_transformers(name, expected):
  assert count_params(clip_text.abstract_variables(clip_text.create(name))) == expected


def test_tiny_text_encoder_matches_transformers(data_dir):
  folder = data_dir / "diffusers_tiny"
  with np.load(folder / "reference.npz") as ref:
    ids, expected = ref["input_ids"], {k: ref[f"text/{k}"] for k in OUTPUTS}
  model, variables = jdpm.convert.from_diffusers(folder / "pipeline" / "text_encoder")
  assert model.hidden_act == "gelu" and model.eos_token_id == clip_text.LEGACY_EOS_TOKEN_ID
  out = jax.jit(model.apply)(variables, ids)
  for key in OUTPUTS:
    assert out[key].shape == expected[key].shape
    assert max_relative_error(out[key], expected[key]) < RTOL, key


def test_golden_text_encoder_matches_transformers(data_dir):
  golden = data_dir / "diffusers_sd1_tiny"
  with np.load(golden / "reference.npz") as ref:
    ids, expected = ref["input_ids"], {k: ref[k] for k in OUTPUTS}
  model, variables = jdpm.convert.from_diffusers(golden / "text_encoder")
  assert model.hidden_act == "quick_gelu" and model.eos_token_id == 999
  out = jax.jit(model.apply)(variables, ids)
  for key in OUTPUTS:
    assert max_relative_error(out[key], expected[key]) < RTOL, key


def test_pooled_position_rules():
  ids = np.array([[5, 7, 9, 3, 9, 0]])
  legacy = clip_text.CLIPTextModel(vocab_size=10, eos_token_id=2)
  assert int(legacy.pooled_positions(ids)[0]) == 2       # argmax: first maximum
  first_eos = clip_text.CLIPTextModel(vocab_size=10, eos_token_id=3)
  assert int(first_eos.pooled_positions(ids)[0]) == 3    # first occurrence of eos_token_id


def test_causal_mask_makes_earlier_positions_independent_of_later_tokens():
  model = clip_text.CLIPTextModel(vocab_size=50, hidden_size=8, intermediate_size=16,
                                  num_hidden_layers=1, num_attention_heads=2,
                                  max_position_embeddings=6, eos_token_id=49)
  a, b = np.array([[1, 2, 3, 4, 5, 49]]), np.array([[1, 2, 3, 7, 8, 49]])
  variables = model.init(jax.random.key(0), a)
  out_a, out_b = model.apply(variables, a), model.apply(variables, b)
  np.testing.assert_allclose(out_a["last_hidden_state"][:, :3], out_b["last_hidden_state"][:, :3],
                             atol=1e-6)
  assert not np.allclose(out_a["last_hidden_state"][:, 3], out_b["last_hidden_state"][:, 3])


def test_tokenizer_follows_the_folder(data_dir):
  pytest.importorskip("transformers")
  folder = data_dir / "diffusers_tiny"
  with np.load(folder / "reference.npz") as ref:
    prompts, ids = list(ref["prompts"]), ref["input_ids"]
  tokenizer = clip_text.load_tokenizer(folder / "pipeline" / "tokenizer")
  np.testing.assert_array_equal(clip_text.tokenize(tokenizer, prompts), ids)


def test_tokenizer_without_transformers_is_a_clear_error(monkeypatch, data_dir):
  monkeypatch.setitem(sys.modules, "transformers", None)
  with pytest.raises(ImportError, match="transformers"):
    clip_text.load_tokenizer(data_dir / "diffusers_tiny" / "pipeline" / "tokenizer")
