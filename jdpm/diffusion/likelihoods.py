"""Gaussian KL divergences and the discretised-Gaussian image likelihood used by the variational bound."""

import math

import jax.numpy as jnp

# Half a bin of 8-bit pixel values rescaled to [-1, 1].
_HALF_BIN = 1.0 / 255.0


def mean_flat(x):
  """Mean over every axis but the first: (B, ...) -> (B,)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats; arguments broadcast."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF (the one the DDPM likelihoods were reported with)."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) for 8-bit data in [-1, 1] under a Gaussian integrated over each pixel's bin.

  Every value of x is the centre of a bin of width 2/255; the extreme bins (x < -0.999, x > 0.999) extend
  to -inf / +inf. Probabilities are floored at 1e-12 before the log.

  Args:
    x: the data, any shape, values in [-1, 1].
    means: Gaussian means, shaped like x.
    log_scales: log standard deviations, shaped like x.
  Returns:
    log probabilities in nats, shaped like x.
  """
  if not x.shape == means.shape == log_scales.shape:
    raise ValueError(f"x, means and log_scales must share a shape; got {x.shape}, {means.shape}, "
                     f"{log_scales.shape}.")
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + _HALF_BIN))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - _HALF_BIN))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
