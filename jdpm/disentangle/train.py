"""DisDiff end to end on built-in ground-truth-factor data: pre-train the DPM, train DisDiff on top of it,
score the representation, and write manipulation grids.

  python -m jdpm.disentangle.train --config=configs/disdiff.py:shapes3d_tiny --workdir=runs/disdiff

writes `<workdir>/manipulation_factor<c>.png` (one grid per learned factor), `<workdir>/metrics.json` and
`<workdir>/dpm.msgpack` / `disdiff.msgpack` (parameters). A pre-trained DPM already in the workdir is reused.

Stages (each a jitted update step; Adam):
1. pre-training: the ShiftUNet's denoiser alone (`ShiftUNet.eps`), eps-prediction MSE, uniform t;
2. DisDiff: the denoiser frozen (`FROZEN_UNET_PATTERNS`, split off with `jdpm.training.freeze`), the
   encoder (train-mode BatchNorm, as the official run), decoder copy and factor embeddings trained with
   `losses.disdiff_loss`; the frozen encoder copy of the disentangling loss is the current encoder in eval
   mode with its parameters under stop_gradient.
"""

import functools
import json
import os
import pathlib
import sys
import time

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jdpm import huge_pages
from jdpm.data import factors as factor_data
from jdpm.data import storage
from jdpm.disentangle import losses, manipulate
from jdpm.disentangle.encoder import FactorEncoder
from jdpm.disentangle.shift_unet import FROZEN_UNET_PATTERNS, ShiftUNet
from jdpm.eval import disentanglement as dis
from jdpm.training import freeze


def build(config, channels):
  unet = ShiftUNet(in_channels=channels, out_channels=channels, latent_unit=config.latent_unit,
                   repre_emb_channels=config.factor_dim, **config.unet)
  encoder = FactorEncoder(width=config.encoder.width, latent_unit=config.latent_unit, factor_dim=config.factor_dim)
  sched = losses.LDMSchedule.linear(**config.schedule)
  return unet, encoder, sched


def load_images(name, image_size=None, cache_dir=None):
  """The source and all images of the (downscaled) data set in index order, in [-1, 1].

  Rendered once and cached as `<data dir>/factors/<name>.npy` (the data dir of `jdpm.data.storage`).
  """
  source = factor_data.make_source(name, image_size)
  if source.num_images > 50_000:
    raise ValueError(f"{name} has {source.num_images} images; the trainer holds the whole set in "
                     "memory: use a downscaled variant (e.g. shapes3d/tiny).")
  path = pathlib.Path(storage.resolve_data_dir(cache_dir)) / "factors" / f"{name.replace('/', '_')}_{source.image_size}.npy"
  expected = (source.num_images, source.image_size, source.image_size, source.channels)
  if path.exists() and np.load(path, mmap_mode="r").shape == expected:
    images = np.load(path)
  else:
    images = source.all_images()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, images)
  return source, images * 2.0 - 1.0


