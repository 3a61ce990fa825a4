"""Cross-attention capture and the [EOS] edits of jdpm.analysis on a tiny random text-to-image model:
captured probabilities sum to 1 over tokens and equal a hand computation from each layer's inputs; the
[EOS] swap leaves every other token's state bit-identical; the mask metrics on hand-made masks."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import t2i
from jdpm import pipelines
from jdpm.analysis import attention, eos
from jdpm.models import unet as unet_lib
from jdpm.t2i import bundle, models
from tests.random_weights import random_variables


@pytest.fixture(scope="module")
def tiny():
  config = t2i.get_config("test")
  unet, text, tok = models.denoiser(config), models.text_encoder(config), models.tokenizer(config)
  ids = tok.encode(["a big red square", "a blue ring left of a green circle"])
  text_vars = jax.jit(text.init)(jax.random.key(1), ids)
  context = jax.jit(text.apply)(text_vars, ids)["last_hidden_state"]
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 3)), jnp.float32)
  unet_vars = random_variables(unet, x, jnp.zeros((2,)), context, seed=3, scale=0.2)
  return dict(config=config, unet=unet, text=text, tok=tok, ids=ids, text_vars=text_vars, context=context,
              x=x, unet_vars=unet_vars)


def test_capture_sums_to_one_and_matches_hand_computation(tiny):
  unet, variables, context = tiny["unet"], tiny["unet_vars"], tiny["context"]
  t = jnp.array([500.0, 20.0])
  # The input of every cross-attention layer is its block's norm2 output.
  _, state = jax.jit(lambda v, x, t, c: unet.apply(
      v, x, t, c, capture_cross_attention=True, mutable=["intermediates"],
      capture_intermediates=lambda m, _: m.name == "norm2"))(variables, tiny["x"], t, context)
  maps = unet_lib.cross_attention_maps(state)
  assert len(maps) == 4  # 8x8: one in the down block, one in the mid block, two in the up block
  params = variables["params"]
  for name, captured in maps.items():
    probs = np.asarray(captured["probs"])
    assert probs.shape[-1] == context.shape[1] and probs.shape[1] == unet.attention_head_dim
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    path = name.replace(".", "_").split("_attn2")[0]
    node_p, node_s = params, state["intermediates"]
    for part in _flax_path(name)[:-1]:
      node_p, node_s = node_p[part], node_s[part]
    h = np.asarray(node_s["norm2"]["__call__"][0], np.float64)  # (B, N, C)
    attn = node_p["attn2"]
    q = h @ np.asarray(attn["to_q"]["kernel"], np.float64)
    k = np.asarray(context, np.float64) @ np.asarray(attn["to_k"]["kernel"], np.float64)
    heads = probs.shape[1]
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1)
    q, k = split(q), split(k)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=2e-5, err_msg=path)
  per_token = attention.token_maps({k: v["probs"] for k, v in maps.items()}, (16, 16))
  assert per_token.shape == (2, 16, 16, context.shape[1])
  np.testing.assert_allclose(np.asarray(per_token).sum(-1), 1.0, atol=1e-5)


def _flax_path(name):
  """"down_blocks.1.attentions.0.transformer_blocks.0.attn2" → Flax module names."""
  parts, out = name.split("."), []
  for p in parts:
    if p.isdigit():
      out[-1] = f"{out[-1]}_{p}"
    else:
      out.append(p)
  return out


def test_eos_swap_keeps_every_other_token_bit_identical(tiny):
  tok, text_vars = tiny["tok"], tiny["text_vars"]
  text = argparse.Namespace(apply=jax.jit(tiny["text"].apply))
  ids_a, ids_b = tok.encode(["a big red square", "a small blue ring"]), tok.encode(["a big green circle"] * 2)
  ctx_a = text.apply(text_vars, ids_a)["last_hidden_state"]
  ctx_b = text.apply(text_vars, ids_b)["last_hidden_state"]
  mask = tok.eos_positions(ids_a) & tok.eos_positions(ids_b)
  swapped = np.asarray(eos.swap_eos(ctx_a, ctx_b, mask))
  keep = ~mask
  assert np.array_equal(swapped[keep], np.asarray(ctx_a)[keep])
  assert np.array_equal(swapped[mask], np.asarray(ctx_b)[mask])
  assert mask.sum() == 2 * (16 - 5)
  first = np.asarray(eos.swap_eos(ctx_a, ctx_b, mask, count=2))
  changed = (first != np.asarray(ctx_a)).any(-1)
  np.testing.assert_array_equal(changed.sum(1), [2, 2])
  assert changed[:, 5:7].all()
  # The text encoder is causal: A's word states do not depend on later tokens.
  ids_c = tok.encode(["a big red circle"])
  ctx_c = np.asarray(text.apply(text_vars, ids_c)["last_hidden_state"])
  np.testing.assert_allclose(ctx_c[0, :4], np.asarray(ctx_a)[0, :4], atol=1e-6)
  assert np.abs(ctx_c[0, 4:] - np.asarray(ctx_a)[0, 4:]).max() > 1e-4


def test_replace_tokens(tiny):
  ctx = tiny["context"]
  mask = np.zeros(ctx.shape[:2], bool)
  mask[:, 1:3] = True
  zero = np.asarray(eos.replace_tokens(ctx, mask, "zero"))
  assert (zero[mask] == 0).all() and np.array_equal(zero[~mask], np.asarray(ctx)[~mask])
  rnd = np.asarray(eos.replace_tokens(ctx, mask, "random", jax.random.key(0)))
  np.testing.assert_allclose(np.linalg.norm(rnd[mask], axis=-1), np.linalg.norm(np.asarray(ctx)[mask], axis=-1),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="mode"):
    eos.replace_tokens(ctx, mask, "mean")


def test_mask_metrics():
  a = np.zeros((1, 4, 4), bool)
  b = np.zeros((1, 4, 4), bool)
  a[0, :2, :2] = True          # 4 pixels
  b[0, :2, :3] = True          # 6 pixels, 4 shared
  np.testing.assert_allclose(attention.iou(a, b), [4 / 6])
  np.testing.assert_allclose(attention.f1(a, b), [2 * 4 / 10])
  images = np.zeros((1, 6, 6, 3))
  images[0, 2:4, 2:4] = 1.0
  expected = np.zeros((1, 6, 6), bool)
  expected[0, 2:4, 2:4] = True
  np.testing.assert_array_equal(attention.shape_mask(images), expected)
  maps = np.zeros((2, 1, 4, 4, 1))
  maps[0, 0, :2, :3, 0] = 1.0  # early map: the wider region
  maps[1, 0, :2, :2, 0] = 1.0  # final map: exactly the shape
  np.testing.assert_allclose(attention.relative_f1(maps, a)[:, 0, 0], [0.8, 1.0])


def test_builtin_pipeline_samples_with_trajectory_and_maps(tiny):
  """The pixel-space pipeline of the built-in model: word prompts, condition dropping, trajectories, and
  the per-step token maps of the attention analysis."""
  pipe = bundle.assemble(tiny["config"], tiny["unet_vars"], tiny["text_vars"])
  prompts = ["a big red square", "a blue ring above a green circle"]
  rows = []

  def counting_apply(variables, x, t, context):
    jax.debug.callback(lambda n: rows.append(int(n)), x.shape[0])
    return pipe.unet.apply(variables, x, t, context)

  out = pipelines.text_to_image(pipe, prompts, steps=3, method="ddim", order=1, guidance_scale=3.0,
                                drop_text_last=1, return_trajectory=True, apply_fn=counting_apply)
  jax.block_until_ready(out["images"])
  assert rows == [4, 4, 2]  # two guided (doubled-batch) calls, then one unconditional call
  assert out["images"].shape == (2, 16, 16, 3) and out["network_calls"] == 5
  assert out["trajectory"].shape == (4, 2, 16, 16, 3) and out["x0_pred"].shape == (3, 2, 16, 16, 3)
  maps = attention.maps_over_steps(pipe, np.asarray(out["trajectory"]), out["timesteps"], pipe.encode(pipe.tokenize(prompts)))
  assert maps.shape == (3, 2, 16, 16, 16)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="empty"):
    pipelines.text_to_image(pipe, [""], steps=2)
  with pytest.raises(ValueError, match="at most 14"):
    pipelines.text_to_image(pipe, ["a red ring left of a blue square " * 2], steps=2)


def test_builtin_pipeline_reads_what_the_denoiser_predicts(tiny):
  """The pipeline reads the denoiser's output as the config's prediction; a run saved before the field
  existed (no `prediction`) predicted noise."""
  config = tiny["config"].copy_and_resolve_references()
  for prediction, model_type in (("v", "v"), ("epsilon", "noise")):
    config.denoiser.prediction = prediction
    assert bundle.assemble(config, tiny["unet_vars"], tiny["text_vars"]).model_type == model_type
  del config.denoiser["prediction"]
  assert bundle.assemble(config, tiny["unet_vars"], tiny["text_vars"]).model_type == "noise"
