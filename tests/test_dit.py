"""DiT, shared layers, registry and counting, checked against the official PyTorch DiT.

Reference data: tests/data/dit_tiny.npz and dit_tiny_std0p1.npz, written by
tools/make_dit_reference.py from facebookresearch/DiT (see tools/README.md).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.models import counting, dit, layers, registry

TINY = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
            mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def rel_err(actual, reference):
  return float(np.max(np.abs(np.asarray(actual) - reference)) / np.max(np.abs(reference)))


@functools.cache
def tiny_model():
  return jdpm.models.create("DiT", **TINY)


@functools.cache
def jitted(method=None):
  model = tiny_model()
  if method == "forward_with_cfg":
    return jax.jit(lambda v, x, t, y, s: model.apply(v, x, t, y, s, method="forward_with_cfg"))
  if method == "intermediates":
    return jax.jit(lambda v, x, t, y: model.apply(v, x, t, y, capture_intermediates=True))
  return jax.jit(lambda v, x, t, y: model.apply(v, x, t, y))


@functools.cache
def golden(name):
  with np.load(f"{jdpm_data_dir()}/{name}") as f:
    data = dict(f)
  return data, jdpm.convert.from_official(data, "DiT", **TINY)


def jdpm_data_dir():
  import pathlib  # pylint: disable=import-outside-toplevel
  return pathlib.Path(__file__).parent / "data"


# ----------------------------------------------------------------------------------------------
# Golden outputs of the official model.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dit_tiny.npz", "dit_tiny_std0p1.npz"])
def test_forward_matches_official(name):
  data, variables = golden(name)
  out = jitted()(variables, nhwc(data["input/x"]), data["input/t"], data["input/y"])
  assert out.shape == (3, 32, 32, 8)
  assert rel_err(out, nhwc(data["out/forward"])) <= 1e-5


@pytest.mark.parametrize("name", ["dit_tiny.npz", "dit_tiny_std0p1.npz"])
def test_forward_with_cfg_matches_official(name):
  data, variables = golden(name)
  scale = float(data["meta/cfg_scale"])
  out = jitted("forward_with_cfg")(variables, nhwc(data["input/x_cfg"]), data["input/t_cfg"],
                                   data["input/y_cfg"], scale)
  reference = nhwc(data["out/cfg1.5"])
  assert rel_err(out, reference) <= 1e-5
  # The official convention: 3 guided channels equal in both halves, channel 3 is not guided.
  np.testing.assert_array_equal(out[:3, ..., :3], out[3:, ..., :3])
  assert np.max(np.abs(reference[:3, ..., 3] - reference[3:, ..., 3])) > 1e-3


def test_submodule_activations_match_official():
  data, variables = golden("dit_tiny_std0p1.npz")
  _, state = jitted("intermediates")(variables, nhwc(data["input/x"]), data["input/t"],
                                     data["input/y"])
  captured = state["intermediates"]
  for name in ["x_embedder", "t_embedder", "y_embedder", "blocks.0", "blocks.1", "final_layer"]:
    module = name.replace(".", "_")
    actual = np.asarray(captured[module]["__call__"][0][:1])
    reference = data[f"act/{name}"]
    assert actual.shape == reference.shape, name
    assert rel_err(actual, reference) <= 1e-5, name


def test_guided_channels_is_configurable():
  data, variables = golden("dit_tiny_std0p1.npz")
  model = tiny_model()
  x, t, y = nhwc(data["input/x_cfg"]), data["input/t_cfg"], data["input/y_cfg"]

  @jax.jit
  def both(variables, x, t, y):
    raw = model.apply(variables, jnp.concatenate([x[:3], x[:3]]), t, y)
    return raw, model.apply(variables, x, t, y, 4.0, guided_channels=4, method="forward_with_cfg")

  raw, out = jax.tree.map(np.asarray, both(variables, x, t, y))
  cond, uncond = raw[:3, ..., :4], raw[3:, ..., :4]
  np.testing.assert_allclose(out[:3, ..., :4], uncond + 4.0 * (cond - uncond), atol=1e-5)
  np.testing.assert_allclose(out[3:, ..., :4], out[:3, ..., :4], atol=0)
  np.testing.assert_allclose(out[..., 4:], raw[..., 4:], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------


def test_sincos_pos_embed_is_the_official_table():
  data, _ = golden("dit_tiny.npz")
  table = layers.get_2d_sincos_pos_embed(64, 16)
  np.testing.assert_allclose(table[None].astype(np.float32), data["param/pos_embed"], atol=0)
  # Token (row 0, col 1) vs (row 1, col 0): the first half of the features encodes the column.
  np.testing.assert_allclose(table[1, :32], np.concatenate([np.sin(1.0 / 10000 ** (
      np.arange(16) / 16.0)), np.cos(1.0 / 10000 ** (np.arange(16) / 16.0))]), atol=1e-12)
  np.testing.assert_allclose(table[16, 32:], table[1, :32], atol=0)


def test_timestep_embedding_analytic():
  t = np.array([0.0, 3.5, 999.0])
  emb = np.asarray(layers.timestep_embedding(t, 7))
  freqs = np.exp(-math.log(10000) * np.arange(3) / 3)
  args = t[:, None] * freqs
  expected = np.concatenate([np.cos(args), np.sin(args), np.zeros((3, 1))], axis=1)
  np.testing.assert_allclose(emb, expected, atol=2e-4)  # float32 arguments up to 999 rad.
  assert emb.shape == (3, 7)


def test_unpatchify_inverts_patch_order():
  # Token (i, j) with feature (a, b, c) must land at pixel (i*p + a, j*p + b), channel c.
  p, side, c = 2, 3, 2
  image = np.arange(side * p * side * p * c, dtype=np.float32).reshape(1, side * p, side * p, c)
  tokens = image.reshape(1, side, p, side, p, c).transpose(0, 1, 3, 2, 4, 5)
  tokens = tokens.reshape(1, side * side, p * p * c)
  np.testing.assert_array_equal(layers.unpatchify(jnp.asarray(tokens), p, c), image)


def _numpy_attention(params, x, heads, bias, modulation):
  b, n, d = x.shape
  qkv = x @ params["qkv"]["kernel"] + params["qkv"]["bias"]
  qkv = qkv.reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads) + bias
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights = weights / weights.sum(-1, keepdims=True) * modulation
  out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return out @ params["proj"]["kernel"] + params["proj"]["bias"]


def test_attention_bias_and_modulation():
  heads, n, d = 2, 5, 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, n, d)).astype(np.float32)
  bias = rng.normal(size=(heads, n, n)).astype(np.float32)
  modulation = rng.uniform(0.5, 1.5, size=(1, 1, n, n)).astype(np.float32)
  attn = layers.Attention(heads)
  params = jax.jit(attn.init)(jax.random.key(0, impl="rbg"), x)["params"]
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  @jax.jit
  def run(params, x, bias, modulation):
    variables = {"params": params}
    return (attn.apply(variables, x, bias=bias),
            attn.apply(variables, x, bias=bias, modulation=modulation),
            attn.apply(variables, x, bias=bias, modulation=jnp.ones((n, n))))

  plain, modulated, ones = run(params, x, bias, modulation)
  np.testing.assert_allclose(plain, _numpy_attention(np_params, x, heads, bias, 1.0), atol=1e-5)
  np.testing.assert_allclose(modulated, _numpy_attention(np_params, x, heads, bias, modulation),
                             atol=1e-5)
  np.testing.assert_allclose(ones, plain, atol=1e-5)


def test_label_dropout():
  _, variables = golden("dit_tiny_std0p1.npz")
  table = np.asarray(variables["params"]["y_embedder"]["embedding_table"]["embedding"])
  labels = jnp.arange(1000) % 10

  def embed(prob, train, force_drop_ids=None, rng=None):
    embedder = layers.LabelEmbedder(10, 64, prob)
    params = {"params": variables["params"]["y_embedder"]}
    rngs = {"dropout": rng} if rng is not None else {}
    return embedder.apply(params, labels, train, force_drop_ids, rngs=rngs)

  run = jax.jit(embed, static_argnums=(0, 1))
  np.testing.assert_array_equal(run(0.1, False), table[labels])  # Eval mode never drops.
  forced = run(0.1, False, (labels < 3).astype(jnp.int32))
  np.testing.assert_array_equal(forced, table[np.where(labels < 3, 10, labels)])
  np.testing.assert_array_equal(run(1.0, True, rng=jax.random.key(0)), table[np.full(1000, 10)])
  half = np.asarray(run(0.5, True, rng=jax.random.key(0)))
  dropped = np.all(half == table[10], axis=1)
  assert 0.45 < dropped.mean() < 0.55
  np.testing.assert_array_equal(half[~dropped], table[labels][~dropped])
  with pytest.raises(ValueError, match="rng stream 'dropout'"):
    jax.eval_shape(lambda: embed(0.1, True))
  with pytest.raises(ValueError, match="null class"):
    jax.eval_shape(lambda: layers.LabelEmbedder(10, 64, 0.0).init(
        jax.random.key(0), labels, False, labels))


def test_model_force_drop_ids_uses_null_class():
  data, variables = golden("dit_tiny_std0p1.npz")
  model = tiny_model()
  x, t, y = nhwc(data["input/x"]), data["input/t"], np.array([3, 7, 1])
  unconditional = jitted()(variables, x, t, np.full(3, TINY["num_classes"]))
  forced = jax.jit(functools.partial(model.apply, force_drop_ids=jnp.array([1, 0, 1])))(
      variables, x, t, y)
  np.testing.assert_allclose(forced[0::2], unconditional[0::2], atol=1e-6)
  assert np.max(np.abs(forced[1] - unconditional[1])) > 1e-2


# ----------------------------------------------------------------------------------------------
# Model construction, init and input checks.
# ----------------------------------------------------------------------------------------------


def test_init_is_adaln_zero():
  model = jdpm.models.create("DiT", **{**TINY, "depth": 1, "input_size": 8})
  x = np.ones((2, 8, 8, 4), np.float32)
  # The "rbg" generator compiles much faster on CPU than the default threefry.
  rng = jax.random.key(0, impl="rbg")
  variables = jax.jit(model.init)(rng, x, np.zeros(2), np.zeros(2, np.int32))
  params = variables["params"]
  for path in [("blocks_0", "adaLN_modulation_1"), ("final_layer", "adaLN_modulation_1"),
               ("final_layer", "linear")]:
    module = params[path[0]][path[1]]
    assert not np.any(module["kernel"]) and not np.any(module["bias"])
  # Patch embedding is Xavier-uniform over (fan_in = p*p*C, fan_out = D).
  kernel = params["x_embedder"]["proj"]["kernel"]
  assert kernel.shape == (2, 2, 4, 64)
  bound = math.sqrt(6 / (16 + 64))
  assert bound * 0.9 < np.max(np.abs(kernel)) <= bound
  assert params["y_embedder"]["embedding_table"]["embedding"].shape == (11, 64)
  out = jax.jit(model.apply)(variables, x, np.zeros(2), np.zeros(2, np.int32))
  assert out.shape == (2, 8, 8, 8) and not np.any(out)


@pytest.mark.parametrize("shape, message", [
    ((2, 32, 32), "NHWC"),
    ((2, 4, 32, 32), r"\(B, 32, 32, 4\)"),
    ((2, 16, 16, 4), r"got \(2, 16, 16, 4\)"),
    ((2, 32, 32, 3), r"got \(2, 32, 32, 3\)"),
])
def test_wrong_input_shape_raises(shape, message):
  model = tiny_model()
  _, variables = golden("dit_tiny.npz")
  with pytest.raises(ValueError, match=message):
    model.apply(variables, np.zeros(shape, np.float32), np.zeros(2), np.zeros(2, np.int32))


def test_wrong_t_shape_raises():
  _, variables = golden("dit_tiny.npz")
  with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
    tiny_model().apply(variables, np.zeros((2, 32, 32, 4), np.float32), np.zeros(3),
                       np.zeros(2, np.int32))


def test_registry_presets_and_errors():
  model = jdpm.models.create("DiT-B/4")
  assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (768, 12, 12, 4)
  assert (model.input_size, model.in_channels, model.num_classes, model.learn_sigma) == (
      32, 4, 1000, True)
  assert jdpm.models.create("DiT-S/8", num_classes=10, learn_sigma=False).out_channels == 4
  assert {f"DiT-{s}/{p}" for s in "S B L XL".split() for p in (2, 4, 8)} <= set(
      jdpm.models.known_names())
  with pytest.raises(ValueError, match=r"Unknown model name 'DiT-M/2'.*DiT-XL/2"):
    jdpm.models.create("DiT-M/2")
  with pytest.raises(ValueError, match="fixes hidden_size=384"):
    jdpm.models.create("DiT-S/2", hidden_size=96)
  with pytest.raises(ValueError, match="Unknown keyword.*hidden_dim"):
    jdpm.models.create("DiT", hidden_dim=96)


def test_register_new_family(monkeypatch):
  monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
  monkeypatch.setattr(registry, "_PRESET_TO_FAMILY", dict(registry._PRESET_TO_FAMILY))
  registry.register("Toy", dit.DiT, {"Toy-1": dict(hidden_size=16, depth=1, num_heads=2)},
                    defaults=dict(num_classes=5))
  model = jdpm.models.create("Toy-1", input_size=8)
  assert (model.hidden_size, model.num_classes, model.input_size) == (16, 5, 8)
  assert jdpm.models.family_of("Toy-1") == "Toy"
  with pytest.raises(ValueError, match="already registered"):
    registry.register("Other", dit.DiT, {"Toy-1": {}})


# ----------------------------------------------------------------------------------------------
# Parameter and MAC counts of the paper's models (256 px: 32x32x4 latents, 1000 classes).
# ----------------------------------------------------------------------------------------------


# params: exactly the trainable parameters of the official DiT (facebookresearch/DiT @ ed81ce2,
# counted on the meta device; the frozen pos_embed excluded). params_m / gmacs: the README's model
# table (tools/model_table.py). paper_gflops: the DiT paper's Gflops, to the digits it prints.
@pytest.mark.parametrize("name, params, macs, params_m, gmacs, paper_gflops", [
    ("DiT-S/2", 32_865_056, 6_055_673_856, 32.87, 6.06, "6.06"),
    ("DiT-B/2", 130_315_808, 23_005_102_080, 130.32, 23.01, "23.01"),
    ("DiT-L/2", 457_840_672, 80_697_622_528, 457.84, 80.70, "80.7"),
    ("DiT-XL/2", 674_834_720, 118_621_421_568, 674.83, 118.62, "118.6"),
])
def test_paper_param_and_mac_counts(name, params, macs, params_m, gmacs, paper_gflops):
  model = jdpm.models.create(name)
  assert counting.count_params(model) == params
  assert counting.count_macs(model) == macs
  assert round(params / 1e6, 2) == params_m and round(macs / 1e9, 2) == gmacs
  digits = len(paper_gflops.split(".")[1])
  assert round(macs / 1e9, digits) == float(paper_gflops)


def test_macs_scale_with_batch_and_count_attention():
  model = jdpm.models.create("DiT", **TINY)
  macs = counting.count_macs(model)
  assert counting.count_macs(model, batch=2) == 2 * macs
  d, n, depth = 64, 256, 2
  per_block = n * d * 3 * d + n * d * d + 2 * n * d * 4 * d + 2 * n * n * d + d * 6 * d
  rest = n * 2 * 2 * 4 * d + 256 * d + d * d + d * 2 * d + n * d * 32
  assert macs == depth * per_block + rest


def test_remat_gives_the_same_output():
  data, variables = golden("dit_tiny.npz")
  model = jdpm.models.create("DiT", **TINY, remat=True)
  x, t, y = nhwc(data["input/x"]), data["input/t"], data["input/y"]
  out = jax.jit(model.apply)(variables, x, t, y)
  np.testing.assert_allclose(out, jitted()(variables, x, t, y), atol=1e-6)
