"""Class-conditional generation from a Flax denoiser with any sampler, and image grids.

The glue between `jdpm.models` (Flax) and `jdpm.samplers` / `jdpm.diffusion` (pure functions): it builds the
noise function, places the batch on the mesh and runs one compiled sampling program.
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jdpm import diffusion as diffusion_lib
from jdpm import parallel, samplers

SAMPLERS = ("unipc", "dpm_solver++", "dpm_solver", "ddim", "ddpm")


@functools.lru_cache(maxsize=32)
def _apply_fn(model, amm):
  """model.apply, with the AMM switch only when asked (so models without AMM work).

  Cached: the samplers compile one program per apply function, so the same model must give the same one.
  """
  return functools.partial(model.apply, amm=True) if amm else model.apply


def sample_images(model, variables, labels, rng, *, sampler="unipc", steps=10, order=None, cfg_scale=1.0,
                  cfg_channels=None, guidance_window=None, cfg_scale_pow=None, amm=False, learn_sigma=True,
                  num_timesteps=1000, beta_schedule="linear", clip_denoised=False, mesh=None):
  """Draws one sample per label.

  Args:
    model: a jdpm denoiser (``model.apply(variables, x, t, y)``, NHWC, t in DDPM steps 0..N-1).
    variables: its variables, e.g. ``{"params": state.ema_params}``.
    labels: (B,) int class labels; B must divide over the mesh's devices.
    rng: PRNG key for x_T (and DDPM's per-step noise).
    sampler: "unipc", "dpm_solver++", "dpm_solver", "ddim" (ODE samplers on the discrete VP schedule) or
      "ddpm" (ancestral sampling with the learned variance over `steps` respaced steps).
    steps: model evaluations (ODE samplers) or respaced steps (ddpm).
    order: solver order (default per sampler).
    cfg_scale: classifier-free guidance scale; 1 = conditional only (one model call per step).
    cfg_channels: guide only the first k output channels (the official DiT/EDT scripts use 3 of 4 latent
      channels); None = all.
    guidance_window: (lo, hi) fraction of the steps that are guided (ODE samplers only).
    cfg_scale_pow: MDTv2's power-cosine guidance schedule with this power (ODE samplers only); None:
      a constant scale.
    amm: turn on the Attention Modulation Matrix (EDT and models built with amm_blocks).
    learn_sigma: the model outputs 2C channels (eps and variance).
    num_timesteps, beta_schedule: the training diffusion.
    clip_denoised: keep the data predictions inside [-1, 1], for pixel-space models whose data is bounded:
      dynamic thresholding (ratio 0.995, as DPM-Solver++ for pixel models) for the ODE samplers, clipping
      for ddpm. Early in training a model's noise predictions at high noise are poor, and without this the
      1/alpha amplification of their error saturates the colours. Latent models use False.
    mesh: shard the batch over this mesh (default: all devices).
  Returns:
    (B, H, W, C) float32 samples in the model's data space (images in [-1, 1] for pixel models).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
  mesh = mesh or parallel.make_mesh()
  labels = jnp.asarray(labels, jnp.int32)
  shape = (labels.shape[0], model.input_size, model.input_size, model.in_channels)
  if labels.shape[0] % mesh.size:
    raise ValueError(f"{labels.shape[0]} samples do not split over {mesh.size} devices; "
                     f"use a multiple of {mesh.size}.")
  batch = parallel.batch_sharding(mesh)
  rng_x, rng_steps = jax.random.split(rng)
  x_T = jax.device_put(jax.random.normal(rng_x, shape, jnp.float32), batch)
  labels = jax.device_put(labels, batch)
  apply_fn = _apply_fn(model, amm)
  guided = cfg_scale is not None and cfg_scale != 1.0
  null_label = model.num_classes
  if cfg_channels is not None and cfg_channels < 0:
    cfg_channels = None

  if sampler == "ddpm":
    if cfg_scale_pow is not None or guidance_window is not None:
      raise ValueError("guidance schedules and windows are implemented for the ODE samplers, not ddpm.")
    diffusion = diffusion_lib.create_diffusion(str(steps), noise_schedule=beta_schedule,
                                               diffusion_steps=num_timesteps, learn_sigma=learn_sigma)
    kwargs = dict(variables=variables, y=labels, scale=jnp.float32(cfg_scale))
    return diffusion_lib.ddpm_sample(_ddpm_model_fn(apply_fn, guided, null_label, cfg_channels, learn_sigma),
                                     diffusion, x_T, rng_steps, model_kwargs=kwargs, clip_denoised=clip_denoised)

  betas = diffusion_lib.named_beta_schedule(beta_schedule, num_timesteps)
  sched = diffusion_lib.VPSchedule.discrete(betas)
  noise_fn = samplers.make_noise_fn(
      apply_fn, variables, sched, y=labels, learned_sigma=learn_sigma,
      guidance_scale=cfg_scale if guided else None, null_label=null_label if guided else None,
      guided_channels=cfg_channels, guidance_window=guidance_window if guided else None,
      scale_pow=cfg_scale_pow if guided else None)
  extra = {}
  if clip_denoised:
    if sampler == "dpm_solver":
      raise ValueError("clip_denoised needs data predictions: use dpm_solver++ (or unipc, ddim) instead of dpm_solver.")
    extra = dict(thresholding=True, prediction="data")
  return samplers.sample(noise_fn, sched, x_T, method=sampler, steps=steps, order=order,
                         skip_type="time_uniform", **extra)


@functools.lru_cache(maxsize=None)
def _ddpm_model_fn(apply_fn, guided, null_label, cfg_channels, learn_sigma):
  """model_fn(x, t, variables, y, scale) for `ddpm_sample`, guided on a doubled batch when asked.

  Cached so that repeated calls hand `ddpm_sample` the same static function (one compilation).
  """
  def model_fn(x, t, variables, y, scale):
    if not guided:
      return apply_fn(variables, x, t, y)
    out = apply_fn(variables, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   jnp.concatenate([y, jnp.full_like(y, null_label)]))
    cond, uncond = jnp.split(out, 2)
    c = x.shape[-1]
    k = c if cfg_channels is None else cfg_channels
    eps = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
    # Unguided channels (and the variance channels) come from the conditional pass.
    return jnp.concatenate([eps, cond[..., k:]], axis=-1)
  return model_fn


def to_uint8(images):
  """(B, H, W, C) floats in [-1, 1] -> uint8 (B, H, W, C); with C != 3, the first 3 channels (or grey)."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] >= 3:
    images = images[..., :3]
  else:
    images = np.repeat(images[..., :1], 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images, path, ncol=None):
  """Writes (B, H, W, C) images in [-1, 1] as one PNG grid with a 2-pixel white border."""
  pixels = to_uint8(images)
  b, h, w, _ = pixels.shape
  ncol = ncol or math.ceil(math.sqrt(b))
  nrow = math.ceil(b / ncol)
  grid = np.full((nrow * (h + 2) + 2, ncol * (w + 2) + 2, 3), 255, np.uint8)
  for i in range(b):
    r, c = divmod(i, ncol)
    grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = pixels[i]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(grid).save(path)
  return path


def class_grid_labels(num_samples, num_classes):
  """Labels 0, 1, ..., num_classes-1, 0, 1, ...: with ncol = num_classes, each column is one class."""
  return np.arange(num_samples) % num_classes


def training_sample_grid(trainer, state, step, path):
  """The periodic sample grid of `jdpm.training.trainer.train`, drawn with the EMA parameters."""
  config = trainer.config
  s = config.sample
  num_classes = config.model.num_classes
  labels = class_grid_labels(s.num_samples, num_classes)
  images = sample_images(trainer.model, {"params": state.ema_params}, labels, jax.random.key(config.seed),
                         sampler=s.sampler, steps=s.steps, order=s.order, cfg_scale=s.cfg_scale,
                         cfg_channels=s.cfg_channels, amm=s.get("amm", False),
                         cfg_scale_pow=guidance_power(s), clip_denoised=s.get("clip_denoised", False),
                         learn_sigma=config.model.get("learn_sigma", True),
                         num_timesteps=config.diffusion.num_timesteps,
                         beta_schedule=config.diffusion.beta_schedule, mesh=trainer.mesh)
  images = host_array(images)
  if jax.process_index() == 0:
    save_grid(images, path, ncol=min(num_classes, s.num_samples))


def guidance_power(sample_config):
  """The power of the config's power-cosine guidance schedule, or None for a constant scale."""
  if sample_config.get("cfg_schedule", "constant") == "power_cosine":
    return sample_config.get("cfg_scale_pow", 4.0)
  return None


def host_array(x):
  """A (possibly multi-host sharded) jax.Array as one numpy array on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
