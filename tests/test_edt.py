"""EDT: golden outputs of the official code (via the converter), parameter/MAC counts of the
presets, custom stage splits, and the token relation-enhanced masking (model inputs and training objective).

The reference parameters are not stored (they would take 4 MB per file): the reference data drew
every non-frozen entry as ``torch.randn(shape, generator=g) * std`` with one
``torch.Generator().manual_seed(0)``, in state-dict order, and ``torch_randn`` below regenerates
those draws without torch to ~1e-7 relative precision (checked against two stored entries). The
files keep the official inputs, outputs, activations, the frozen sin-cos tables and the key
order and shapes. tools/make_edt_reference.py writes them (edt_tiny*.npz, edt_amm.npz, and
edt_masked.npz: the official masked training forward with its recorded keep masks) from
xinwangChen/EDT.
"""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.diffusion.gaussian import create_diffusion
from jdpm.models import edt
from jdpm.models.relative_position import RelativePositionBias, relative_position_index
from jdpm.training.edt_masking import EDTMaskingObjective, draw_keep_mask
from jdpm.training.objectives import DenoisingObjective

DATA = pathlib.Path(__file__).parent / "data"

# The official constructor call of the reference data (amm_blocks replaces size="S", local=True).
GOLDEN_KWARGS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=48, depth=12,
                     num_heads=[3, 4, 5, 4, 3], mlp_ratio=4.0, class_dropout_prob=0.1,
                     num_classes=10, learn_sigma=True, stages_depth=[2, 2, 2, 3, 3],
                     dims=[48, 64, 80, 64, 48], amm_blocks=[7, 10])
RTOL = 1e-5  # max |jdpm − official| / max |official|
# Tests compile a few small graphs; XLA's backend optimisations would double the compile time.
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


# ---------------------------------------------------------------------------------------------
# Golden data.
# ---------------------------------------------------------------------------------------------


def torch_randn(seed):
  """``randn(shape)`` of a CPU ``torch.Generator().manual_seed(seed)``, call after call.

  Torch draws 24-bit uniforms from MT19937 (numpy's legacy seeding is the same) and turns each
  block of 16 into normals by Box–Muller (u1 = 1 − first 8, u2 = last 8; cos then sin); a tail of
  fewer than 16 values redraws 16 fresh uniforms for the last 16 entries. Only tensors of at least
  16 entries are supported (all the reference parameters are).
  """
  bits = np.random.RandomState(seed)._bit_generator

  def uniforms(n):
    raw = bits.random_raw(n).astype(np.uint64) & np.uint64((1 << 24) - 1)
    return (raw.astype(np.float64) * 2.0**-24).astype(np.float32)

  def box_muller(blocks):
    radius = np.sqrt(np.float32(-2) * np.log(np.float32(1) - blocks[:, :8]))
    theta = np.float32(2 * np.pi) * blocks[:, 8:]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)

  def randn(shape):
    n = int(np.prod(shape))
    assert n >= 16, "the short-tensor path of torch.randn is not reproduced"
    out = uniforms(n)
    full = n - n % 16
    out[:full] = box_muller(out[:full].reshape(-1, 16))
    if n % 16:
      out[n - 16:] = box_muller(uniforms(16).reshape(1, 16))
    return out.reshape(shape)

  return randn


def golden_state_dict(data):
  """The reference state dict: frozen tables as stored, every other entry randn · param_std."""
  randn = torch_randn(int(data["meta/param_seed"]))
  std = np.float32(data["meta/param_std"])
  shapes = np.split(data["param_shapes"], np.cumsum(data["param_ndim"])[:-1])
  state_dict = {}
  for key, shape in zip(data["param_keys"], shapes):
    key = str(key)
    if "param/" + key in data:
      state_dict[key] = data["param/" + key]  # The frozen sin-cos tables.
    else:
      state_dict[key] = randn(tuple(shape)) * std
  return state_dict


