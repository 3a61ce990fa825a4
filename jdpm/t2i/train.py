"""Trains the built-in text-to-image model: ``python -m jdpm.t2i.train --config tiny --workdir DIR``.

Three short stages on captioned scenes (`jdpm.data.captioned_shapes`), each a small dedicated loop with
jdpm's optimizer (`make_optimizer`), noise schedule and condition dropping (`jdpm.diffusion.conditioning`):
  1. the text encoder, contrastively against a small image tower (CLIP's symmetric InfoNCE on the pooled
     [EOS] embedding), then frozen: the denoiser reads its precomputed last hidden states, as Stable
     Diffusion reads a frozen CLIP's;
  2. the proxy classifier of the scenes' canonical labels (shape, colour, layout, size), on noisy renders;
  3. the denoiser (noise or v prediction, ``config.denoiser.prediction``; 10% of the captions replaced by
     the empty prompt's context for classifier-free guidance), with an EMA of its weights.
Everything is saved with `jdpm.training.checkpoint.Checkpointer` (the frozen text encoder beside the
trained parameters); `jdpm.t2i.bundle.load(DIR)` reads it back.
"""

import argparse
import json
import pathlib
import sys
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jdpm import huge_pages
from jdpm.data import captioned_shapes
from jdpm.diffusion import betas as betas_lib, conditioning, losses
from jdpm.t2i import models
from jdpm.training import checkpoint, optimizers


def _optimizer(lr, steps, warmup=0):
  return optimizers.make_optimizer(ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=lr, schedule="warmup" if warmup else "constant", warmup_steps=warmup,
      weight_decay=0.0, grad_clip=1.0)))


def _loop(name, step_fn, params, opt_state, steps, rng, batch_size, num):
  """Runs `steps` jitted updates on random batches of indices; returns params and the last loss."""
  loss = float("nan")
  for i in tqdm(range(steps), desc=name, mininterval=5.0):
    key = jax.random.fold_in(rng, i)
    idx = jax.random.randint(key, (batch_size,), 0, num)
    params, opt_state, loss = step_fn(params, opt_state, jax.random.fold_in(key, 1), idx)
  return params, float(loss)


def pretrain_text_encoder(config, ids, images, rng):
  """Contrastive pre-training of the text encoder; returns its variables and the final loss."""
  text, tower = models.text_encoder(config), models.ImageTower(config.text_pretrain.embed_dim)
  proj = jax.nn.initializers.lecun_normal()
  k1, k2, k3 = jax.random.split(rng, 3)
  params = {"text": text.init(k1, ids[:2])["params"], "image": tower.init(k2, images[:2])["params"],
            "proj": proj(k3, (config.text.hidden_size, config.text_pretrain.embed_dim)),
            "log_scale": jnp.log(1 / 0.07)}
  tx = _optimizer(config.text_pretrain.lr, config.text_pretrain.steps)
  ids, images = jnp.asarray(ids), jnp.asarray(images)

  def loss_fn(p, idx):
    t = text.apply({"params": p["text"]}, ids[idx])["pooled"] @ p["proj"]
    v = tower.apply({"params": p["image"]}, images[idx])
    t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    logits = jnp.exp(jnp.clip(p["log_scale"], 0, 4.6)) * t @ v.T
    # Identical captions in a batch are positives of each other.
    same = (ids[idx][:, None, :] == ids[idx][None, :, :]).all(-1)
    targets = same / same.sum(-1, keepdims=True)
    return 0.5 * (optax.softmax_cross_entropy(logits, targets).mean() +
                  optax.softmax_cross_entropy(logits.T, targets).mean())

  @jax.jit
  def step(p, opt_state, key, idx):
    del key
    loss, grads = jax.value_and_grad(loss_fn)(p, idx)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  params, loss = _loop("text encoder", step, params, tx.init(params), config.text_pretrain.steps, rng,
                       config.text_pretrain.batch_size, len(ids))
  return {"params": params["text"]}, loss


