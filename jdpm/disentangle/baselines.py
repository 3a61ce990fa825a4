"""beta-VAE and FactorVAE baselines (small convolutional VAEs), as disentanglement_lib trains them.

- beta-VAE (Higgins et al., 2017): Bernoulli reconstruction (sigmoid cross-entropy summed over pixels,
  images in [0, 1]) + beta * KL(q(z|x) || N(0, I)), both per example, batch mean.
- FactorVAE (Kim & Mnih, 2018): reconstruction + KL + gamma * total-correlation estimate
  mean(D(z)[:, 0] - D(z)[:, 1]) from a discriminator D trained to tell q(z) samples from their per-dimension
  batch permutation (softmax cross-entropy, 1/2 weight each), alternating with the VAE on the same batch;
  Adam (beta1 0.5, beta2 0.9) for D, as the library.
The representation scored by the metrics is the posterior mean.

Networks are scaled down for the CPU budget: 3 stride-2 convolutions (32, 32, 64 channels), a 128-unit
dense layer, a latent of `latent_dim`; the discriminator is 2 x 256 units (the library: 6 x 1000).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm


class ConvVAE(nn.Module):
  """x (B, H, W, C) in [0, 1], H = W divisible by 8 -> (reconstruction logits, mean, log variance, z)."""
  latent_dim: int = 10

  def setup(self):
    self.enc = [nn.Conv(f, (4, 4), strides=2, padding=((1, 1), (1, 1))) for f in (32, 32, 64)]
    self.enc_dense = nn.Dense(128)
    self.enc_out = nn.Dense(2 * self.latent_dim)
    self.dec_dense = nn.Dense(128)

  def encode(self, x):
    h = x
    for conv in self.enc:
      h = nn.relu(conv(h))
    h = nn.relu(self.enc_dense(h.reshape(h.shape[0], -1)))
    mean, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
    return mean, logvar

  @nn.compact
  def decode(self, z, shape):
    h, w, c = shape
    g = nn.relu(self.dec_dense(z))
    g = nn.relu(nn.Dense((h // 8) * (w // 8) * 64)(g)).reshape(z.shape[0], h // 8, w // 8, 64)
    for f in (32, 32):
      g = nn.relu(nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME")(g))
    return nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME")(g)

  def __call__(self, x, key):
    mean, logvar = self.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return self.decode(z, x.shape[1:]), mean, logvar, z


class Discriminator(nn.Module):
  @nn.compact
  def __call__(self, z):
    for _ in range(2):
      z = nn.leaky_relu(nn.Dense(256)(z), 0.2)
    return nn.Dense(2)(z)


def _vae_terms(logits, x, mean, logvar):
  recon = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=(1, 2, 3))
  kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - logvar - 1, axis=1)
  return recon, kl


def _permute_dims(z, key):
  """Each latent dimension shuffled independently across the batch (samples of prod_j q(z_j))."""
  keys = jax.random.split(key, z.shape[1])
  return jnp.stack([jax.random.permutation(k, z[:, j]) for j, k in enumerate(keys)], axis=1)


def train_vae(images01, kind="beta_vae", latent_dim=10, steps=1500, batch_size=64, lr=1e-3, beta=4.0, gamma=10.0,
              seed=0, progress=True):
  """Trains a beta-VAE (`kind="beta_vae"`) or FactorVAE (`"factor_vae"`) on images in [0, 1].

  Returns (model, params, last metrics dict).
  """
  if kind not in ("beta_vae", "factor_vae"):
    raise ValueError(f"kind must be 'beta_vae' or 'factor_vae'; got {kind!r}.")
  if images01.shape[1] % 8 or images01.shape[2] % 8:
    raise ValueError(f"ConvVAE needs image sides divisible by 8; got {images01.shape[1:3]}.")
  model, disc = ConvVAE(latent_dim), Discriminator()
  key = jax.random.PRNGKey(seed)
  k_init, k_disc, key = jax.random.split(key, 3)
  x_init = jnp.asarray(images01[:2])
  params = jax.jit(model.init)(k_init, x_init, k_init)["params"]
  d_params = disc.init(k_disc, jnp.zeros((2, latent_dim)))["params"]
  opt, d_opt = optax.adam(lr), optax.adam(1e-4, b1=0.5, b2=0.9)
  opt_state, d_opt_state = opt.init(params), d_opt.init(d_params)

  def vae_loss(params, d_params, x, key):
    logits, mean, logvar, z = model.apply({"params": params}, x, key)
    recon, kl = _vae_terms(logits, x, mean, logvar)
    if kind == "beta_vae":
      return jnp.mean(recon + beta * kl), (z, jnp.mean(recon), jnp.mean(kl), 0.0)
    d_logits = disc.apply({"params": d_params}, z)
    tc = jnp.mean(d_logits[:, 0] - d_logits[:, 1])
    return jnp.mean(recon + kl) + gamma * tc, (z, jnp.mean(recon), jnp.mean(kl), tc)

  def disc_loss(d_params, z, key):
    z_perm = _permute_dims(z, key)
    lp_true = jax.nn.log_softmax(disc.apply({"params": d_params}, z))
    lp_perm = jax.nn.log_softmax(disc.apply({"params": d_params}, z_perm))
    return -jnp.mean(0.5 * lp_true[:, 0] + 0.5 * lp_perm[:, 1])

  @jax.jit
  def step(params, d_params, opt_state, d_opt_state, x, key):
    k_vae, k_perm = jax.random.split(key)
    (loss, (z, recon, kl, tc)), grads = jax.value_and_grad(vae_loss, has_aux=True)(params, d_params, x, k_vae)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if kind == "factor_vae":
      d_grads = jax.grad(disc_loss)(d_params, jax.lax.stop_gradient(z), k_perm)
      d_updates, d_opt_state = d_opt.update(d_grads, d_opt_state, d_params)
      d_params = optax.apply_updates(d_params, d_updates)
    return params, d_params, opt_state, d_opt_state, (loss, recon, kl, tc)

  rng = np.random.RandomState(seed)
  for i in tqdm(range(steps), desc=kind, disable=not progress):
    idx = rng.randint(len(images01), size=batch_size)
    params, d_params, opt_state, d_opt_state, metrics = step(params, d_params, opt_state, d_opt_state,
                                                             jnp.asarray(images01[idx]), jax.random.fold_in(key, i))
  return model, params, dict(zip(("loss", "recon", "kl", "tc"), map(float, metrics)))


def posterior_means(model, params, images01, batch_size=256):
  """The representation: posterior means (num_images, latent_dim)."""
  enc = jax.jit(lambda x: model.apply({"params": params}, x, method=model.encode)[0])
  return np.concatenate([np.asarray(enc(jnp.asarray(images01[i:i + batch_size])))
                         for i in range(0, len(images01), batch_size)])
