"""The frequency split of jdpm.analysis.frequency against analytic ground truth: a Gaussian field of known
power spectrum has, per band, SNR = ᾱ_t·P_band/(1−ᾱ_t) with the noise of the forward process."""

import numpy as np
import pytest

from jdpm.analysis import frequency
from jdpm.diffusion import betas as betas_lib

SIZE = 16


def spectrum(size, r0=0.08):
  """A known isotropic power spectrum S(k) (per frequency, orthonormal FFT), steeply falling."""
  fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
  return 20.0 / (1.0 + (np.sqrt(fx**2 + fy**2) / r0) ** 3)


def gaussian_field(rng, n, s):
  """n real fields (n, H, W, 1) with E|x̂_k|² = S(k) exactly (white noise shaped in Fourier space)."""
  white = rng.standard_normal((n, SIZE, SIZE, 1))
  shaped = np.fft.fft2(white, axes=(1, 2), norm="ortho") * np.sqrt(s)[None, :, :, None]
  return np.real(np.fft.ifft2(shaped, axes=(1, 2), norm="ortho"))


def test_split_is_an_orthogonal_decomposition():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, SIZE, SIZE, 2))
  low, high = frequency.split(x, 0.3)
  np.testing.assert_allclose(low + high, x, atol=1e-12)
  assert abs(np.sum(low * high)) < 1e-9 * np.sum(x * x)
  # A cosine at 1/8 cycles per pixel (0.25 Nyquist) is low for cutoff 0.3, high for cutoff 0.2.
  yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  wave = np.cos(2 * np.pi * xx / 8)[None, :, :, None]
  np.testing.assert_allclose(frequency.split(wave, 0.3)[0], wave, atol=1e-12)
  np.testing.assert_allclose(frequency.split(wave, 0.2)[1], wave, atol=1e-12)
  with pytest.raises(ValueError, match="cutoff"):
    frequency.radial_mask(4, 4, -1)


def test_band_snr_of_a_gaussian_field_matches_the_formula():
  rng = np.random.default_rng(1)
  s, cutoff = spectrum(SIZE), 0.25
  mask = frequency.radial_mask(SIZE, SIZE, cutoff)
  p_true = np.array([s[mask].mean(), s[~mask].mean()])
  x0 = gaussian_field(rng, 2000, s)
  p_est = np.array(frequency.band_power(x0, cutoff))
  np.testing.assert_allclose(p_est, p_true, rtol=0.03)
  alphas = np.cumprod(1.0 - betas_lib.linear_betas(1000))
  for t in (50, 300, 600):
    a = alphas[t]
    noise = rng.standard_normal(x0.shape)
    # Empirical per-band SNR of x_t: band energy of the signal part over that of the noise part.
    sig_low, sig_high = frequency.split(np.sqrt(a) * x0, cutoff)
    noi_low, noi_high = frequency.split(np.sqrt(1 - a) * noise, cutoff)
    measured = np.array([np.sum(sig_low**2) / np.sum(noi_low**2), np.sum(sig_high**2) / np.sum(noi_high**2)])
    expected = a * p_true / (1 - a)
    np.testing.assert_allclose(frequency.band_snr([a], p_true)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(measured, expected, rtol=0.05)


def test_crossing_step_and_forward_statistics():
  alphas = np.cumprod(1.0 - betas_lib.linear_betas(1000))
  t, a_cross = frequency.crossing_step(alphas, 3.0)
  assert a_cross == 0.25 and alphas[t] <= 0.25 < alphas[t - 1]
  assert frequency.crossing_step(alphas, 1e9)[0] == 1000
  rng = np.random.default_rng(2)
  x0 = gaussian_field(rng, 16, spectrum(SIZE))
  stats = frequency.forward_statistics(x0, alphas, 0.25, rng, timesteps=[0, 500, 999])
  # Low band crosses later than the high band; the high/low norm ratio grows along the forward process.
  assert stats["cross_low"] > stats["cross_high"]
  assert stats["ratio"][0] < stats["ratio"][1] < stats["ratio"][2]