@pytest.fixture(scope="module", params=["edt_tiny", "edt_tiny_std0p1"])
def golden(request):
  data = dict(np.load(DATA / f"{request.param}.npz"))
  state_dict = golden_state_dict(data)
  for key in [k for k in data if k.startswith("check/")]:  # Regenerated as the reference drew it.
    np.testing.assert_allclose(state_dict[key[6:]], data[key], rtol=0,
                               atol=3e-7 * np.abs(data[key]).max())
  variables = jdpm.convert.from_official(state_dict, "EDT", **GOLDEN_KWARGS)
  return request.param, data, variables


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def rel_err(got, ref):
  return float(np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref)))


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def golden_forward(variables, x, t, y, x_cfg, t_cfg, y_cfg):
  """Every output the reference data holds, in one compiled function (one compilation in all)."""
  model = jdpm.models.create("EDT", **GOLDEN_KWARGS)
  outputs = {
      "out/noamm": model.apply(variables, x, t, y),
      "out/cfg2.0_noamm": model.apply(variables, x_cfg, t_cfg, y_cfg, 2.0,
                                      method="forward_with_cfg"),
      "out/cfg2.0_amm": model.apply(variables, x_cfg, t_cfg, y_cfg, 2.0, amm=True,
                                    method="forward_with_cfg"),
  }
  outputs["out/amm"], state = model.apply(variables, x, t, y, amm=True,
                                          capture_intermediates=True)
  return outputs, state["intermediates"]


@pytest.fixture(scope="module")
def golden_outputs(golden):
  name, data, variables = golden
  x = nhwc(data["input/x"])
  outputs, intermediates = golden_forward(variables, x, data["input/t"], data["input/y"],
                                          np.concatenate([x, x]), data["input/t_cfg"],
                                          data["input/y_cfg"])
  return name, data, outputs, intermediates


def test_converted_model_matches_official_outputs(golden_outputs):
  name, data, outputs, _ = golden_outputs
  assert sorted(outputs) == sorted(k for k in data if k.startswith("out/"))
  for key, got in outputs.items():
    assert rel_err(got, nhwc(data[key])) <= RTOL, (name, key, rel_err(got, nhwc(data[key])))
  # AMM moves the output by far more than the tolerance (5e-2 relative at std 0.1), so the
  # match above does check the AMM path.
  if name == "edt_tiny_std0p1":
    assert rel_err(outputs["out/noamm"], nhwc(data["out/amm"])) > 100 * RTOL


def test_activations_match_official(golden_outputs):
  name, data, _, inter = golden_outputs
  if name != "edt_tiny_std0p1":
    pytest.skip("activations are stored for the std 0.1 weights only")
  keys = [k for k in data if k.startswith("act/amm/")]
  assert len(keys) == 22  # Embedders, 12 blocks, 2 down, 2 up, 2 concat, final layer.
  for key in keys:
    module = key[len("act/amm/"):].replace(".", "_")
    got = np.asarray(inter[module]["__call__"][0][:1])
    assert got.shape == data[key].shape, key
    assert rel_err(got, data[key]) <= RTOL, (key, rel_err(got, data[key]))


def test_relative_position_index_matches_official():
  data = np.load(DATA / "edt_amm.npz")
  for n in (16, 8, 4):
    np.testing.assert_array_equal(relative_position_index(n),
                                  data[f"aux/relative_position_index/grid{n}"])
  table = np.arange(49 * 2, dtype=np.float32).reshape(49, 2)
  bias = RelativePositionBias(4, 2).apply({"params": {"relative_position_bias_table": table}})
  np.testing.assert_array_equal(bias, table[data["aux/relative_position_index/grid4"]]
                                .transpose(2, 0, 1))


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def masked_forward(variables, x, t, y, keep_0, keep_1):
  model = jdpm.models.create("EDT", **GOLDEN_KWARGS)
  return model.apply(variables, x, t, y, down_keep=(keep_0, keep_1))


@pytest.mark.parametrize("seed", [0, 3])
def test_masked_pass_matches_official(seed):
  """The official masked training forward (``enable_down_mask=True``, std-0.1 weights, no AMM),
  fed the keep masks its two down-sampling modules received (edt_masked.npz)."""
  data = dict(np.load(DATA / "edt_tiny_std0p1.npz"))
  masked = np.load(DATA / "edt_masked.npz")
  assert float(masked["meta/param_std"]) == float(data["meta/param_std"])
  variables = jdpm.convert.from_official(golden_state_dict(data), "EDT", **GOLDEN_KWARGS)
  keep = [masked[f"seed{seed}/down_keep/{k}"] for k in (0, 1)]
  assert keep[0].shape == (3, 256) and keep[1].shape == (3, 64)
  # Drop rates of the recipe: p ~ U(0.4, 0.5) at the first module, U(0.1, 0.2) at the second.
  assert 0.35 < 1 - keep[0].mean() < 0.55 and 0.05 < 1 - keep[1].mean() < 0.25
  got = masked_forward(variables, nhwc(data["input/x"]), data["input/t"], data["input/y"], *keep)
  reference = nhwc(masked[f"seed{seed}/out"])
  assert rel_err(got, reference) <= RTOL, rel_err(got, reference)
  # The masks matter far beyond the tolerance: the unmasked output is another one.
  assert rel_err(data["out/noamm"], masked[f"seed{seed}/out"]) > 100 * RTOL


