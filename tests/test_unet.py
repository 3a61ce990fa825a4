"""The diffusers UNets (jdpm.models.unet) against diffusers, read through jdpm.convert.from_diffusers.

tests/data/diffusers_tiny/ comes from tools/make_diffusers_reference.py (random weights, float32):
an SD 1.x-layout UNet2DConditionModel (pipeline/unet), an SD 2.x-layout one (unet_sd2, sharded),
a UNet2DModel (unet2d), and diffusers' outputs, including the cross-attention probabilities and
logits of two layers recorded by an attention processor, and the outputs with the keys / values
of two context tokens substituted by another context's. tests/data/diffusers_sd1_tiny/ is an
independently made diffusers reference, copied verbatim from the project's golden data by
tools/copy_golden_reference.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.models import unet
from jdpm.models.counting import count_params

RTOL = 1e-5


def max_relative_error(actual, expected):
  """max |actual − expected| / max |expected|."""
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def tiny(data_dir):
  return data_dir / "diffusers_tiny"


@pytest.fixture(scope="module")
def ref(tiny):
  with np.load(tiny / "reference.npz") as archive:
    return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def sd1(tiny):
  return jdpm.convert.from_diffusers(tiny / "pipeline" / "unet")


@pytest.fixture(scope="module")
def sd1_apply(sd1):
  model, variables = sd1
  return jax.jit(lambda x, t, c, **kw: model.apply(variables, x, t, context=c, **kw))


# --- parameter counts and registry ------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [("SD1.5-UNet", 859_520_964), ("SD2.1-UNet", 865_910_724)])
def test_stable_diffusion_parameter_counts_equal_diffusers(name, expected):
  # Counted by diffusers on the "meta" device for the same configs (tools/ notes in the report).
  model = jdpm.models.create(name)
  assert count_params(unet.abstract_variables(model)) == expected


def test_create_family_and_presets():
  model = jdpm.models.create("UNet", class_name="UNet2DModel", block_out_channels=(8, 16),
                             norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D"))
  assert isinstance(model, unet.UNet2DModel)
  assert jdpm.models.family_of("SD2.1-UNet") == "UNet"
  assert jdpm.models.create("SD2.1-UNet").use_linear_projection
  with pytest.raises(ValueError, match="fixes"):
    jdpm.models.create("SD1.5-UNet", cross_attention_dim=1024)


def test_unknown_block_type_is_one_clear_error():
  model = unet.make_unet(block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8,
                         down_block_types=("CrossAttnDownBlock2D", "SkipDownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
  with pytest.raises(ValueError, match="SkipDownBlock2D"):
    unet.abstract_variables(model)


def test_nchw_input_and_missing_context_are_explained(sd1):
  model, variables = sd1
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(variables, jnp.zeros((1, 4, 8, 8)), jnp.zeros((1,)), context=jnp.zeros((1, 3, 16)))
  with pytest.raises(ValueError, match="context"):
    model.apply(variables, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))


# --- fidelity ------------------------------------------------------------------------------------


def test_sd1_layout_matches_diffusers(sd1_apply, ref):
  out = sd1_apply(ref["sd1/x"], ref["sd1/t"], ref["text/last_hidden_state"])
  assert out.shape == ref["sd1/out"].shape
  assert max_relative_error(out, ref["sd1/out"]) < RTOL


def test_sd2_layout_sharded_matches_diffusers(tiny, ref):
  model, variables = jdpm.convert.from_diffusers(tiny / "unet_sd2")
  assert model.use_linear_projection and model.attention_head_dim == (2, 4, 4)
  out = jax.jit(model.apply)(variables, ref["sd2/x"], ref["sd2/t"], ref["text/penultimate_hidden_state"])
  assert max_relative_error(out, ref["sd2/out"]) < RTOL


def test_unet2d_model_matches_diffusers(tiny, ref):
  model, variables = jdpm.convert.from_diffusers(tiny / "unet2d")
  assert isinstance(model, unet.UNet2DModel) and model.resnet_time_scale_shift == "scale_shift"
  out = jax.jit(model.apply)(variables, ref["unet2d/x"], ref["unet2d/t"], None, ref["unet2d/y"])
  assert max_relative_error(out, ref["unet2d/out"]) < RTOL


def test_golden_sd1_folder_matches_reference(data_dir):
  golden = data_dir / "diffusers_sd1_tiny"
  with np.load(golden / "reference.npz") as archive:
    g = {key: archive[key] for key in archive.files}
  model, variables = jdpm.convert.from_diffusers(golden / "unet")
  out = jax.jit(model.apply)(variables, g["x_nhwc"], g["t"], g["last_hidden_state"])
  assert max_relative_error(out, g["out_nhwc"]) < RTOL


# --- cross-attention capture and substitution ------------------------------------------------------


def test_captured_cross_attention_matches_diffusers(sd1, sd1_apply, ref):
  model, variables = sd1
  capture = jax.jit(lambda x, t, c: model.apply(variables, x, t, context=c, capture_cross_attention=True,
                                                mutable=["intermediates"]))
  out, state = capture(ref["sd1/x"], ref["sd1/t"], ref["text/last_hidden_state"])
  assert max_relative_error(out, ref["sd1/out"]) < RTOL
  maps = unet.cross_attention_maps(state)
  assert list(maps) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                        "mid_block.attentions.0.transformer_blocks.0.attn2",
                        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                        "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
  for layer in ("down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                "mid_block.attentions.0.transformer_blocks.0.attn2"):
    probs, logits = ref[f"sd1/probs/{layer}"], ref[f"sd1/logits/{layer}"]
    assert maps[layer]["probs"].shape == probs.shape  # (B, heads, H·W, L)
    assert max_relative_error(maps[layer]["probs"], probs) < RTOL
    assert max_relative_error(maps[layer]["logits"], logits) < RTOL
  np.testing.assert_allclose(maps["up_blocks.1.attentions.0.transformer_blocks.0.attn2"]["probs"].sum(-1),
                             1.0, atol=1e-5)
  # Capturing adds no parameter: only the "intermediates" collection comes back.
  assert set(state) == {"intermediates"} and set(variables) == {"params"}


@pytest.mark.parametrize("what", ["keys", "values"])
def test_token_substitution_matches_diffusers(sd1, ref, what):
  model, variables = sd1
  sub = unet.TokenSubstitution(ref["text/other_last_hidden_state"], ref["sd1/swap_positions"],
                               keys=what == "keys", values=what == "values")
  out = jax.jit(lambda x, t, c: model.apply(variables, x, t, context=c, substitute=sub))(
      ref["sd1/x"], ref["sd1/t"], ref["text/last_hidden_state"])
  assert max_relative_error(out, ref[f"sd1/out_swap_{what}"]) < RTOL
  assert max_relative_error(out, ref["sd1/out"]) > 1e-4  # the substitution did something


def test_context_mask_all_true_is_identity(sd1_apply, ref):
  mask = np.ones(ref["input_ids"].shape, bool)
  out = sd1_apply(ref["sd1/x"], ref["sd1/t"], ref["text/last_hidden_state"], context_mask=mask)
  assert max_relative_error(out, ref["sd1/out"]) < RTOL


# --- training on a CPU ---------------------------------------------------------------------------


def test_small_presets_are_small():
  counts = {name: count_params(unet.abstract_variables(jdpm.models.create(name)))
            for name in ("UNet-T2I-tiny", "UNet2D-tiny")}
  assert all(n < 1_000_000 for n in counts.values()), counts


@pytest.mark.slow
def test_gradient_steps_reduce_the_loss_on_cpu(sd1, ref):
  # The tiny SD-layout UNet (8/16 channels) stands for the small presets: same blocks, and its
  # variables need no separate (slow to compile) init here.
  model, variables = sd1
  x, t = ref["sd1/x"], jnp.asarray(ref["sd1/t"], jnp.float32)
  context, noise = ref["text/last_hidden_state"], jax.random.normal(jax.random.key(3), x.shape)

  @jax.jit
  def step(params):
    loss_fn = lambda p: jnp.mean((model.apply({"params": p}, x, t, context) - noise)**2)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    return loss, jax.tree.map(lambda p, g: p - 0.02 * g, params, grads)

  params, losses = variables["params"], []
  for _ in range(3):
    loss, params = step(params)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
