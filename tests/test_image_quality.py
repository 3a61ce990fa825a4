"""PSNR, SSIM and MS-SSIM of jdpm.eval against scikit-image's metrics on the same images; LPIPS against
the `lpips` package with random backbones (tests/data/lpips_reference.npz, written by
tools/make_lpips_reference.py)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import jdpm
from jdpm.data import clean_images
from jdpm.eval import image_quality

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pair(seed, shape=(40, 48, 3), noise=0.08):
  rng = np.random.default_rng(seed)
  x = clean_images.texture(seed, size=64)[: shape[0], : shape[1]]
  y = np.clip(x + noise * rng.standard_normal(shape), 0.0, 1.0)
  return x.astype(np.float64), y


def _skimage_ssim(x, y, data_range):
  return structural_similarity(x, y, data_range=data_range, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)


@pytest.mark.parametrize("seed,noise", [(0, 0.02), (1, 0.1), (2, 0.3)])
def test_psnr_and_ssim_equal_skimage(seed, noise):
  x, y = _pair(seed, noise=noise)
  assert float(jdpm.eval.psnr(x, y)) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-4)
  assert abs(float(jdpm.eval.ssim(x, y)) - _skimage_ssim(x, y, 1.0)) < 1e-4


def test_batches_give_one_value_per_image_and_data_range_is_used():
  pairs = [_pair(s) for s in range(3)]
  x = np.stack([p[0] for p in pairs]) * 2 - 1   # images in [-1, 1]
  y = np.stack([p[1] for p in pairs]) * 2 - 1
  ours_ssim = np.asarray(jdpm.eval.ssim(x, y, data_range=2.0))
  ours_psnr = np.asarray(jdpm.eval.psnr(x, y, data_range=2.0))
  assert ours_ssim.shape == ours_psnr.shape == (3,)
  for i in range(3):
    assert abs(ours_ssim[i] - _skimage_ssim(x[i], y[i], 2.0)) < 1e-4
    assert abs(ours_psnr[i] - peak_signal_noise_ratio(x[i], y[i], data_range=2.0)) < 1e-4


def test_ssim_of_8bit_range():
  x, y = _pair(3)
  x8, y8 = np.round(x * 255), np.round(y * 255)
  assert abs(float(jdpm.eval.ssim(x8, y8, data_range=255)) - _skimage_ssim(x8, y8, 255)) < 1e-4


def test_ms_ssim_reduces_to_ssim_and_orders_noise_levels():
  x, y = _pair(4, shape=(64, 64, 3))
  assert image_quality.ms_ssim_scales(64, 64) == 3
  assert float(jdpm.eval.ms_ssim(x, y, scales=1)) == pytest.approx(float(jdpm.eval.ssim(x, y)), abs=1e-6)
  assert float(jdpm.eval.ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
  _, noisier = _pair(4, shape=(64, 64, 3), noise=0.3)
  assert float(jdpm.eval.ms_ssim(x, noisier)) < float(jdpm.eval.ms_ssim(x, y)) < 1.0


def test_bad_inputs_give_one_clear_message():
  x = np.zeros((8, 8, 3))
  with pytest.raises(ValueError, match="smaller than the 11x11"):
    jdpm.eval.ssim(x, x)
  with pytest.raises(ValueError, match="same shape"):
    jdpm.eval.psnr(np.zeros((16, 16, 3)), np.zeros((16, 16, 1)))


# -- LPIPS ------------------------------------------------------------------------------------------------

def _random_backbone(net):
  """The reference script's NumPy recipe for the random backbone (the script imports torch only in main)."""
  spec = importlib.util.spec_from_file_location("make_lpips_reference", ROOT / "tools" / "make_lpips_reference.py")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(ROOT / "tools"))  # for its `official_common` import
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(ROOT / "tools"))
  return module.backbone(net)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package(net):
  ref = np.load(ROOT / "tests" / "data" / "lpips_reference.npz")
  heads = {f"lin{k}.model.1.weight": ref[f"{net}/lin{k}"] for k in range(5)}
  params = image_quality.lpips_params_from_torch(_random_backbone(net), heads, net)
  x0 = np.transpose(ref[f"{net}/x0"], (0, 2, 3, 1))  # NCHW in [-1, 1] -> NHWC in [0, 1]
  x1 = np.transpose(ref[f"{net}/x1"], (0, 2, 3, 1))
  ours = np.asarray(image_quality.lpips((x0 + 1) / 2, (x1 + 1) / 2, params, net=net))
  np.testing.assert_allclose(ours, ref[f"{net}/out"], rtol=1e-4)


def test_lpips_weights_are_checked():
  with pytest.raises(ValueError, match="no conv layer features.0"):
    image_quality.lpips_params_from_torch({"classifier.1.weight": np.zeros((2, 2))}, {}, "alex")