# ---------------------------------------------------------------------------------------------
# Architecture: presets, counts, geometry, custom splits.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params_m, gmacs, exact_params", [
    ("EDT-S/2", 38.33, 2.67, 38_329_146),
    ("EDT-B/2", 152.26, 10.22, 152_262_100),
    ("EDT-XL/2", 698.52, 53.44, 698_523_098),
    ("EDT-XL/2-paper", 708.44, 51.83, 708_444_968),  # The paper's numbers (12/12/4 split).
])
def test_preset_counts(name, params_m, gmacs, exact_params):
  model = jdpm.models.create(name)
  n_params = jdpm.models.count_params(model)
  assert n_params == exact_params
  assert round(n_params / 1e6, 2) == params_m
  assert round(jdpm.models.count_macs(model) / 1e9, 2) == gmacs


def test_preset_geometry():
  xl = jdpm.models.create("EDT-XL/2")
  assert xl.dims == (936, 1248, 1560, 1248, 936) and xl.num_heads == (18, 24, 30, 24, 18)
  assert xl.stage_grid_sizes() == (16, 8, 4, 8, 16) and xl.resolved_amm_blocks() == (23, 25)
  s = jdpm.models.create("EDT-S/2")
  assert s.block_grid_sizes() == (16, 16, 8, 8, 4, 4, 8, 8, 8, 16, 16, 16)
  assert s.resolved_amm_blocks() == (7, 10)
  # AMM placement is not architecture: a preset accepts another one.
  assert jdpm.models.create("EDT-S/2", amm_blocks=[8]).resolved_amm_blocks() == (8,)


def random_params(model, std=0.1, seed=0):
  rng = np.random.default_rng(seed)
  shapes = jdpm.models.counting.abstract_variables(model)["params"]
  return jax.tree.map(lambda a: std * rng.standard_normal(a.shape, np.float32), shapes)


def official_state_dict(model, params):
  """jdpm params → a state dict with the official names and layouts (plus the frozen tables)."""
  state_dict = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = [re.sub(r"_(\d+)$", r".\1", p.key) for p in path]
    leaf, value = parts[-1], np.asarray(value)
    if leaf == "kernel":
      leaf = "weight"
      value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
    elif leaf == "embedding":
      leaf = "weight"
    state_dict[".".join(parts[:-1] + [leaf])] = value
  for key, table in jdpm.convert.edt._frozen_tables(model).items():
    state_dict[key] = table.astype(np.float32)
  return state_dict


TINY_KWARGS = dict(input_size=16, patch_size=2, in_channels=3, hidden_size=24,
                   dims=[24, 32, 40, 32, 24], num_heads=[3, 4, 5, 4, 3],
                   stages_depth=[5, 1, 1, 1, 1], num_classes=5)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def tiny_forward(params, x, t, y, down_keep_0, mid_keep):
  """The tiny model's outputs: plain, with the given keep masks, and with AMM in global block 5."""
  model = jdpm.models.create("EDT", **TINY_KWARGS)
  variables = {"params": params}
  return dict(plain=model.apply(variables, x, t, y),
              masked=model.apply(variables, x, t, y, down_keep=(down_keep_0, None),
                                 mid_keep=mid_keep),
              amm_5=model.clone(amm_blocks=[5]).apply(variables, x, t, y, amm=True))


@pytest.fixture(scope="module")
def tiny():
  """A small EDT with a non-official stage split (8x8 → 4x4 → 2x2 tokens), random weights, a
  batch, and ``run(params, down_keep_0=all, mid_keep=all)`` → the outputs of ``tiny_forward``."""
  model = jdpm.models.create("EDT", **TINY_KWARGS)
  params = random_params(model)
  x = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
  t, y = np.array([5, 700]), np.array([1, 3])
  ones = np.ones((2, 64), bool)

  def run(params, down_keep_0=ones, mid_keep=ones):
    return jax.tree.map(np.asarray, tiny_forward(params, x, t, y, down_keep_0, mid_keep))

  return model, params, x, t, y, run