def _batches(rng, num_images, batch_size):
  while True:
    for idx in np.array_split(rng.permutation(num_images), max(1, num_images // batch_size)):
      yield idx[:batch_size]


def _key(config, channels):
  """Cache key of the compiled steps: everything but the seed."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = 0
  return (config.to_json(), channels)


@functools.lru_cache(maxsize=8)
def _pretrain_step(key):
  """The jitted pre-training update of a config (cached: seeds of one run share one compilation)."""
  config, channels = ml_collections.ConfigDict(json.loads(key[0])), key[1]
  unet, _, sched = build(config, channels)
  opt = optax.adam(config.pretrain.lr)

  @jax.jit
  def step(params, opt_state, x0, rng):
    kt, kn = jax.random.split(rng)
    t = jax.random.randint(kt, (x0.shape[0],), 0, sched.num_timesteps)
    noise = jax.random.normal(kn, x0.shape)
    x_t = sched.q_sample(x0, t, noise)
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((unet.apply({"params": p}, x_t, t, method=unet.eps) - noise) ** 2))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return unet, opt, step


def _init_unet(unet, config, images, rng):
  b = min(2, len(images))
  return jax.jit(unet.init)(rng, jnp.asarray(images[:b]), jnp.zeros((b,), jnp.int32),
                            jnp.zeros((b, config.latent_unit * config.factor_dim)))["params"]


def pretrain_dpm(config, images, seed=0, progress=True):
  """Trains the ShiftUNet's denoiser (eps MSE, uniform t) and returns (full UNet parameters, last loss)."""
  unet, opt, step = _pretrain_step(_key(config, images.shape[-1]))
  params = _init_unet(unet, config, images, jax.random.PRNGKey(seed))
  opt_state = opt.init(params)
  rng = np.random.RandomState(seed)
  key = jax.random.PRNGKey(seed + 1)
  batches = _batches(rng, len(images), config.pretrain.batch_size)
  loss = jnp.nan
  for i in tqdm(range(config.pretrain.steps), desc="pre-train DPM", disable=not progress):
    params, opt_state, loss = step(params, opt_state, jnp.asarray(images[next(batches)]), jax.random.fold_in(key, i))
  return params, float(loss)


@functools.lru_cache(maxsize=8)
def _disdiff_step(key):
  """The jitted DisDiff update of a config (cached like `_pretrain_step`)."""
  config, channels = ml_collections.ConfigDict(json.loads(key[0])), key[1]
  unet, encoder, sched = build(config, channels)
  c = config.disdiff
  opt = optax.adam(c.lr)

  def loss_fn(trainable, frozen, batch_stats, x0, t, noise, concept):
    params = freeze.merge({"unet": trainable["unet"]}, frozen)["unet"]
    enc_params = trainable["encoder"]
    new_stats = {}

    def encode(img):  # train-mode BatchNorm, running statistics updated
      out, updated = encoder.apply({"params": enc_params, "batch_stats": batch_stats}, img, train=True,
                                   mutable=["batch_stats"])
      new_stats.update(updated)
      return out

    frozen_encode = lambda img: encoder.apply(
        {"params": jax.lax.stop_gradient(enc_params), "batch_stats": batch_stats}, img)
    loss, terms = losses.disdiff_loss(lambda *a: unet.apply({"params": params}, *a), encode, frozen_encode,
                                      x0, x0, t, noise, concept, sched, dis_weight=c.dis_weight,
                                      weight_type=c.weight_type)
    return loss, (new_stats["batch_stats"], jnp.mean(terms["loss_simple"]), jnp.mean(terms["dis_loss"]))

  @jax.jit
  def step(trainable, frozen, batch_stats, opt_state, x0, rng):
    kt, kn, kc = jax.random.split(rng, 3)
    t = jax.random.randint(kt, (x0.shape[0],), 0, sched.num_timesteps)
    noise = jax.random.normal(kn, x0.shape)
    concept = jax.random.randint(kc, (x0.shape[0],), 0, config.latent_unit)
    (loss, (stats, simple, dis_l)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, frozen, batch_stats, x0, t, noise, concept)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), stats, opt_state, (loss, simple, dis_l)

  return unet, encoder, opt, step


def train_disdiff(config, images, unet_params, seed=0, progress=True):
  """DisDiff on a pre-trained denoiser. Returns (UNet parameters with the trained decoder, encoder
  variables, last loss terms)."""
  unet, encoder, opt, step = _disdiff_step(_key(config, images.shape[-1]))
  key = jax.random.PRNGKey(seed)
  k_unet, k_enc, key = jax.random.split(key, 3)
  # A fresh decoder copy and embeddings (as the official code: only the denoiser comes from the checkpoint).
  trainable, _ = freeze.split({"unet": _init_unet(unet, config, images, k_unet)}, FROZEN_UNET_PATTERNS)
  _, frozen = freeze.split({"unet": unet_params}, FROZEN_UNET_PATTERNS)
  enc_vars = jax.jit(encoder.init)(k_enc, jnp.asarray(images[:2]))
  trainable["encoder"] = enc_vars["params"]
  batch_stats = enc_vars["batch_stats"]
  opt_state = opt.init(trainable)
  rng = np.random.RandomState(seed)
  batches = _batches(rng, len(images), config.disdiff.batch_size)
  metrics = (jnp.nan,) * 3
  for i in tqdm(range(config.disdiff.steps), desc="DisDiff", disable=not progress):
    trainable, batch_stats, opt_state, metrics = step(trainable, frozen, batch_stats, opt_state,
                                                      jnp.asarray(images[next(batches)]), jax.random.fold_in(key, i))
  unet_params = freeze.merge({"unet": trainable["unet"]}, frozen)["unet"]
  enc_vars = {"params": trainable["encoder"], "batch_stats": batch_stats}
  return unet_params, enc_vars, dict(zip(("loss", "loss_simple", "dis_loss"), map(float, metrics)))


def encode_all(encoder, enc_vars, images, batch_size=256):
  """Codes (num_images, N, f) of every image (eval-mode encoder)."""
  apply = jax.jit(lambda x: encoder.apply(enc_vars, x))
  codes = np.concatenate([np.asarray(apply(jnp.asarray(images[i:i + batch_size])))
                          for i in range(0, len(images), batch_size)])
  return codes.reshape(len(images), encoder.latent_unit, encoder.factor_dim)


def score(source, codes, eval_config, seed=0):
  """FactorVAE score, DCI and MIG of precomputed codes (num_images, num_codes) on `source`, with the
  DisDiff protocol (metric observations are data-set indices; RandomState(seed) for each metric)."""
  indexed = dis.IndexedCodes(source, codes)
  fv = dis.compute_factor_vae(indexed, indexed.representation, np.random.RandomState(seed),
                              num_train=eval_config.factor_vae_train, num_eval=eval_config.factor_vae_eval,
                              num_variance_estimate=eval_config.factor_vae_variance)
  dci = dis.compute_dci(indexed, indexed.representation, np.random.RandomState(seed),
                        num_train=eval_config.dci_train, num_test=eval_config.dci_test)
  mig = dis.compute_mig(indexed, indexed.representation, np.random.RandomState(seed), num_train=eval_config.dci_train)
  return {"factor_vae": fv["eval_accuracy"], "dci_disentanglement": dci["disentanglement"],
          "dci_completeness": dci["completeness"], "dci_informativeness": dci["informativeness_test"],
          "mig": mig["discrete_mig"]}


def run(config, workdir, progress=True):
  """All stages; returns the metrics dict (also written to workdir/metrics.json)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  source, images = load_images(config.data.name, config.data.image_size)
  unet, encoder, sched = build(config, images.shape[-1])
  timings = {}
  dpm_path = workdir / "dpm.msgpack"
  start = time.time()
  if dpm_path.exists():
    template = jax.eval_shape(unet.init, jax.random.PRNGKey(0), images[:1], jnp.zeros((1,), jnp.int32),
                              jnp.zeros((1, config.latent_unit * config.factor_dim)))["params"]
    unet_params = flax.serialization.from_bytes(template, dpm_path.read_bytes())
  else:
    unet_params, _ = pretrain_dpm(config, images, config.seed, progress)
    dpm_path.write_bytes(flax.serialization.to_bytes(unet_params))
  timings["pretrain_s"] = time.time() - start
  start = time.time()
  unet_params, enc_vars, last = train_disdiff(config, images, unet_params, config.seed, progress)
  timings["disdiff_s"] = time.time() - start
  (workdir / "disdiff.msgpack").write_bytes(flax.serialization.to_bytes({"unet": unet_params, "encoder": enc_vars}))
  codes = encode_all(encoder, enc_vars, images)
  metrics = score(source, dis.disdiff_codes(codes), config.eval, config.seed)
  rng = np.random.RandomState(config.seed)
  pairs = rng.choice(len(images), size=(config.manipulate.pairs, 2), replace=False)
  paths = manipulate.write_grids(unet, {"params": unet_params}, sched, images, codes.reshape(len(images), -1),
                                 pairs, workdir, steps=config.manipulate.ddim_steps)
  result = {"config": config.data.name, **metrics, "last_losses": last, **timings,
            "grids": [os.fspath(p) for p in paths]}
  (workdir / "metrics.json").write_text(json.dumps(result, indent=1))
  return result


def main(argv):
  del argv
  from absl import flags
  try:
    result = run(flags.FLAGS.config, flags.FLAGS.workdir)
  except (FileNotFoundError, ValueError) as e:  # a bad config or path: one line, no traceback
    sys.exit(f"jdpm.disentangle.train: {e}")
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "e.g. configs/disdiff.py:shapes3d_tiny", lock_config=False)
  flags.DEFINE_string("workdir", None, "output directory (grids, metrics, parameters)")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
