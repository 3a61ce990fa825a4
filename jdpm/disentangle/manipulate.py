"""Factor manipulation with a trained DisDiff model: swap one factor's code between two images and generate.

The conditioned noise prediction is eps_theta(x_t, t) + ddim_coef(t) * sum_c G_c(x_t, t, z) with
ddim_coef = -sqrt(1 - alphabar_t), the official sampler's coefficient (training uses shift_coef instead; see
`losses`). The source image is first inverted to x_T with deterministic DDIM under its own codes (as PDAE and
DisDiff's reconstructions), then x_T is decoded under the codes with factor c taken from the target image.
DDIM timesteps are the official "uniform" ones (every T/steps-th step, plus one).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np


def ddim_timesteps(num_timesteps, steps):
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"DDIM steps must be in 1..{num_timesteps}; got {steps}.")
  return np.arange(0, num_timesteps, num_timesteps // steps)[:steps] + 1


def conditioned_eps(unet, variables, sched, x, t, codes):
  out = unet.apply(variables, x, t, codes)
  return out["pred"] + sched.at("ddim_coef", t) * out["out_grad"]


def ddim_invert_and_decode(unet, variables, sched, x0, codes_invert, codes_decode, steps=50):
  """x0 (B,H,W,C) -> x_T under `codes_invert` (B, N*f) -> a sample under `codes_decode` (B, N*f).
  Deterministic DDIM (eta = 0), both directions on the same timesteps."""
  ts = ddim_timesteps(sched.num_timesteps, steps)
  ts = np.minimum(ts, sched.num_timesteps - 1)
  a = jnp.asarray(sched.alphas_cumprod[ts])
  a_prev = jnp.asarray(np.append(sched.alphas_cumprod[0], sched.alphas_cumprod[ts[:-1]]))
  ts = jnp.asarray(ts)

  def move(x, e, a_from, a_to):
    x0_pred = (x - jnp.sqrt(1 - a_from) * e) / jnp.sqrt(a_from)
    return jnp.sqrt(a_to) * x0_pred + jnp.sqrt(1 - a_to) * e

  def invert(i, x):
    t = jnp.full((x.shape[0],), ts[i])
    return move(x, conditioned_eps(unet, variables, sched, x, t, codes_invert), a_prev[i], a[i])

  def decode(k, x):
    i = len(ts) - 1 - k
    t = jnp.full((x.shape[0],), ts[i])
    return move(x, conditioned_eps(unet, variables, sched, x, t, codes_decode), a[i], a_prev[i])

  x_t = jax.lax.fori_loop(0, len(ts), invert, x0)
  return jax.lax.fori_loop(0, len(ts), decode, x_t)


def swap_factor(codes_source, codes_target, factor, latent_unit):
  """Codes (B, N*f) of the source with factor `factor`'s chunk taken from the target."""
  s = codes_source.reshape(codes_source.shape[0], latent_unit, -1)
  t = codes_target.reshape(codes_target.shape[0], latent_unit, -1)
  return s.at[:, factor].set(t[:, factor]).reshape(codes_source.shape)


def _to_uint8(x):
  x = np.clip((np.asarray(x) + 1) * 127.5, 0, 255).round().astype(np.uint8)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _grid(rows):
  """rows: list of lists of (H,W,3) uint8 -> one image with 2-pixel white gutters."""
  h, w, _ = rows[0][0].shape
  pad = 2
  out = np.full((len(rows) * (h + pad) + pad, len(rows[0]) * (w + pad) + pad, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for c, img in enumerate(row):
      out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
  return out


def write_grids(unet, variables, sched, images, codes, pairs, workdir, steps=50, scale=4):
  """One PNG per factor: rows = (source, target) pairs; columns = source, target, reconstruction (DDIM
  inversion and decoding under the source's own codes), source with factor c from the target.

  images (num_images, H, W, C) in [-1, 1], codes (num_images, N*f), pairs (P, 2) indices.
  Returns the PNG paths.
  """
  import matplotlib.image
  n = unet.latent_unit
  src, tgt = np.asarray(pairs)[:, 0], np.asarray(pairs)[:, 1]
  x0 = jnp.asarray(images[src])
  cs, ct = jnp.asarray(codes[src]), jnp.asarray(codes[tgt])
  # One batch: the reconstruction, then the N swaps, for every pair.
  decode_codes = jnp.concatenate([cs] + [swap_factor(cs, ct, c, n) for c in range(n)])
  x0_all = jnp.tile(x0, (n + 1, 1, 1, 1))
  run = jax.jit(lambda x, ci, cd: ddim_invert_and_decode(unet, variables, sched, x, ci, cd, steps))
  out = np.asarray(run(x0_all, jnp.tile(cs, (n + 1, 1)), decode_codes)).reshape((n + 1, len(src)) + x0.shape[1:])
  up = lambda x: np.repeat(np.repeat(_to_uint8(x), scale, axis=-3), scale, axis=-2)
  paths = []
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  for c in range(n):
    rows = [[up(images[s]), up(images[t]), up(out[0, p]), up(out[c + 1, p])] for p, (s, t) in enumerate(zip(src, tgt))]
    path = pathlib.Path(workdir) / f"manipulation_factor{c}.png"
    matplotlib.image.imsave(path, _grid(rows))
    paths.append(path)
  return paths
