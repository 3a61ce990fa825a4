"""FID InceptionV3 against pytorch-fid (random weights), its resizes, and the weight loader.

``tests/data/inception_ref.npz`` comes from ``tools/make_inception_reference.py``; the weights are
not stored but regenerated here by the same numpy rule (see that script's docstring).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.convert import inception as convert_lib
from jdpm.models import inception

DATA = pathlib.Path(__file__).parent / "data" / "inception_ref.npz"
# torchvision's Inception3(num_classes=1008, aux_logits=False): conv kernels, BN affine, fc.
PARAM_COUNT = 23_850_960
BN_STATISTICS_COUNT = 34_432
RTOL = 1e-4


@functools.cache
def reference():
  with np.load(DATA) as f:
    return dict(f)


def _rule(key, shape):
  """(scale, offset, transform) of tools/make_inception_reference.py's ``kind_std``."""
  if key == "fc.weight":
    return 1 / np.sqrt(shape[1]), 0.0, None
  if key == "fc.bias" or key.endswith(("bn.bias", "bn.running_mean")):
    return 0.1, 0.0, None
  if key.endswith("conv.weight"):
    return np.sqrt(2.0 / np.prod(shape[1:])), 0.0, None
  if key.endswith("bn.weight"):
    return 0.1, 1.0, None
  if key.endswith("bn.running_var"):
    return 0.2, 0.0, np.exp
  raise ValueError(key)


@functools.cache
def random_state_dict():
  """The reference's random weights: one generator, keys in sorted order, float64 → float32."""
  ref = reference()
  rng = np.random.default_rng(int(ref["seed"]))
  out = {}
  for key, padded in zip(ref["keys"], ref["shapes"]):
    key, shape = str(key), tuple(int(d) for d in padded if d >= 0)
    if key.endswith("num_batches_tracked"):
      out[key] = np.zeros(shape, np.int64)
      continue
    scale, offset, transform = _rule(key, shape)
    value = offset + scale * rng.standard_normal(shape)
    out[key] = (transform(value) if transform else value).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  """The random weights as a file, so the tests go through ``load_variables`` like real ones."""
  path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
  np.savez(path, **random_state_dict())
  return path


@pytest.fixture(scope="module")
def variables(weights_file):
  return convert_lib.load_variables(weights_file, sha256=convert_lib.sha256_of(weights_file))


@pytest.fixture(scope="module")
def outputs(variables):
  model = inception.InceptionV3()
  return jax.jit(model.apply)(variables, jnp.asarray(reference()["images"]))


