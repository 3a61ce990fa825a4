"""DP-IR pieces: degradations against PIL / scipy, the Bayer layout, the jump on analytic Gaussian data,
exact NFE counts, the fusion module's size, and one-line errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jdpm.data import clean_images
from jdpm.diffusion import GaussianDiffusion, linear_betas
from jdpm.restoration import classical, degradations, networks, sampler


def _image(h=32, w=36, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _pil_resize(x, height, width):
  return np.stack([np.asarray(Image.fromarray(x[..., c], mode="F").resize((width, height), Image.BICUBIC))
                   for c in range(x.shape[-1])], axis=-1)


def test_bicubic_equals_pil_down_and_up():
  x = _image()
  down = np.asarray(degradations.downsample(jnp.asarray(x), 4))
  np.testing.assert_allclose(down, _pil_resize(x, 8, 9), atol=1e-6)
  up = np.asarray(degradations.upsample(jnp.asarray(x[:8, :8]), 4))
  np.testing.assert_allclose(up, _pil_resize(x[:8, :8], 32, 32), atol=1e-6)


def test_blur_equals_scipy_convolution_with_reflected_border():
  x = _image()
  for kernel in (degradations.gaussian_kernel(9, 1.2, 2.0, 0.3), degradations.motion_kernel(9, 6.0, 0.7)):
    assert float(jnp.sum(kernel)) == pytest.approx(1.0, abs=1e-6)
    k = np.asarray(kernel, np.float64)
    expected = np.stack([ndimage.convolve(x[..., c].astype(np.float64), k, mode="reflect") for c in range(3)], -1)
    np.testing.assert_allclose(np.asarray(degradations.blur(jnp.asarray(x), kernel)), expected, atol=1e-6)


def test_bayer_layout_is_rggb():
  x = np.broadcast_to(np.array([1.0, 2.0, 3.0], np.float32), (4, 6, 3))
  m = np.asarray(degradations.bayer_mosaic(jnp.asarray(x)))
  np.testing.assert_array_equal(m[:2, :2], [[1, 2], [2, 3]])
  np.testing.assert_array_equal(m[2:4, 4:6], [[1, 2], [2, 3]])
  packed = np.asarray(degradations.pack_bayer(jnp.asarray(m)))
  np.testing.assert_array_equal(packed[0, 0], [1, 2, 2, 3])


def test_task_shapes_and_replay():
  x = jnp.asarray(np.stack([_image(32, 32, s) for s in range(2)]))
  for name, shape in (("sr", (2, 8, 8, 3)), ("deblur", (2, 32, 32, 3)), ("burst", (2, 4, 8, 8))):
    task = degradations.create(name)
    params = task.sample(jax.random.PRNGKey(1), 2)
    apply = jax.jit(lambda x, p, task=task: task.apply(x, p))  # one compilation instead of one per operation
    y = apply(x, params)
    assert y.shape == shape
    again_task, again_params = degradations.replay(degradations.record(task, params))
    assert again_task == task
    np.testing.assert_array_equal(np.asarray(apply(x, again_params)), np.asarray(y))
  burst = degradations.RawBurst().sample(jax.random.PRNGKey(2), 3)
  assert np.all(np.asarray(burst["shift"])[:, 0] == 0) and np.all(np.asarray(burst["angle"])[:, 0] == 0)


def test_wiener_beats_the_blurred_input():
  x = jnp.asarray(clean_images.texture(100, 32)[None])
  task = degradations.Deblur(noise_sigma=0.005)
  params = {"kernel": degradations.gaussian_kernel(9, 1.5)[None],
            "noise_key": jax.random.split(jax.random.PRNGKey(0), 1)}
  y = task.apply(x, params)
  err = lambda a: float(jnp.mean((a - x) ** 2))
  assert err(classical.wiener(y, params["kernel"], 0.005)) < err(y)


# -- the jump ---------------------------------------------------------------------------------------

def _abar(n=100):
  return np.cumprod(1.0 - linear_betas(n))


@pytest.mark.parametrize("tau", [0, 24, 60])
def test_jump_equals_chained_posteriors_exactly(tau):
  """x_T ~ N(m, v) (Gaussian data), x0 fixed: propagate mean and variance through the DDPM posteriors
  of GaussianDiffusion step by step from T = N-1 to tau and compare with the closed-form jump."""
  n = 100
  diffusion = GaussianDiffusion.from_betas(linear_betas(n), var_type="fixed_small")
  x0, m, v = 0.7, -0.3, 1.3
  mean, var = m, v
  for k in range(n - 1, tau, -1):  # q(x_{k-1} | x_k, x0)
    c1, c2 = diffusion.posterior_mean_coef1[k], diffusion.posterior_mean_coef2[k]
    mean, var = c1 * x0 + c2 * mean, c2 ** 2 * var + diffusion.posterior_variance[k]
  abar = diffusion.alphas_cumprod
  a, b, s2 = (np.float64(c) for c in sampler.jump_moments(np.float64(abar[n - 1]), np.float64(abar[tau])))
  assert a * x0 + b * m == pytest.approx(mean, rel=1e-9, abs=1e-12)
  assert b ** 2 * v + s2 == pytest.approx(var, rel=1e-9)


def test_jump_samples_match_closed_form_and_stepwise_chain_monte_carlo():
  abar = _abar()
  n, tau, count = 100, 24, 200_000
  x0, m, v = 0.4, 0.2, 0.8
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x_T = m + np.sqrt(v) * jax.random.normal(k1, (count,))
  jumped = sampler.jump(x_T, x0, abar[n - 1], abar[tau], jax.random.normal(k2, (count,)))
  x = x_T  # the same chain step by step with the reverse step (eta = 1) and x0_hat = x0
  for k, key in zip(range(n - 1, tau, -1), jax.random.split(k3, n - 1 - tau)):
    x = sampler.reverse_step(x, x0, abar[k], abar[k - 1], jax.random.normal(key, (count,)))
  a, b, s2 = sampler.jump_moments(abar[n - 1], abar[tau])
  mean, var = a * x0 + b * m, b ** 2 * v + s2
  for samples in (jumped, x):
    se = np.sqrt(var / count)
    assert abs(float(jnp.mean(samples)) - mean) < 5 * se
    assert abs(float(jnp.var(samples)) / var - 1) < 5 * np.sqrt(2 / count)


def test_one_reverse_step_is_the_ddpm_posterior():
  diffusion = GaussianDiffusion.from_betas(linear_betas(50), var_type="fixed_small")
  x_t, x0 = jnp.linspace(-1, 1, 7)[None], jnp.linspace(0.5, -0.5, 7)[None]
  t = 30
  mean, var, _ = diffusion.q_posterior_mean_variance(x0, x_t, jnp.array([t]))
  abar = diffusion.alphas_cumprod
  np.testing.assert_allclose(sampler.reverse_step(x_t, x0, abar[t], abar[t - 1], jnp.zeros_like(x_t)), mean,
                             rtol=1e-5, atol=1e-6)
  ones = jnp.ones_like(x_t)
  spread = sampler.reverse_step(x_t, x0, abar[t], abar[t - 1], ones) - mean
  np.testing.assert_allclose(spread ** 2, var * ones, rtol=1e-4)


def test_nfe_counts_are_exact():
  n = 100
  assert sampler.nfe(n) == 100
  assert sampler.nfe(n, tau=24) == 25                      # 4x fewer than the full chain
  assert sampler.nfe(n, steps=20) == 20
  assert sampler.nfe(n, steps=20, tau=24) == len([s for s in sampler.ladder(n, 20) if s <= 24])
  n, abar = 40, _abar(40)  # a shorter process for the counted runs (eager Python loops)
  calls = []

  def x0_fn(x, t):
    calls.append(int(t))
    return jnp.zeros_like(x)

  for steps, tau in ((None, None), (None, 9), (8, None), (8, 9), (4, 0)):
    calls.clear()
    _, reported = sampler.sample(x0_fn, abar, jnp.ones((1, 4)), jax.random.PRNGKey(0), steps=steps, tau=tau,
                                 x0_jump=jnp.zeros((1, 4)), scan=False)
    assert len(calls) == reported == sampler.nfe(n, steps, tau)
    assert calls == sorted(calls, reverse=True) and calls[-1] == 0 and (tau is None or calls[0] <= tau)


def test_sampler_returns_the_fixed_point_of_a_constant_estimate():
  target = jnp.full((2, 3), 0.25)
  out, _ = sampler.sample(lambda x, t: target, _abar(), jnp.ones((2, 3)), jax.random.PRNGKey(0), steps=10, tau=50,
                          x0_jump=target)
  np.testing.assert_allclose(out, target)


def test_fusion_module_has_about_0_7_million_parameters():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  shapes = jax.eval_shape(networks.FusionNet().init, jax.random.PRNGKey(0), x, x, t)
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
  assert 600_000 <= count <= 800_000, count


# -- bad input ----------------------------------------------------------------------------------------

def test_bad_inputs_give_one_clear_message():
  with pytest.raises(ValueError, match="smaller than the 32x32 patch"):
    clean_images.patches(np.zeros((16, 40, 3), np.float32), 32)
  with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
    degradations.SuperResolution().apply(jnp.zeros((1, 32, 32, 4)),
                                         {"noise_key": jax.random.split(jax.random.PRNGKey(0), 1)})
  with pytest.raises(ValueError, match="must sum to 1"):
    degradations.blur(jnp.zeros((1, 8, 8, 3)), np.ones((3, 3)))
  with pytest.raises(ValueError, match="odd side"):
    classical.wiener(jnp.zeros((1, 8, 8, 3)), np.full((2, 2), 0.25))
  with pytest.raises(ValueError, match="not divisible by the scale"):
    degradations.downsample(jnp.zeros((1, 30, 32, 3)), 4)
  with pytest.raises(ValueError, match="unknown restoration task"):
    degradations.create("inpaint")


# -- data ---------------------------------------------------------------------------------------------

def test_builtin_split_is_by_source_image_and_folder_loader_reads_user_images(tmp_path):
  c = clean_images
  train = set(c.TRAIN_SKIMAGE + c.TRAIN_SKLEARN) | {f"t{s}" for s in c.TRAIN_TEXTURE_SEEDS}
  test = set(c.TEST_SKIMAGE + c.TEST_SKLEARN) | {f"t{s}" for s in c.TEST_TEXTURE_SEEDS}
  assert not train & test
  for i, size in enumerate(((40, 70), (64, 33))):
    img = (clean_images.texture(i, 80)[: size[0], : size[1]] * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / f"{i}.png")
  tiles = clean_images.folder_patches(tmp_path, patch=16)
  assert tiles.shape == (2 * 4 + 4 * 2, 16, 16, 3) and tiles.dtype == np.float32
  assert 0.0 <= tiles.min() and tiles.max() <= 1.0
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    clean_images.folder_patches(tmp_path / "empty")
