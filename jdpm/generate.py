"""Conditional generation from a Flax denoiser with any sampler, and image grids.

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
import PIL.ImageDraw

from jdpm import diffusion as diffusion_lib
from jdpm.diffusion import conditioning
from jdpm import parallel, samplers

SAMPLERS = ("unipc", "dpm_solver++", "dpm_solver", "ddim", "ddpm")
# config.diffusion.prediction -> the samplers' model_type (`jdpm.samplers.make_noise_fn`).
MODEL_TYPES = {"epsilon": "noise", "v": "v", "x0": "x0"}


@functools.lru_cache(maxsize=32)
def _apply_fn(model, amm, micro_batch=None, shards=1):
  """model.apply, with the AMM switch only when asked (so models without AMM work), over micro-batches of
  `micro_batch` examples per device when given (`jdpm.parallel.micro_batched`).

  Cached: the samplers compile one program per apply function, so the same model must give the same one.
  """
  apply = functools.partial(model.apply, amm=True) if amm else model.apply
  return parallel.micro_batched(apply, micro_batch, shards)


def sample_images(model, variables, cond, rng, *, sampler="unipc", steps=10, order=None, cfg_scale=1.0,
                  cfg_channels=None, guidance_window=None, cfg_scale_pow=None, amm=False, learn_sigma=None,
                  num_timesteps=1000, beta_schedule="linear", clip_denoised=False, null=None, sample_shape=None,
                  skip_type="time_uniform", prediction="epsilon", mesh=None):
  """Draws one sample per condition.

  Args:
    model: a jdpm denoiser (``model.apply(variables, x, t, cond)``, NHWC, t in DDPM steps 0..N-1).
    variables: its variables, e.g. ``{"params": state.ema_params}``.
    cond: the condition: (B,) int class labels, or any pytree whose leaves have the batch B as leading
      axis (see `jdpm.diffusion.conditioning`); B must divide over the mesh's devices.
    rng: PRNG key for x_T (and DDPM's per-step noise).
    sampler: "unipc", "dpm_solver++", "dpm_solver", "ddim" (ODE samplers on the discrete VP schedule) or
      "ddpm" (ancestral sampling with the learned variance over `steps` respaced steps).
    steps: model evaluations (ODE samplers) or respaced steps (ddpm).
    order: solver order (default per sampler).
    cfg_scale: classifier-free guidance scale; 1 = conditional only (one model call per step).
    cfg_channels: guide only the first k output channels (the official DiT/EDT scripts use 3 of 4 latent
      channels); None or < 0 = all.
    guidance_window: (lo, hi) fraction of the model evaluations that are guided.
    cfg_scale_pow: MDTv2's power-cosine guidance schedule with this power; None: a constant scale.
    amm: turn on the Attention Modulation Matrix (EDT and models built with amm_blocks).
    learn_sigma: the model outputs 2C channels (eps and variance); default: the model's `learn_sigma`.
    num_timesteps, beta_schedule: the training diffusion.
    clip_denoised: keep the data predictions inside [-1, 1], for pixel-space models whose data is bounded:
      dynamic thresholding (ratio 0.995, as DPM-Solver++ for pixel models) for the ODE samplers, clipping
      for ddpm. Early in training a model's noise predictions at high noise are poor, and without this the
      1/alpha amplification of their error saturates the colours. Latent models use False.
    null: the null condition for guidance (default: the model's `null_condition`, e.g. the null class).
    sample_shape: (H, W, C) of one sample (default: the model's `sample_shape`).
    skip_type: the ODE samplers' time grid: "time_uniform" (the papers' sampling scripts), "logSNR" or
      "time_quadratic" (see the README's sampler notes for which to choose).
    prediction: what the model predicts: "epsilon" (noise), "v" or "x0" (``config.diffusion.prediction``).
    mesh: shard the batch over this mesh (default: all devices).
  Returns:
    (B, H, W, C) float32 samples in the model's data space (images in [-1, 1] for pixel models).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
  if prediction not in MODEL_TYPES:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(MODEL_TYPES)}.")
  mesh = mesh or parallel.make_mesh()
  cond = jax.tree.map(jnp.asarray, cond)
  num = conditioning.batch_size(cond)
  shape = (num,) + tuple(sample_shape or model.sample_shape)
  if num % mesh.size:
    raise ValueError(f"{num} samples do not split over {mesh.size} devices; use a multiple of {mesh.size}.")
  batch = parallel.batch_sharding(mesh)
  rng_x, rng_steps = jax.random.split(rng)
  x_T = jax.device_put(jax.random.normal(rng_x, shape, jnp.float32), batch)
  cond = jax.device_put(cond, batch)
  variables = parallel.on_mesh(variables, mesh)
  # On CPU the network runs over cache-sized micro-batches (see `jdpm.parallel.microbatch`).
  apply_fn = _apply_fn(model, amm, parallel.cpu_micro_batch(model, shape[1:], cond), mesh.size)
  if learn_sigma is None:
    learn_sigma = bool(getattr(model, "learn_sigma", False))
  guidance = None
  if cfg_scale is not None and cfg_scale != 1.0:
    if cfg_channels is not None and cfg_channels < 0:
      cfg_channels = None
    guidance = samplers.make_guidance(cfg_scale, model.null_condition if null is None else null,
                                      channels=cfg_channels, window=guidance_window, scale_pow=cfg_scale_pow,
                                      total_n=num_timesteps)

  if sampler == "ddpm":
    diffusion = diffusion_lib.create_diffusion(str(steps), noise_schedule=beta_schedule,
                                               diffusion_steps=num_timesteps, learn_sigma=learn_sigma,
                                               predict_v=prediction == "v", predict_xstart=prediction == "x0")
    kwargs = dict(variables=variables, cond=cond, guidance=guidance,
                  model_times=jnp.asarray(diffusion.timestep_map, jnp.int32))
    return diffusion_lib.ddpm_sample(_ddpm_model_fn(apply_fn), diffusion, x_T, rng_steps, model_kwargs=kwargs,
                                     clip_denoised=clip_denoised)

  betas = diffusion_lib.named_beta_schedule(beta_schedule, num_timesteps)
  sched = diffusion_lib.VPSchedule.discrete(betas)
  noise_fn = samplers.make_noise_fn(apply_fn, variables, sched, y=cond, learned_sigma=learn_sigma,
                                    guidance=guidance, model_type=MODEL_TYPES[prediction])
  extra = {}
  if clip_denoised:
    if sampler == "dpm_solver":
      raise ValueError("clip_denoised needs data predictions: use dpm_solver++ (or unipc, ddim) instead of dpm_solver.")
    extra = dict(thresholding=True, prediction="data")
  return samplers.sample(noise_fn, sched, x_T, method=sampler, steps=steps, order=order,
                         skip_type=skip_type, **extra)


@functools.lru_cache(maxsize=None)
def _ddpm_model_fn(apply_fn):
  """model_fn(x, t, variables, cond, guidance, model_times) for `ddpm_sample`, guided when `guidance` is set.

  Cached so that repeated calls hand `ddpm_sample` the same static function (one compilation). The
  guidance window's progress is the fraction of the respaced steps done: step index i of S (counting
  down) is evaluation S - 1 - i.
  """
  def model_fn(x, t, variables, cond, guidance, model_times):
    def fn(x, t, c):
      return apply_fn(variables, x, t, c)
    if guidance is None:
      return fn(x, t, cond)
    num_steps = model_times.shape[0]
    progress = (num_steps - 1 - jnp.searchsorted(model_times, t[0])) / num_steps
    return guidance(fn, x, t, cond, t_model=t, progress=progress)
  return model_fn


def sample_options(config, **overrides):
  """The keyword arguments of `sample_images` from a run's ``config.sample`` and ``config.diffusion``.

  `overrides` (e.g. from sample.py's flags) replace the config's values where they are not None.
  """
  s = config.sample
  options = dict(
      sampler=s.sampler, steps=s.steps, order=s.get("order"), skip_type=s.get("skip_type", "time_uniform"),
      cfg_scale=s.cfg_scale,
      cfg_channels=s.get("cfg_channels"), guidance_window=_window(s.get("guidance_window")),
      amm=s.get("amm", False), cfg_scale_pow=guidance_power(s), clip_denoised=s.get("clip_denoised", False),
      num_timesteps=config.diffusion.num_timesteps, beta_schedule=config.diffusion.beta_schedule,
      prediction=config.diffusion.get("prediction", "epsilon"))
  options.update({k: v for k, v in overrides.items() if v is not None})
  return options


def _window(window):
  return None if window is None else tuple(float(v) for v in window)


def to_uint8(images):
  """(B, H, W, C) floats in [-1, 1] -> uint8 (B, H, W, C); with C != 3, the first 3 channels (or grey)."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] >= 3:
    images = images[..., :3]
  else:
    images = np.repeat(images[..., :1], 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images, path, ncol=None, column_labels=None, min_tile=64):
  """Writes (B, H, W, C) images in [-1, 1] as one PNG grid with a 2-pixel white border.

  Args:
    images: (B, H, W, C) floats in [-1, 1].
    path: the PNG file (its folder is created).
    ncol: images per row (default: a square grid).
    column_labels: optional names written above the columns (e.g. the class of each column).
    min_tile: small images are enlarged (nearest neighbour, an integer factor) to at least this many
      pixels, so that a grid of 32-pixel samples can be seen without zooming.
  """
  pixels = to_uint8(images)
  b, h, w, _ = pixels.shape
  factor = max(1, -(-min_tile // max(h, w)))
  if factor > 1:
    pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)
    h, w = h * factor, w * factor
  ncol = ncol or math.ceil(math.sqrt(b))
  nrow = math.ceil(b / ncol)
  header = 14 if column_labels else 0
  grid = np.full((header + nrow * (h + 2) + 2, ncol * (w + 2) + 2, 3), 255, np.uint8)
  for i in range(b):
    r, c = divmod(i, ncol)
    top, left = header + 2 + r * (h + 2), 2 + c * (w + 2)
    grid[top: top + h, left: left + w] = pixels[i]
  image = PIL.Image.fromarray(grid)
  if column_labels:
    draw = PIL.ImageDraw.Draw(image)
    for c, label in enumerate(list(column_labels)[:ncol]):
      text = str(label)
      while text and draw.textlength(text) > w:  # cut names wider than a tile
        text = text[:-1]
      draw.text((2 + c * (w + 2) + max(0, (w - draw.textlength(text)) / 2), 1), text, fill=(0, 0, 0))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)
  return path


def class_grid_labels(num_samples, num_classes):
  """Labels 0, 1, ..., num_classes-1, 0, 1, ...: with ncol = num_classes, each column is one class."""
  return np.arange(num_samples) % num_classes


def training_sample_grid(model, ema_params, config, path, mesh=None):
  """The periodic sample grid of a training run, drawn with the EMA parameters (one column per class)."""
  s = config.sample
  num_classes = config.model.num_classes
  labels = class_grid_labels(s.num_samples, num_classes)
  images = sample_images(model, {"params": ema_params}, labels, jax.random.key(config.seed),
                         mesh=mesh, **sample_options(config))
  images = host_array(images)
  if jax.process_index() == 0:
    save_grid(images, path, ncol=min(num_classes, s.num_samples), column_labels=_class_names(config))


def _class_names(config):
  from jdpm.data import registry  # only for the names of the built-in classes
  return registry.class_names(config.data.name)


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
