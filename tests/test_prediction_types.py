"""config.diffusion.prediction ("epsilon", "v", "x0"): trained for, and sampled with, the same target.

Analytic check: when every training image is one image x0*, the ideal denoiser of each parameterisation is
known in closed form (eps = (x_t - alpha x0*) / sigma, v = (alpha x_t - x0*) / sigma, x0 = x0*), and every
sampler must return x0* from any x_T. A sampler that read the output as the wrong target would not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from jdpm import diffusion as diffusion_lib
from jdpm import generate, parallel
from jdpm.training import objectives

N = 1000
TARGET = np.linspace(-0.8, 0.8, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)


class OracleDenoiser:
  """The exact denoiser of the one-image data set TARGET, predicting `prediction`'s target."""
  sample_shape = TARGET.shape
  learn_sigma = False
  null_condition = 10

  def __init__(self, prediction):
    self.prediction = prediction
    # Model time t_input in [0, N) is the discrete schedule's continuous time t_input / N + 1 / N.
    self.sched = diffusion_lib.VPSchedule.discrete(diffusion_lib.named_beta_schedule("linear", N))

  def apply(self, variables, x, t, y):
    del variables, y
    t_cont = jnp.asarray(t, jnp.float32) / N + 1.0 / N
    log_alpha = self.sched.marginal_log_mean_coeff(t_cont)[:, None, None, None]
    alpha = jnp.exp(log_alpha)
    sigma = jnp.sqrt(1.0 - alpha**2)
    x0 = jnp.asarray(TARGET)[None]
    if self.prediction == "epsilon":
      return (x - alpha * x0) / sigma
    if self.prediction == "v":
      return (alpha * x - x0) / sigma
    return jnp.broadcast_to(x0, x.shape)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("sampler, steps", [("unipc", 5), ("ddpm", 20)])
def test_each_sampler_reads_the_prediction_it_is_told(prediction, sampler, steps):
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  images = generate.sample_images(OracleDenoiser(prediction), {}, np.zeros(2, np.int32), jax.random.key(0),
                                  sampler=sampler, steps=steps, prediction=prediction, mesh=mesh)
  # The ODE samplers stop at t = 1/N, where the noise level is sqrt(1 - alpha_bar_0) = 0.01: x_T's last trace.
  np.testing.assert_allclose(np.asarray(images), np.broadcast_to(TARGET, images.shape), atol=0.05)
  # Read as noise, the same outputs give something else; except a v model under ddpm, whose last step (at
  # alpha_bar_0 = 0.9999) recovers x0* from a v output read as noise.
  if prediction == "x0" or (prediction == "v" and sampler != "ddpm"):
    wrong = generate.sample_images(OracleDenoiser(prediction), {}, np.zeros(2, np.int32), jax.random.key(0),
                                   sampler=sampler, steps=steps, mesh=mesh)
    assert np.max(np.abs(np.asarray(wrong) - TARGET)) > 0.5


def test_config_prediction_reaches_the_objective_and_the_sampler_options():
  config = dit_config.get_config("tiny")
  assert config.diffusion.prediction == "v"  # the quick-start recipe (see BENCHMARKS.md, first-run quality)
  assert objectives.training_diffusion(config).mean_type == "v"
  assert generate.sample_options(config)["prediction"] == "v"
  config.diffusion.prediction = "epsilon"
  assert objectives.training_diffusion(config).mean_type == "epsilon"
  assert dit_config.get_config("S").diffusion.prediction == "epsilon"  # the paper recipes
  config.diffusion.prediction = "score"
  with pytest.raises(ValueError, match="prediction must be one of epsilon, x0, v"):
    objectives.training_diffusion(config)
  with pytest.raises(ValueError, match="unknown prediction"):
    generate.sample_images(OracleDenoiser("v"), {}, np.zeros(2, np.int32), jax.random.key(0), prediction="score")
