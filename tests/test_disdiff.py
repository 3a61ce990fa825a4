"""DisDiff training pieces on a tiny pixel-space model: only the encoder, the decoder copy and the factor
embeddings receive gradients; manipulation and baseline helpers; bad configuration errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdpm.disentangle import losses
from jdpm.disentangle.encoder import FactorEncoder
from jdpm.disentangle.shift_unet import FROZEN_UNET_PATTERNS, ShiftUNet
from jdpm.training import freeze
from tests.random_weights import random_like, random_variables


def test_only_encoder_decoder_and_embeddings_receive_gradients():
  """Differentiating the full loss w.r.t. every parameter: the frozen denoiser gets exactly zero gradient
  (it runs under stop_gradient), every encoder, decoder-copy and embedding parameter a non-zero one."""
  unet = ShiftUNet(model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), num_heads=1,
                   latent_unit=2, repre_emb_channels=4, norm_groups=4)
  enc = FactorEncoder(width=8, latent_unit=2, factor_dim=4)
  x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  t = jnp.array([100, 700])
  unet_params = random_variables(unet, x, t, jnp.zeros((2, 8)), seed=1, scale=0.2)["params"]
  enc_shapes = jax.eval_shape(enc.init, jax.random.PRNGKey(2), x)
  enc_params = random_like(enc_shapes["params"], 2, 0.2)
  stats = {"batch_stats": jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), enc_shapes["batch_stats"])}
  noise = jnp.asarray(np.random.RandomState(5).randn(*x.shape), jnp.float32)
  sched = losses.LDMSchedule.linear()

  def total(unet_params, enc_params):
    frozen_params = jax.lax.stop_gradient(enc_params)
    loss, _ = losses.disdiff_loss(lambda *a: unet.apply({"params": unet_params}, *a),
                                  lambda img: enc.apply({"params": enc_params, **stats}, img),
                                  lambda img: enc.apply({"params": frozen_params, **stats}, img),
                                  x, x, t, noise, jnp.array([1, 0]), sched)
    return loss

  g_unet, g_enc = jax.jit(jax.grad(total, argnums=(0, 1)))(unet_params, enc_params)
  trainable, frozen = freeze.split({"unet": g_unet}, FROZEN_UNET_PATTERNS)
  assert jax.tree_util.tree_leaves(frozen) and all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(frozen))
  trained = freeze.flatten_dict(trainable["unet"])
  assert {k[0] for k in trained} == {"shift_middle_block", "shift_output_blocks_0", "shift_output_blocks_1",
                                     "shift_out_norm", "shift_out_conv", "repre_embed", "part_emb", "part_latents"}
  assert all(float(jnp.abs(g).max()) > 0.0 for g in trained.values())
  assert all(float(jnp.abs(g).max()) > 0.0 for g in jax.tree_util.tree_leaves(g_enc))


def test_bad_loss_configuration():
  with pytest.raises(ValueError, match="weight_type"):
    losses.disdiff_loss(None, None, None, None, None, None, None, None, None, weight_type="X")
  with pytest.raises(ValueError, match="beta_start"):
    losses.LDMSchedule.linear(1000, 0.02, 0.01)


def test_zero_decoder_output_gives_finite_gradients():
  """At initialisation G = 0, so the two encodings coincide: the norm's gradient must be 0, not NaN."""
  z = jnp.ones((2, 3, 4))
  g = jax.grad(lambda a: jnp.sum(losses.disentangling_terms(z, a, jnp.zeros_like(z), jnp.array([0, 2]))["ce_deta"]))(z)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_swap_factor_and_ddim_timesteps():
  from jdpm.disentangle import manipulate
  src = jnp.arange(12.0).reshape(2, 6)  # 3 factors x 2 dims
  tgt = -jnp.arange(12.0).reshape(2, 6)
  swapped = np.asarray(manipulate.swap_factor(src, tgt, 1, 3))
  np.testing.assert_array_equal(swapped[:, 2:4], np.asarray(tgt)[:, 2:4])
  np.testing.assert_array_equal(np.delete(swapped, [2, 3], axis=1), np.delete(np.asarray(src), [2, 3], axis=1))
  np.testing.assert_array_equal(manipulate.ddim_timesteps(1000, 4), [1, 251, 501, 751])  # the official "uniform"
  with pytest.raises(ValueError, match="DDIM steps"):
    manipulate.ddim_timesteps(1000, 0)


def test_factor_vae_permutation_keeps_each_dimension_marginal():
  from jdpm.disentangle import baselines
  z = jnp.arange(40.0).reshape(8, 5)
  perm = np.asarray(baselines._permute_dims(z, jax.random.PRNGKey(0)))
  for j in range(5):
    assert sorted(perm[:, j]) == sorted(np.asarray(z)[:, j])
  assert not np.array_equal(perm, np.asarray(z))
