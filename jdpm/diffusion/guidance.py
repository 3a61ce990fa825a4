"""Classifier-free guidance scale schedules (pure jnp; shared by the models and the samplers)."""

import math

import jax.numpy as jnp


def power_cosine_guidance_scale(cfg_scale, t, diffusion_steps=1000, scale_pow=4.0):
  """MDTv2's time-dependent classifier-free guidance scale.

  ``s(t) = 1 + (cfg_scale − 1) · ½ (1 − cos(π · (1 − t / diffusion_steps) ** scale_pow))``:
  about ``cfg_scale`` near t = 0 and 1 (no guidance) at t = diffusion_steps. A large
  ``scale_pow`` (4, the sampling script's default) guides only the last, low-noise steps (more
  diversity); a small one (0.01, the released inference script) guides almost everywhere.

  Args:
    cfg_scale: the guidance scale at t = 0.
    t: (B,) discrete timesteps of the ``diffusion_steps``-step process (0 = clean).
    diffusion_steps: length of the training process.
    scale_pow: the power of the schedule.

  Returns:
    (B,) float32 scales, computed in float32 in the official operation order.
  """
  t = jnp.asarray(t).astype(jnp.float32)
  progress = (1.0 - t / jnp.float32(diffusion_steps)) ** jnp.float32(scale_pow)
  step = (1.0 - jnp.cos(progress * jnp.float32(math.pi))) * 1.0 / 2.0
  return (jnp.float32(cfg_scale) - 1.0) * step + 1.0


def combine(cond_out, uncond_out, scale, channels=None):
  """Classifier-free guidance ``u + s·(c − u)`` on the first `channels` channels (None: all).

  The other channels (an unguided latent channel, learned-variance outputs) are the conditional
  output's. This is the one place where jdpm combines a conditional and an unconditional prediction:
  the samplers' guidance, DDPM sampling and the models' GLIDE-style ``forward_with_cfg`` all call it.

  Args:
    cond_out, uncond_out: (B, ..., C) outputs of the conditional and unconditional calls.
    scale: the guidance scale s, a scalar or an array broadcastable to (B, ..., channels).
    channels: how many leading channels are guided.
  Returns:
    (B, ..., C) guided output.
  """
  k = cond_out.shape[-1] if channels is None else channels
  guided = uncond_out[..., :k] + scale * (cond_out[..., :k] - uncond_out[..., :k])
  if k == cond_out.shape[-1]:
    return guided
  return jnp.concatenate([guided, cond_out[..., k:]], axis=-1)
