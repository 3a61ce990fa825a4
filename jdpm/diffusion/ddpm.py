"""DDPM ancestral sampling over all steps of a (possibly respaced) Gaussian diffusion, as one XLA program."""

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("model_fn", "clip_denoised", "denoised_fn"))
def ddpm_sample(model_fn, diffusion, x_T, rng, *, model_kwargs=None, clip_denoised=False, denoised_fn=None):
  """Samples x_0 by running `GaussianDiffusion.p_sample` from step N-1 down to 0.

  The loop is a `lax.scan`, so the model is traced once and the whole chain compiles to one program.
  Step i draws its noise from ``jax.random.fold_in(rng, i)``; the last step (i = 0) adds none.

  `model_fn` is a static argument: define it once (not as a fresh lambda per call) and pass anything large
  or changing, such as parameters and class labels, through `model_kwargs`, which is traced:

    def model_fn(x, t, params, y):
      return model.apply(params, x, t, y)
    x0 = ddpm_sample(model_fn, diffusion, x_T, rng, model_kwargs=dict(params=params, y=y))

  Args:
    model_fn: ``model_fn(x, t, **model_kwargs)`` with x (B, H, W, C) and t (B,) int original timesteps,
      returning (B, H, W, C), or (B, H, W, 2C) with a learned variance.
    diffusion: a GaussianDiffusion; a respaced one (e.g. 250 steps) samples faster.
    x_T: (B, H, W, C) the starting noise, usually standard normal.
    rng: a PRNG key for the per-step noise.
    model_kwargs: a pytree of keyword arguments for model_fn.
    clip_denoised: clip every x_0 prediction to [-1, 1].
    denoised_fn: optional function applied to every x_0 prediction (static).
  Returns:
    the sample x_0, shaped like x_T.
  """
  batch_size = x_T.shape[0]
  model_kwargs = model_kwargs or {}

  def step(x, i):
    t = jnp.full((batch_size,), i, dtype=jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    out = diffusion.p_sample(model_fn, x, t, noise, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                             denoised_fn=denoised_fn)
    return out["sample"], None

  steps = jnp.arange(diffusion.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x_0, _ = jax.lax.scan(step, x_T, steps)
  return x_0