def train_proxy(config, images, labels, rng):
  """Trains the scene classifier on renders with Gaussian pixel noise; returns its variables."""
  model = models.proxy()
  params = model.init(rng, images[:2])["params"]
  tx = _optimizer(config.proxy.lr, config.proxy.steps)
  images = jnp.asarray(images)
  labels = {k: jnp.asarray(v) for k, v in labels.items()}

  def loss_fn(p, key, idx):
    x = images[idx]
    std = jax.random.uniform(key, (x.shape[0], 1, 1, 1)) * config.proxy.noise_std
    x = x + std * jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    heads = models.split_heads(model.apply({"params": p}, x)[0])
    return sum(optax.softmax_cross_entropy_with_integer_labels(heads[h], labels[h][idx]).mean() for h in heads)

  @jax.jit
  def step(p, opt_state, key, idx):
    loss, grads = jax.value_and_grad(loss_fn)(p, key, idx)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  params, loss = _loop("proxy", step, params, tx.init(params), config.proxy.steps, rng,
                       config.proxy.batch_size, len(images))
  return {"params": params}, loss


def train_denoiser(config, contexts, null_context, images, rng, init_params=None):
  """Trains the UNet on frozen text contexts (B, L, D) to predict config.denoiser.prediction; returns EMA variables.

  prediction "epsilon" regresses the noise, "v" the velocity v = sqrt(abar) eps - sqrt(1 - abar) x0 (at high
  noise v is mostly the image, whose error the sampler does not amplify; see `configs.common.tiny_recipe`).
  With config.denoiser.min_snr_gamma > 0 the per-example losses get the Min-SNR weights of that target
  (`jdpm.diffusion.losses.min_snr_weight`), which favour the high-noise steps that decide the content.
  init_params: continue from these parameters instead of a fresh initialisation."""
  model, d = models.denoiser(config), config.denoiser
  prediction = d.get("prediction", "epsilon")
  if prediction not in ("epsilon", "v"):
    raise ValueError(f"config.denoiser.prediction must be 'epsilon' or 'v'; got {prediction!r}.")
  alphas_cumprod = jnp.asarray(np.cumprod(1.0 - betas_lib.linear_betas(d.num_timesteps)), jnp.float32)
  params = init_params
  if params is None:
    params = model.init(rng, images[:2], jnp.zeros((2,)), contexts[:2])["params"]
  gamma = float(d.get("min_snr_gamma", 0.0))
  tx = _optimizer(d.lr, d.steps, d.warmup_steps)
  images, contexts = jnp.asarray(images), jnp.asarray(contexts)

  def loss_fn(p, key, idx):
    k_t, k_n, k_d = jax.random.split(key, 3)
    x0, context = images[idx], contexts[idx]
    t = jax.random.randint(k_t, (x0.shape[0],), 0, d.num_timesteps)
    noise = jax.random.normal(k_n, x0.shape)
    abar = alphas_cumprod[t][:, None, None, None]
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
    context = conditioning.drop(context, null_context, jax.random.uniform(k_d, (x0.shape[0],)) < d.cond_drop)
    target = noise if prediction == "epsilon" else jnp.sqrt(abar) * noise - jnp.sqrt(1 - abar) * x0
    per_example = jnp.mean((model.apply({"params": p}, x_t, t, context) - target) ** 2, axis=(1, 2, 3))
    if gamma > 0:
      snr = abar[:, 0, 0, 0] / (1 - abar[:, 0, 0, 0])
      per_example = per_example * losses.min_snr_weight(snr, gamma, prediction)
    return jnp.mean(per_example)

  @jax.jit
  def step(state, opt_state, key, idx):
    p, ema = state
    loss, grads = jax.value_and_grad(loss_fn)(p, key, idx)
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    ema = jax.tree.map(lambda e, q: d.ema_decay * e + (1 - d.ema_decay) * q, ema, p)
    return (p, ema), opt_state, loss

  (_, ema), loss = _loop("denoiser", step, (params, params), tx.init(params), d.steps, rng, d.batch_size,
                         len(images))
  return {"params": ema}, loss


def proxy_accuracy(proxy_variables, images, labels, batch=500):
  """{head: accuracy} of the proxy on images in [-1, 1] against canonical labels."""
  model = models.proxy()
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  logits = np.concatenate([np.asarray(apply(proxy_variables, images[i:i + batch]))
                           for i in range(0, len(images), batch)])
  heads = models.split_heads(jnp.asarray(logits))
  return {h: float(np.mean(np.argmax(heads[h], -1) == labels[h])) for h in heads}


def _stage(path, run):
  """(variables, loss) of a finished stage read back from `path`, or run now and kept there (a rerun of
  the command, e.g. with more denoiser steps, does not repeat the text encoder and proxy stages)."""
  if path.is_file():
    stored = flax.serialization.msgpack_restore(path.read_bytes())
    return stored["variables"], float(stored["loss"])
  variables, loss = run()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(flax.serialization.msgpack_serialize(
      {"variables": jax.tree.map(np.asarray, variables), "loss": np.float32(loss)}))
  return variables, loss


