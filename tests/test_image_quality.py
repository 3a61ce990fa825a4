"""PSNR, SSIM and MS-SSIM of jdpm.eval against scikit-image's metrics on the same images; LPIPS against
the `lpips` package with random backbones (tests/data/lpips_reference.npz, written by
tools/make_lpips_reference.py)."""

import pathlib

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import jdpm
from jdpm.data import clean_images
from jdpm.eval import image_quality


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

LPIPS_CONVS = {"alex": [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)],
               "vgg": [(0, 3, 64, 3), (2, 64, 64, 3), (5, 64, 128, 3), (7, 128, 128, 3), (10, 128, 256, 3),
                       (12, 256, 256, 3), (14, 256, 256, 3), (17, 256, 512, 3), (19, 512, 512, 3),
                       (21, 512, 512, 3), (24, 512, 512, 3), (26, 512, 512, 3), (28, 512, 512, 3)]}


def _random_backbone(net):
  """The reference script's recipe: torchvision-layout weights from np.random.default_rng(0)."""
  rng = np.random.default_rng(0)
  out = {}
  for index, c_in, c_out, k in LPIPS_CONVS[net]:
    out[f"features.{index}.weight"] = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))
                                       ).astype(np.float32)
    out[f"features.{index}.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
  return out


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package(net):
  ref = np.load(pathlib.Path(__file__).parent / "data" / "lpips_reference.npz")
  heads = {f"lin{k}.model.1.weight": ref[f"{net}/lin{k}"] for k in range(5)}
  params = image_quality.lpips_params_from_torch(_random_backbone(net), heads, net)
  x0 = np.transpose(ref[f"{net}/x0"], (0, 2, 3, 1))  # NCHW in [-1, 1] -> NHWC in [0, 1]
  x1 = np.transpose(ref[f"{net}/x1"], (0, 2, 3, 1))
  ours = np.asarray(image_quality.lpips((x0 + 1) / 2, (x1 + 1) / 2, params, net=net))
  np.testing.assert_allclose(ours, ref[f"{net}/out"], rtol=1e-4)


def test_lpips_weights_are_checked():
  with pytest.raises(ValueError, match="no conv layer features.0"):
    image_quality.lpips_params_from_torch({"classifier.1.weight": np.zeros((2, 2))}, {}, "alex")