def test_custom_stage_split_converts_and_uses_global_amm_indices(tiny):
  model, params, x, t, y, run = tiny
  assert model.block_grid_sizes() == (8, 8, 8, 8, 8, 4, 2, 4, 8)
  state_dict = official_state_dict(model, params)
  assert "concat_blocks.1.adaLN_modulation.1.weight" in state_dict
  converted = jdpm.convert.from_official(state_dict, "EDT", depth=9, **TINY_KWARGS)
  jax.tree.map(np.testing.assert_array_equal, converted["params"], params)
  # Global block 5 is the 4x4 block of the second stage: AMM there changes the output (the
  # official code's fixed 12-entry list cannot place AMM by stage for such splits).
  out = run(converted["params"])
  assert rel_err(out["amm_5"], out["plain"]) > 1e-4
  with pytest.raises(ValueError, match="block 9, but"):
    model.clone(amm_blocks=[7, 9]).init(jax.random.key(0), x, t, y, amm=True)
  with pytest.raises(ValueError, match="no AMM blocks"):
    model.init(jax.random.key(0), x, t, y, amm=True)
  # Weights of one split do not load into another.
  with pytest.raises(ValueError, match="blocks_4"):
    jdpm.convert.from_official(state_dict, "EDT",
                               **{**TINY_KWARGS, "stages_depth": [4, 1, 1, 1, 2]})
  # A wrong frozen table is reported.
  state_dict["down_blocks.1.pos_embed"] = state_dict["down_blocks.1.pos_embed"] + 0.1
  with pytest.raises(ValueError, match="down_blocks.1.pos_embed differs"):
    jdpm.convert.from_official(state_dict, "EDT", **TINY_KWARGS)


def test_config_errors():
  x, t, y = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
  for kwargs, match in [(dict(depth=8), "depth=8 but sum"),
                        (dict(dims=(24, 32, 40, 40, 24)), "symmetric"),
                        (dict(stages_depth=(1, 1, 1, 1)), "odd number of stages"),
                        (dict(input_size=12), "cannot be halved")]:
    model = jdpm.models.create("EDT", **{**TINY_KWARGS, **kwargs})
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(model.init, jax.random.key(0), x, t, y)


def test_token_merge_and_pixel_shuffle_layouts():
  # Token (r, c) of a 4x4 grid carries the value 10r + c in every channel.
  grid = (10 * np.arange(4)[:, None] + np.arange(4)[None, :]).reshape(1, 16, 1).astype(np.float32)
  merged = np.asarray(edt.merge_2x2(jnp.asarray(grid)))
  # Merged token (0, 1) = 2x2 group rows 0-1, cols 2-3, ordered (0,0), (1,0), (0,1), (1,1).
  np.testing.assert_array_equal(merged[0, 1], [2, 12, 3, 13])
  # Pixel shuffle: features (row offset, col offset, C) of token (r, c) → token (2r + i, 2c + j).
  features = np.arange(2 * 2 * 4 * 3, dtype=np.float32).reshape(1, 4, 12)
  shuffled = np.asarray(edt.pixel_shuffle_2x(jnp.asarray(features)))
  token_1 = features[0, 1].reshape(2, 2, 3)  # Source token (0, 1).
  for i in range(2):
    for j in range(2):
      np.testing.assert_array_equal(shuffled[0, (0 + i) * 4 + 2 + j], token_1[i, j])


# ---------------------------------------------------------------------------------------------
# Masking: model inputs.
# ---------------------------------------------------------------------------------------------


def test_down_sample_drops_tokens_after_the_norm():
  module = edt.DownSample(8)
  x = np.random.default_rng(0).standard_normal((1, 16, 4), np.float32)
  c = np.random.default_rng(1).standard_normal((1, 6), np.float32)
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape, np.float32),
                        jax.eval_shape(module.init, jax.random.key(0), x, c))
  keep = np.ones((1, 16), bool)
  keep[0, [0, 1, 4, 5]] = False  # The whole 2x2 group of merged token 0.
  keep[0, 2] = False             # One token of merged token 1's group.

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(x):
    masked_out = lambda x: module.apply(params, x, c, keep)
    grad = jax.grad(lambda x: masked_out(x)[0, :2].sum())(x)
    return module.apply(params, x, c), masked_out(x), grad

  full, masked, grad = map(np.asarray, run(x))
  pos = np.asarray(edt.sincos_table(8, 2))[0]
  np.testing.assert_array_equal(masked[0, 0], pos[0])           # Nothing but the position.
  np.testing.assert_allclose(masked[0, 2:], full[0, 2:], atol=1e-6)  # Untouched groups.
  assert np.abs(masked[0, 1] - full[0, 1]).max() > 1e-3
  # A token whose whole group is dropped has no influence; a partly dropped group's dropped token
  # only acts through the LayerNorm statistics of its group (as in the reference).
  np.testing.assert_array_equal(grad[0, [0, 1, 4, 5]], 0)
  assert np.abs(grad[0, 2]).max() > 0


