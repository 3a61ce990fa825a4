"""MDTv2, its converter, the mask latent modelling objective and the MDTv2 configs.

References (tests/data): ``mdt_tiny_params.npz`` holds the official state dict of the tiny MDTv2
of the golden files with parameter std 0.1; the std-0.02 model uses the same normal draws, i.e.
0.2 × these tensors (equal to the stored std-0.02 tensors within 1.4e-7 relative).
``mdt_tiny_outputs.npz`` holds the official outputs for both: ``<std>/out/*`` (plain and guided
forward, the power-cosine scales), ``std0p1/act/*`` (submodule outputs), ``masked/*`` (the official
``forward(..., enable_mask=True)``: recorded masks, outputs and the encoder output on the kept
tokens in token order) and ``amm/*`` (the EDT authors' MDTv2-with-AMM attention switched on in
blocks 1 and 4). Both files are written by tools/make_mdt_reference.py from sail-sg/MDT (and the EDT
repository's MDTv2 with AMM).
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest


import jdpm  # noqa: E402
from configs import mdt as mdt_configs  # noqa: E402
from jdpm.diffusion import create_diffusion  # noqa: E402
from jdpm.models import counting, mdt, relative_position  # noqa: E402
from jdpm.training import mdt_masking  # noqa: E402

TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=6, num_heads=4,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True,
            mask_ratio=0.3, decode_layer=2)
STDS = ("std0p02", "std0p1")


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def rel_err(actual, reference):
  return float(np.max(np.abs(np.asarray(actual) - reference)) / np.max(np.abs(reference)))


@functools.cache
def outputs(data_dir_path):
  with np.load(data_dir_path / "mdt_tiny_outputs.npz") as f:
    return dict(f)


@functools.cache
def official_state_dict(data_dir_path, std):
  with np.load(data_dir_path / "mdt_tiny_params.npz") as f:
    params = {k.removeprefix("param/"): f[k] for k in f.files}  # The official names.
  if std == "std0p02":
    params = {k: v * np.float32(0.2) for k, v in params.items()}
  return params


@functools.cache
def variables(data_dir_path, std):
  return jdpm.convert.from_official(official_state_dict(data_dir_path, std), "MDTv2", **TINY)


@functools.cache
def tiny_model(**kwargs):
  return jdpm.models.create("MDTv2", **TINY, **kwargs)


@functools.cache
def jitted(kind):
  model = tiny_model()
  if kind == "forward":
    return jax.jit(lambda v, x, t, y: model.apply(v, x, t, y, capture_intermediates=True))
  if kind == "cfg":
    return jax.jit(lambda v, x, t, y, s, p: model.apply(v, x, t, y, s, scale_pow=p,
                                                        method="forward_with_cfg"))
  if kind == "masked":
    return jax.jit(lambda v, x, t, y, m: model.apply(v, x, t, y, mask=m,
                                                     capture_intermediates=True))
  raise ValueError(kind)


# ----------------------------------------------------------------------------------------------
# Golden outputs of the official model.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("std", STDS)
def test_forward_matches_official(data_dir, std):
  data = outputs(data_dir)
  out, _ = jitted("forward")(variables(data_dir, std), nhwc(data["input/x"]), data["input/t"],
                             data["input/y"])
  assert out.shape == (3, 32, 32, 8)
  assert rel_err(out, nhwc(data[f"{std}/out/forward"])) <= 1e-5


@pytest.mark.parametrize("std", STDS)
@pytest.mark.parametrize("cfg_scale, scale_pow", [(3.8, 4.0), (4.0, 0.01)])
def test_forward_with_cfg_matches_official(data_dir, std, cfg_scale, scale_pow):
  data = outputs(data_dir)
  x_cfg = np.concatenate([data["input/x"]] * 2)
  t_cfg = np.concatenate([data["input/t"]] * 2)
  out = jitted("cfg")(variables(data_dir, std), nhwc(x_cfg), t_cfg, data["input/y_cfg"],
                      cfg_scale, scale_pow)
  reference = nhwc(data[f"{std}/out/cfg{cfg_scale}_pow{scale_pow}"])
  assert rel_err(out, reference) <= 1e-5
  # Three guided channels, equal in both halves; channel 3 and the variance are not guided.
  np.testing.assert_array_equal(out[:3, ..., :3], out[3:, ..., :3])
  assert np.max(np.abs(reference[:3, ..., 3] - reference[3:, ..., 3])) > 1e-3


def test_power_cosine_scale():
  t = np.array([0, 421, 999])
  for cfg, power, expected in [(3.8, 4.0, [3.8, 1.0863595, 1.0]),
                               (4.0, 0.01, [4.0, 3.9997802, 3.9671438])]:
    scale = np.asarray(mdt.power_cosine_guidance_scale(cfg, t, 1000, power))
    np.testing.assert_allclose(scale, expected, rtol=2e-7)
    # Analytic value in float64.
    exact = (cfg - 1) * 0.5 * (1 - np.cos(np.pi * (1 - t / 1000) ** power)) + 1
    np.testing.assert_allclose(scale, exact, rtol=1e-6)
  # t = diffusion_steps: no guidance (scale 1) for every power.
  np.testing.assert_allclose(mdt.power_cosine_guidance_scale(5.0, np.array([250]), 250, 2.0), 1.0)


def test_golden_real_cfg_scales(data_dir):
  data = outputs(data_dir)
  for cfg, power in [(3.8, 4.0), (4.0, 0.01)]:
    scale = mdt.power_cosine_guidance_scale(cfg, data["input/t"], 1000, power)
    np.testing.assert_allclose(scale, data[f"std0p1/out/real_cfg_scale_cfg{cfg}_pow{power}"],
                               rtol=2e-7)


def test_submodule_activations_match_official(data_dir):
  data = outputs(data_dir)
  _, state = jitted("forward")(variables(data_dir, "std0p1"), nhwc(data["input/x"]),
                               data["input/t"], data["input/y"])
  captured = state["intermediates"]
  names = ["x_embedder", "t_embedder", "y_embedder", "en_inblocks.0", "en_inblocks.1",
           "en_outblocks.0", "en_outblocks.1", "de_blocks.0", "de_blocks.1", "final_layer"]
  for name in names:
    actual = np.asarray(captured[name.replace(".", "_")]["__call__"][0][:1])
    reference = data[f"std0p1/act/{name}"]
    assert actual.shape == reference.shape, name
    assert rel_err(actual, reference) <= 1e-5, name


def test_amm_matches_official(data_dir):
  data = outputs(data_dir)
  blocks = tuple(int(i) for i in data["amm/blocks"])  # (1, 4): an encoder and a decoder block.
  model = tiny_model(amm_blocks=blocks)
  x, t, y = nhwc(data["input/x"]), data["input/t"], data["input/y"]
  out = jax.jit(lambda v: model.apply(v, x, t, y, amm=True))(variables(data_dir, "std0p1"))
  reference = nhwc(data["amm/out"])
  assert rel_err(out, reference) <= 1e-5
  assert rel_err(data["std0p1/out/forward"], data["amm/out"]) > 1e-2  # AMM matters here.
  with pytest.raises(ValueError, match="no amm_blocks"):
    jax.eval_shape(lambda: tiny_model().apply(variables(data_dir, "std0p1"), x, t, y, amm=True))
  with pytest.raises(ValueError, match="cannot be combined"):
    jax.eval_shape(lambda: model.apply(variables(data_dir, "std0p1"), x, t, y, amm=True,
                                       mask=np.zeros((3, 256), bool)))
  with pytest.raises(ValueError, match="has 6 blocks"):
    jdpm.models.count_params(tiny_model(amm_blocks=(6,)))


# ----------------------------------------------------------------------------------------------
# The masked pass.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_masked_pass_matches_official(data_dir, seed):
  """The official enable_mask=True forward, with the masks it drew (keeping 153 and 178 tokens,
  while jdpm always runs 179 slots)."""
  data = outputs(data_dir)
  mask = data[f"masked/seed{seed}/mask"]
  kept = int((~mask[0]).sum())
  assert np.all((~mask).sum(1) == kept) and kept == math.floor(256 * (1 - float(
      data[f"masked/seed{seed}/ratio"])))
  out, state = jitted("masked")(variables(data_dir, "std0p1"), nhwc(data["input/x"]),
                                data["input/t"], data["input/y"], mask)
  assert rel_err(out, nhwc(data[f"masked/seed{seed}/out"])) <= 1e-5  # measured <= 5.7e-6
  encoder = np.asarray(state["intermediates"]["en_outblocks_1"]["__call__"][0])
  assert encoder.shape == (3, 179, 64)
  assert rel_err(encoder[:, :kept], data[f"masked/seed{seed}/encoder"]) <= 1e-5  # measured 3.7e-6


def test_masked_encoder_sees_only_kept_tokens(data_dir):
  data = outputs(data_dir)
  mask = data["masked/seed0/mask"]
  kept = int((~mask[0]).sum())
  x = nhwc(data["input/x"])
  # Replace every dropped 2x2 patch by large random values.
  pixel_dropped = np.repeat(np.repeat(mask.reshape(3, 16, 16), 2, axis=1), 2, axis=2)
  noise = 50 * np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
  x_changed = np.where(pixel_dropped[..., None], noise, x)
  run = lambda x: jitted("masked")(variables(data_dir, "std0p1"), x, data["input/t"],
                                   data["input/y"], mask)
  out_a, state_a = run(x)
  out_b, state_b = run(x_changed)
  for name in ["en_inblocks_0", "en_inblocks_1", "en_outblocks_0", "en_outblocks_1"]:
    a = np.asarray(state_a["intermediates"][name]["__call__"][0])[:, :kept]
    b = np.asarray(state_b["intermediates"][name]["__call__"][0])[:, :kept]
    np.testing.assert_array_equal(a, b, err_msg=name)
  # As in the official model, the decoder's long skip is the full (unmasked) input embedding.
  assert rel_err(out_b, np.asarray(out_a)) > 1e-3


def test_kept_token_slots():
  mask = np.array([[True, False, True, False, False],
                   [False, False, False, False, True]])
  ids_keep, slot_valid, kept = mdt.kept_token_slots(mask, 3)
  np.testing.assert_array_equal(ids_keep, [[1, 3, 4], [0, 1, 2]])
  np.testing.assert_array_equal(slot_valid, [[True, True, True], [True, True, True]])
  # Row 1 keeps 4 tokens but has 3 slots: token 3 counts as dropped.
  np.testing.assert_array_equal(kept, [[False, True, False, True, True],
                                       [True, True, True, False, False]])
  ids_keep, slot_valid, kept = mdt.kept_token_slots(mask, 4)
  np.testing.assert_array_equal(ids_keep, [[1, 3, 4, 0], [0, 1, 2, 3]])
  np.testing.assert_array_equal(slot_valid, [[True, True, True, False], [True] * 4])
  np.testing.assert_array_equal(kept, ~mask)
  with pytest.raises(ValueError, match="keep_slots"):
    mdt.kept_token_slots(mask, 6)


def test_draw_token_mask_statistics():
  n, steps = 256, 2000
  keys = jax.random.split(jax.random.key(0, impl="rbg"), steps)
  draw = jax.jit(jax.vmap(lambda k: mdt_masking.draw_token_mask(k, 4, n, 0.3, 0.2, 179)))
  masks = np.asarray(draw(keys))  # (steps, 4, n)
  dropped = masks.sum(-1)
  # One ratio per step: every row of a step drops the same number of tokens.
  assert np.all(dropped == dropped[:, :1])
  keep = n - dropped[:, 0]
  # keep = floor(n (1 - r)), r ~ U(0.3, 0.5): keep in [128, 179], about uniform on it.
  assert keep.min() == 128 and keep.max() == 179
  counts = np.bincount(keep - 128, minlength=52)[:51]  # 179 = floor(n * 0.7) has width 0.2/256
  assert abs(counts.mean() - steps / 51.2) < 3 and counts.min() > 15 and counts.max() < 70
  np.testing.assert_allclose(np.mean(keep) / n, 1 - 0.4 - 0.5 / n, atol=0.003)
  # Every token is equally likely to be dropped.
  per_token = masks.reshape(-1, n).mean(0)
  assert np.all(np.abs(per_token - per_token.mean()) < 0.03)
  # Per-example ratios: rows of one step differ.
  per_example = np.asarray(mdt_masking.draw_token_mask(
      jax.random.key(1, impl="rbg"), 64, n, 0.3, 0.2, 179, per_example_ratio=True))
  assert len(set(per_example.sum(-1).tolist())) > 20
  with pytest.raises(ValueError, match="must lie in"):
    mdt_masking.draw_token_mask(jax.random.key(0), 2, n, 0.9, 0.2)


# ----------------------------------------------------------------------------------------------
# The objective.
# ----------------------------------------------------------------------------------------------

SMALL = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=3, num_heads=2,
             decode_layer=1, num_classes=3, class_dropout_prob=0.1, mask_ratio=0.3)


@functools.cache
def small_objective():
  model = jdpm.models.create("MDTv2", **SMALL)
  return mdt_masking.MaskedDenoisingObjective(model=model, diffusion=create_diffusion(),
                                              min_snr_gamma=5.0)


def small_batch(b=8):
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(-1, 1, size=(b, 8, 8, 3)).astype(np.float32),
          "label": rng.integers(0, 3, size=(b,)).astype(np.int32)}


def small_params(model):
  """Random N(0, 0.1²) parameters (no init compilation: shapes from an abstract trace)."""
  shapes = counting.abstract_variables(model)["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: jnp.asarray(0.1 * rng.normal(size=a.shape), a.dtype), shapes)


def test_objective_is_full_plus_masked_loss():
  objective = small_objective()
  model, diffusion = objective.model, objective.diffusion
  params = small_params(model)
  batch = jax.jit(objective.draw)(jax.random.key(1, impl="rbg"), small_batch(),
                                  objective.init_extra())
  masked_pass = batch["masked"]
  for key, shape in [("token_mask", (8, 16)), ("noise", (8, 8, 8, 3)), ("drop", (8,))]:
    assert masked_pass[key].shape == shape, key
  for key, shape in [("noise", (8, 8, 8, 3)), ("t", (8,))]:
    assert batch[key].shape == shape, key
  assert not np.allclose(batch["noise"], masked_pass["noise"])
  kept = 16 - np.asarray(masked_pass["token_mask"]).sum(1)
  assert np.all(kept == kept[0]) and 16 * 0.5 <= kept[0] <= 11  # floor(16 (1 - r)), r in [.3, .5)

  @jax.jit
  def reference_and_objective(params, batch):
    def pass_loss(noise, drop, mask):
      fn = lambda x_t, t: model.apply({"params": params}, x_t, t, batch["label"],
                                      force_drop_ids=drop, mask=mask)
      return diffusion.training_losses(fn, batch["image"], batch["t"], noise, min_snr_gamma=5.0)
    full = pass_loss(batch["noise"], batch["drop"], None)
    masked = pass_loss(batch["masked"]["noise"], batch["masked"]["drop"], batch["masked"]["token_mask"])
    return full, masked, objective.per_example_loss(params, batch)

  full, masked, (losses, aux) = reference_and_objective(params, batch)
  # Each example's loss depends only on its own draws (so micro-batches and shards of the
  # global batch give the same step): permuting the batch permutes the losses.
  perm = np.array([7, 0, 5, 2, 3, 6, 1, 4])
  _, _, (perm_losses, perm_aux) = reference_and_objective(
      params, jax.tree.map(lambda a: a[perm], batch))
  np.testing.assert_allclose(perm_losses, losses[perm], rtol=1e-5)
  np.testing.assert_allclose(perm_aux["masked_mse"], aux["masked_mse"][perm], rtol=1e-5)
  np.testing.assert_allclose(losses, (full["loss"] + masked["loss"]) * batch["weights"], rtol=1e-5)
  np.testing.assert_allclose(aux["raw_loss"], full["loss"] + masked["loss"], rtol=1e-5)
  np.testing.assert_allclose(aux["masked_mse"], masked["mse"], rtol=1e-5)
  np.testing.assert_allclose(aux["mse"], full["mse"], rtol=1e-5)
  np.testing.assert_allclose(aux["mask_ratio"], 1 - kept / 16)
  assert np.max(np.abs(aux["masked_mse"] - aux["mse"])) > 1e-3


def test_objective_needs_mask_ratio():
  model = jdpm.models.create("MDTv2", **dict(SMALL, mask_ratio=None))
  with pytest.raises(ValueError, match="mask_ratio"):
    mdt_masking.MaskedDenoisingObjective(model=model, diffusion=create_diffusion())
  x = jnp.zeros((2, 8, 8, 3))
  with pytest.raises(ValueError, match="kept-token slots"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros(2), jnp.zeros(2, jnp.int32),
                                      mask=jnp.zeros((2, 16), bool)))


# ----------------------------------------------------------------------------------------------
# Sizes, presets, converter, configs.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params_m, macs_g", [("MDTv2-S/2", 38.45, 6.74),
                                                     ("MDTv2-B/2", 150.93, 25.42),
                                                     ("MDTv2-XL/2", 742.26, 129.49)])
def test_preset_sizes(name, params_m, macs_g):
  model = jdpm.models.create(name)
  assert round(jdpm.models.count_params(model) / 1e6, 2) == params_m
  assert round(jdpm.models.count_macs(model) / 1e9, 2) == macs_g


def test_block_layout_and_init():
  model = jdpm.models.create("MDTv2-S/2")
  assert (model.half_depth, model.decode_layer, model.num_blocks) == (3, 6, 12)
  assert model.amm_blocks == (8,) and model.default_keep_slots == 179
  abstract = counting.abstract_variables(tiny_model())["params"]
  # A plain init creates the side-interpolater too; the official state dict has it.
  assert {"sideblocks_0", "mask_token", "pos_embed", "decoder_pos_embed"} <= set(abstract)
  assert "skip_linear" in abstract["en_outblocks_0"] and "skip_linear" in abstract["de_blocks_1"]
  assert "skip_linear" not in abstract["en_inblocks_0"]
  assert abstract["en_inblocks_0"]["attn"]["rel_pos_bias"][
      "relative_position_bias_table"].shape == (31 * 31 + 3, 4)
  with pytest.raises(ValueError, match="fixes decode_layer"):
    jdpm.models.create("MDTv2-S/2", decode_layer=4)


def test_converter_checks_index_buffers(data_dir):
  sd = dict(official_state_dict(data_dir, "std0p1"))
  index = relative_position.relative_position_index(16).astype(np.int64)
  with_buffers = dict(sd, **{"de_blocks.0.attn.rel_pos_bias.relative_position_index": index})
  converted = jdpm.convert.from_official(with_buffers, "MDTv2", **TINY)
  jax.tree.map(np.testing.assert_array_equal, converted, variables(data_dir, "std0p1"))
  bad = dict(sd, **{"de_blocks.0.attn.rel_pos_bias.relative_position_index": index.T + 1})
  with pytest.raises(ValueError, match="relative position index"):
    jdpm.convert.from_official(bad, "MDTv2", **TINY)
  with pytest.raises(ValueError, match="de_blocks_1"):
    jdpm.convert.from_official({k: v for k, v in sd.items() if not k.startswith("de_blocks.1.")},
                               "MDTv2", **TINY)


@pytest.mark.parametrize("arg, preset, lr, decode_layer", [("S", "MDTv2-S/2", 5e-4, 6),
                                                           ("B", "MDTv2-B/2", 3e-4, 4),
                                                           ("XL", "MDTv2-XL/2", 3e-4, 4)])
def test_configs(arg, preset, lr, decode_layer):
  config = mdt_configs.get_config(arg)
  kwargs = config.model.to_dict()
  model = jdpm.models.create(kwargs.pop("name"), **kwargs)
  reference = jdpm.models.create(preset)
  for field in ("hidden_size", "depth", "num_heads", "patch_size", "decode_layer", "mask_ratio",
                "amm_blocks", "input_size", "in_channels", "num_classes", "learn_sigma"):
    assert tuple(np.atleast_1d(getattr(model, field))) == tuple(
        np.atleast_1d(getattr(reference, field))), field
  assert model.decode_layer == decode_layer and config.optimizer.lr == lr
  assert config.objective == "mdt_masking" and config.diffusion.min_snr_gamma == 5.0
  assert (config.optimizer.optimizer, config.optimizer.grad_clip) == ("adan", 1.0)
  assert (config.batch_size, config.ema_decay) == (256, 0.9999)
  assert (config.sample.cfg_scale, config.sample.cfg_schedule, config.sample.cfg_scale_pow) == (
      3.8, "power_cosine", 4.0)


def test_tiny_config_fits_shapes_data():
  config = mdt_configs.get_config("tiny")
  kwargs = config.model.to_dict()
  model = jdpm.models.create(kwargs.pop("name"), **kwargs)
  assert (model.input_size, model.in_channels, model.num_classes) == (32, 3, 10)
  assert config.data.name == "shapes" and model.default_keep_slots == 44  # of 64 tokens
  assert jdpm.models.count_params(model) < 2e6
  with pytest.raises(ValueError, match="unknown MDTv2 config"):
    mdt_configs.get_config("L")