def max_relative_error(actual, expected):
  """max |actual - expected| / max |expected| (relative to the tensor's scale)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name", ["pool3", "logits", "logits_unbiased", "spatial"])
def test_matches_pytorch_fid(outputs, name):
  expected = reference()[name]
  assert outputs[name].shape == expected.shape
  assert outputs[name].dtype == jnp.float32
  error = max_relative_error(outputs[name], expected)
  print(f"{name}: max relative error {error:.2e}")
  assert error <= RTOL


def test_output_shapes_for_any_input_size(variables):
  shapes = jax.eval_shape(inception.InceptionV3().apply, variables,
                          jax.ShapeDtypeStruct((3, 512, 384, 3), jnp.float32))
  assert {k: v.shape for k, v in shapes.items()} == {
      "pool3": (3, 2048), "logits": (3, 1008), "logits_unbiased": (3, 1008),
      "spatial": (3, 17 * 17 * 7)}


@pytest.mark.parametrize("case", ["up", "down"])
def test_resizes_match_torch_and_tf1(case):
  ref = reference()
  h, w = (int(d) for d in ref[f"resize/{case}/shape"])
  x = np.random.default_rng(int(ref["resize_seed"])).random((1, 3, h, w)).astype(np.float32)
  x = jnp.asarray(x.transpose(0, 2, 3, 1))
  size = (inception.INPUT_SIZE, inception.INPUT_SIZE)
  torch_style = inception.resize_bilinear(x, size, half_pixel_centers=True)[:, ::5, ::5]
  tf1 = inception.resize_bilinear(x, size, half_pixel_centers=False)[:, ::5, ::5]
  np.testing.assert_allclose(torch_style, ref[f"resize/{case}/torch"], atol=1e-6)
  # The reference is exact (float64) TF1 mapping; ours, as TensorFlow's kernel, places samples in
  # float32, off by up to in · 2^-24 pixels (~4e-5 at 613 pixels).
  np.testing.assert_allclose(tf1, ref[f"resize/{case}/tf1"], atol=1e-4)


def test_preprocess_scales_uint8_and_float_alike():
  images = reference()["images"]
  as_uint8 = inception.preprocess(jnp.asarray(images))
  as_float = inception.preprocess(jnp.asarray(images, jnp.float32) / 255)
  as_255 = inception.preprocess(jnp.asarray(images, jnp.float32), max_value=255.0)
  np.testing.assert_allclose(as_uint8, as_float, atol=1e-6)
  np.testing.assert_allclose(as_uint8, as_255, atol=1e-6)
  assert as_uint8.shape == (2, 299, 299, 3)
  tf1 = inception.preprocess(jnp.full((1, 299, 299, 3), 255, jnp.uint8), mode="tf1")
  np.testing.assert_allclose(tf1, 127 / 128)  # The TF graph maps [0, 255] to [-1, 127/128].
  with pytest.raises(ValueError, match="NHWC"):
    inception.preprocess(jnp.zeros((1, 3, 64, 64)))


def test_param_count():
  model = inception.InceptionV3()
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  assert jdpm.models.count_params(abstract) == PARAM_COUNT == int(reference()["param_count"])
  stats = sum(x.size for x in jax.tree.leaves(abstract["batch_stats"]))
  assert stats == BN_STATISTICS_COUNT == int(reference()["buffer_count"])


def test_converted_layouts(variables):
  sd = random_state_dict()
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["Mixed_6d"]["branch7x7_2"]["conv"]["kernel"],
                                sd["Mixed_6d.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["bn"]["scale"],
                                sd["Mixed_7c.branch_pool.bn.weight"])
  np.testing.assert_array_equal(stats["Conv2d_1a_3x3"]["bn"]["var"],
                                sd["Conv2d_1a_3x3.bn.running_var"])


def test_convert_reports_missing_and_unexpected_keys():
  sd = dict(random_state_dict())
  del sd["Mixed_5b.branch1x1.conv.weight"], sd["Mixed_5b.branch1x1.bn.running_mean"]
  sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match="unexpected key") as info:
    convert_lib.convert_state_dict(sd)
  assert "AuxLogits.fc.weight" in str(info.value)
  assert "Mixed_5b/branch1x1/conv/kernel" in str(info.value)


def test_reads_legacy_torch_files(tmp_path):
  """The released weights use torch.save's pre-1.6 format; the fixture is a small file in it."""
  ref = reference()
  path = tmp_path / "legacy.pth"
  path.write_bytes(ref["legacy_pth"].tobytes())
  loaded = convert_lib.read_weights_file(path)
  expected = {k[len("legacy/"):]: v for k, v in ref.items() if k.startswith("legacy/")}
  assert sorted(loaded) == sorted(expected)
  for key, value in expected.items():
    assert loaded[key].dtype == value.dtype, key
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_missing_weights_error(tmp_path, monkeypatch):
  monkeypatch.delenv(convert_lib.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError, match=convert_lib.ENV_VAR) as info:
    convert_lib.load_variables()
  assert convert_lib.WEIGHTS_URL in str(info.value)
  with pytest.raises(FileNotFoundError, match="not found") as info:
    convert_lib.load_variables(tmp_path / "nowhere.pth")
  assert convert_lib.WEIGHTS_URL in str(info.value)
  monkeypatch.setenv(convert_lib.ENV_VAR, str(tmp_path))  # A directory without the file.
  with pytest.raises(FileNotFoundError, match=convert_lib.WEIGHTS_FILE_NAME):
    convert_lib.load_variables()


def test_wrong_hash_error(tmp_path, monkeypatch):
  fake = tmp_path / convert_lib.WEIGHTS_FILE_NAME
  fake.write_bytes(b"not the Inception weights")
  with pytest.raises(ValueError, match="SHA-256") as info:
    convert_lib.load_variables(fake)
  assert convert_lib.WEIGHTS_SHA256 in str(info.value)
  assert convert_lib.WEIGHTS_URL in str(info.value)
  monkeypatch.setenv(convert_lib.ENV_VAR, str(tmp_path))  # Found through the directory.
  with pytest.raises(ValueError, match="SHA-256"):
    convert_lib.load_variables()


def test_pinned_hash_matches_file_name():
  # torch.hub's convention: the hex digits after the last "-" start the file's SHA-256.
  prefix = convert_lib.WEIGHTS_FILE_NAME.rsplit("-", 1)[1].split(".")[0]
  assert convert_lib.WEIGHTS_SHA256.startswith(prefix)
  assert len(convert_lib.WEIGHTS_SHA256) == 64