def perturbed(params, prefixes, scale=0.5):
  """params with every leaf of the named top-level modules shifted (deterministically)."""
  return {k: jax.tree.map(lambda a: a + scale, v) if k.startswith(prefixes) else v
          for k, v in params.items()}


def test_masked_down_sampling_cuts_the_first_stage(tiny):
  _, params, _, _, _, run = tiny
  reference = run(params)
  assert rel_err(reference["masked"], reference["plain"]) < 1e-6  # All tokens kept.
  # Dropping every token at the first down-sampling: the first stage's blocks and the down-sampling
  # module no longer reach the output; the input still does, through the long skip.
  drop_all = lambda p: run(p, down_keep_0=np.zeros((2, 64), bool))["masked"]
  cut = drop_all(params)
  stage0 = tuple(f"blocks_{i}" for i in range(5)) + ("down_blocks_0",)
  np.testing.assert_array_equal(drop_all(perturbed(params, stage0)), cut)
  assert rel_err(drop_all(perturbed(params, ("x_embedder",))), cut) > 1e-3
  assert rel_err(drop_all(perturbed(params, ("blocks_5",))), cut) > 1e-3
  # A realistic mask changes the output.
  keep, _ = draw_keep_mask(jax.random.key(0), 2, 64, (0.4, 0.5))
  assert rel_err(run(params, down_keep_0=keep)["masked"], reference["plain"]) > 1e-3


def test_mid_mask_replaces_tokens_by_the_position_table(tiny):
  model, params, x, t, y, run = tiny
  drop_all = lambda p: run(p, mid_keep=np.zeros((2, 64), bool))["masked"]
  cut = drop_all(params)
  # The blocks before the fifth block of the first stage are cut off; the fifth is not.
  np.testing.assert_array_equal(drop_all(perturbed(params, tuple(f"blocks_{i}" for i in range(4)))),
                                cut)
  assert rel_err(drop_all(perturbed(params, ("blocks_4",))), cut) > 1e-3
  with pytest.raises(ValueError, match="before block 5 of the first stage"):
    model.clone(mid_mask_block=5).init(jax.random.key(0), x, t, y,
                                       mid_keep=np.zeros((2, 64), bool))


# ---------------------------------------------------------------------------------------------
# Masking: the training objective.
# ---------------------------------------------------------------------------------------------


def test_mask_statistics():
  model = jdpm.models.create("EDT-XL/2")  # 16x16 then 8x8 tokens at the two down-samplings.
  objective = EDTMaskingObjective(model, create_diffusion(""), mid_mask_ratio=(0.15, 0.25))
  masks = jax.jit(objective.draw_masks, static_argnums=1)(jax.random.key(0), 2048)
  for k, (grid, (low, high)) in enumerate(zip((16, 8), ((0.4, 0.5), (0.1, 0.2)))):
    keep, ratio = np.asarray(masks["down_keep"][k]), np.asarray(masks["down_ratio"][:, k])
    assert keep.shape == (2048, grid * grid) and keep.dtype == bool
    assert low <= ratio.min() < low + 0.01 and high - 0.01 < ratio.max() <= high
    assert abs(ratio.mean() - (low + high) / 2) < 0.003
    dropped = 1 - keep.mean(axis=1)
    assert abs(dropped.mean() - (low + high) / 2) < 0.003
    # Each example drops about its own ratio (binomial spread around it).
    assert np.corrcoef(dropped, ratio)[0, 1] > 0.3
    assert abs(np.mean(dropped - ratio)) < 0.003
  mid_keep, mid_ratio = np.asarray(masks["mid_keep"]), np.asarray(masks["mid_ratio"])
  assert mid_keep.shape == (2048, 256) and 0.15 <= mid_ratio.min() and mid_ratio.max() <= 0.25
  assert abs((1 - mid_keep.mean()) - 0.2) < 0.003
  # Independent masks at the two scales and across examples.
  assert not np.array_equal(masks["down_keep"][0][0], masks["down_keep"][0][1])