def train(config, workdir, init_unet=None):
  """All three stages; saves the checkpoint and a summary.json in workdir and returns the summary.
  init_unet: denoiser parameters to continue from (e.g. a previous run's)."""
  workdir = pathlib.Path(workdir)
  rng = jax.random.key(config.seed)
  tok = models.tokenizer(config)
  raw, captions, labels = captioned_shapes.generate(config.num_train, seed=config.seed, size=config.image_size)
  images = captioned_shapes.to_model_range(raw)
  ids = tok.encode(captions)
  timings, summary = {}, {}
  start = time.time()
  text_vars, summary["text_loss"] = _stage(workdir / "text_encoder.msgpack", lambda: pretrain_text_encoder(
      config, ids, images, jax.random.fold_in(rng, 1)))
  timings["text_s"] = time.time() - start
  start = time.time()
  proxy_vars, summary["proxy_loss"] = _stage(workdir / "proxy.msgpack", lambda: train_proxy(
      config, images, labels, jax.random.fold_in(rng, 2)))
  timings["proxy_s"] = time.time() - start
  test_raw, _, test_labels = captioned_shapes.generate(2000, seed=config.seed + 1, size=config.image_size)
  summary["proxy_test_accuracy"] = proxy_accuracy(proxy_vars, captioned_shapes.to_model_range(test_raw),
                                                  test_labels)
  start = time.time()
  text = models.text_encoder(config)
  encode = jax.jit(lambda v, x: text.apply(v, x)["last_hidden_state"])
  contexts = np.concatenate([np.asarray(encode(text_vars, ids[i:i + 1000])) for i in range(0, len(ids), 1000)])
  null_context = np.asarray(encode(text_vars, tok.empty_ids()))[0]
  unet_vars, summary["denoiser_loss"] = train_denoiser(config, contexts, null_context, images,
                                                       jax.random.fold_in(rng, 3 + (init_unet is not None)),
                                                       init_params=init_unet)
  timings["denoiser_s"] = time.time() - start
  summary["timings"] = timings
  with checkpoint.Checkpointer(workdir / "checkpoints", async_save=False) as ckpt:
    ckpt.save(config.denoiser.steps, {"unet": unet_vars, "proxy": proxy_vars}, frozen={"text": text_vars},
              force=True)
  (workdir / "config.json").write_text(config.to_json(indent=1))
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def main(argv=None):
  from configs import t2i  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="tiny", help="configs/t2i.py variant: tiny (or test)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--denoiser_steps", type=int, default=None, help="override config.denoiser.steps")
  p.add_argument("--min_snr_gamma", type=float, default=None, help="override config.denoiser.min_snr_gamma")
  p.add_argument("--lr", type=float, default=None, help="override config.denoiser.lr")
  p.add_argument("--ema_decay", type=float, default=None, help="override config.denoiser.ema_decay")
  p.add_argument("--batch_size", type=int, default=None, help="override config.denoiser.batch_size")
  p.add_argument("--prediction", choices=("epsilon", "v"), default=None,
                 help="override config.denoiser.prediction (what the denoiser regresses)")
  p.add_argument("--continue_from", default=None,
                 help="a finished workdir: continue its denoiser (its text encoder and proxy are reused)")
  args = p.parse_args(argv)
  try:
    config, init_unet = _setup(t2i, args)
  except (FileNotFoundError, ValueError) as e:  # a bad variant or --continue_from: one line, no traceback
    sys.exit(f"jdpm.t2i.train: {e}")
  print(json.dumps(train(config, args.workdir, init_unet), indent=1))


def _setup(t2i, args):
  """The config with the command line's overrides, and the denoiser to continue from (or None)."""
  config = t2i.get_config(args.config)
  for name in ("denoiser_steps", "min_snr_gamma", "lr", "ema_decay", "batch_size", "prediction"):
    if getattr(args, name) is not None:
      config.denoiser[name.replace("denoiser_", "")] = getattr(args, name)
  init_unet = None
  if args.continue_from:
    source = pathlib.Path(args.continue_from)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stage in ("text_encoder.msgpack", "proxy.msgpack"):
      (workdir / stage).write_bytes((source / stage).read_bytes())
    with checkpoint.Checkpointer(source / "checkpoints") as ckpt:
      init_unet = ckpt.read()[0]["unet"]["params"]
    config.denoiser.warmup_steps = 0
  return config, init_unet


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