def test_objective_sums_a_full_and_a_masked_pass(tiny):
  model, params, x, _, _, _ = tiny
  diffusion = create_diffusion("")
  objective = EDTMaskingObjective(model, diffusion, timestep_sampler="loss-second-moment",
                                  min_snr_gamma=5.0, mid_mask_ratio=(0.15, 0.25))
  plain = DenoisingObjective(model, diffusion, timestep_sampler="loss-second-moment",
                             min_snr_gamma=5.0)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step_losses(params, batch, key):
    drawn = objective.draw(key, batch, objective.init_extra())
    full_batch = {k: v for k, v in drawn.items() if k != "masked"}
    # The masked pass's noise and label drops without its masks.
    unmasked_batch = dict(full_batch, noise=drawn["masked"]["noise"], drop=drawn["masked"]["drop"])

    # Both passes computed directly from the model and the diffusion losses, not through the
    # objective: what the two official forward calls of a training step compute.
    def direct_pass(noise, drop, **masks):
      fn = lambda x_t, t: model.apply({"params": params}, x_t, t, batch["label"],
                                      force_drop_ids=drop, **masks)
      return diffusion.training_losses(fn, batch["image"], drawn["t"], noise,
                                       min_snr_gamma=5.0)["loss"]
    masked = drawn["masked"]
    direct = (direct_pass(drawn["noise"], drawn["drop"]),
              direct_pass(masked["noise"], masked["drop"], down_keep=masked["down_keep"],
                          mid_keep=masked["mid_keep"]))
    return (drawn, objective.per_example_loss(params, drawn),
            plain.per_example_loss(params, full_batch),
            plain.per_example_loss(params, unmasked_batch), direct)

  batch = {"image": x, "label": np.array([0, 4])}
  drawn, (losses, aux), (plain_losses, plain_aux), (unmasked, _), (full, masked_loss) = step_losses(
      params, batch, jax.random.key(7))
  # Every drawn array has the global batch as leading axis: the update step's micro-batch split
  # hands each example its own masks, so gradient accumulation is exact.
  assert all(a.shape[0] == 2 for a in jax.tree.leaves(drawn))
  masked = drawn["masked"]
  assert not np.allclose(masked["noise"], drawn["noise"])
  assert [k.shape for k in masked["down_keep"]] == [(2, 64), (2, 16)]
  assert masked["mid_keep"].shape == (2, 64)
  # The full pass is exactly the plain denoising loss.
  np.testing.assert_allclose(aux["loss_full"], plain_aux["raw_loss"], rtol=1e-6)
  # Each pass equals its direct computation, and the objective is their (weighted) sum.
  weights = np.asarray(drawn["weights"])
  np.testing.assert_allclose(aux["loss_full"], full, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_masked"], masked_loss, rtol=1e-5)
  np.testing.assert_allclose(aux["raw_loss"], full + masked_loss, rtol=1e-5)
  np.testing.assert_allclose(losses, (full + masked_loss) * weights, rtol=1e-5)
  # The masked pass uses its own noise, label drops and masks: without the masks it would give
  # another loss, and so would the full pass's noise.
  assert np.abs(masked_loss * weights - unmasked).max() > 1e-4
  assert np.abs(masked_loss - full).max() > 1e-4
  # The timestep sampler learns from the sum of both passes' losses.
  extra = objective.update_extra(objective.init_extra(), drawn, losses, aux)
  expected = plain.update_extra(plain.init_extra(), drawn, plain_losses,
                                {"raw_loss": aux["raw_loss"]})
  jax.tree.map(np.testing.assert_array_equal, extra, expected)


def test_objective_from_config():
  import configs.edt as edt_configs  # pylint: disable=import-outside-toplevel
  config = edt_configs.get_config("XL")
  assert config.objective == "edt_masking"
  model = jdpm.models.create(config.model.name, **{k: v for k, v in config.model.items()
                                                    if k != "name"})
  objective = EDTMaskingObjective.from_config(config, model)
  assert objective.down_mask_ratios == ((0.4, 0.5), (0.1, 0.2))
  assert objective.mid_mask_ratio == (0.15, 0.25)
  assert objective.timestep_sampler == "loss-second-moment" and objective.min_snr_gamma == 5.0
  assert jdpm.models.count_params(model) == 698_523_098
  with pytest.raises(ValueError, match="down_mask_ratios has 3 entries"):
    EDTMaskingObjective(model, create_diffusion(""), down_mask_ratios=((0.1, 0.2),) * 3)
