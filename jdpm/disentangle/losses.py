"""DisDiff's training losses (official `LatentDiffusion.p_losses` and `dis_loss`), as pure functions.

Schedule: the LDM "linear" schedule, betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, with the
buffers in float32 as the official model registers them, and the two coefficients of the sub-gradient:

- training (reconstruction loss, PDAE form): eps_hat = eps_theta + k_t * sum_c G_c with
  k_t = `shift_coef` = -sqrt(alpha_t) (1 - alphabar_{t-1}) / sqrt(1 - alphabar_t);
- disentangling loss and sampling: eps_hat = eps_theta + `ddim_coef` * G with ddim_coef = -sqrt(1 - alphabar_t)
  (the official DDIM sampler uses this coefficient at its own timesteps, not shift_coef).

The reconstruction loss is L1 (mean over pixels, then batch mean). The disentangling loss for a sampled
factor c per example: predict x0 from eps_theta alone and x0_new from eps_theta + ddim_coef * G_c, encode both
with a frozen copy of the encoder (pred_z, pred_z_new; (B, N, f)), and with the image's own codes z (no
gradient) form logits = ||pred_z - z|| - ||pred_z_new - z|| and logits_deta = ||pred_z - pred_z_new|| (L2 per
factor); loss = w * gamma * (CE(logits, c) + CE(logits_deta, c)) with w the gradient-free mean squared
difference of the two x0 predictions (type "Z": in the diffusion space; type "IM": after decoding) and
gamma = `dis_weight`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

stop = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class LDMSchedule:
  """Float32 buffers (T,) of the official model, indexed by integer timestep."""
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  shift_coef: np.ndarray
  ddim_coef: np.ndarray

  @classmethod
  def linear(cls, num_timesteps=1000, beta_start=0.0015, beta_end=0.0155):
    """The official (LDM) linear schedule; defaults are DisDiff's configs."""
    if num_timesteps < 2 or not 0 < beta_start < beta_end < 1:
      raise ValueError(f"need num_timesteps >= 2 and 0 < beta_start < beta_end < 1; got {num_timesteps}, "
                       f"{beta_start}, {beta_end}.")
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    f32 = lambda a: np.asarray(a, np.float32)
    # shift_coef is formed from the float32 buffers, as the official code does.
    shift = -f32(np.sqrt(alphas)) * (np.float32(1) - f32(ac_prev)) / np.sqrt(np.float32(1) - f32(ac))
    return cls(f32(betas), f32(ac), f32(ac_prev), f32(np.sqrt(ac)), f32(np.sqrt(1 - ac)), f32(np.sqrt(1 / ac)),
               f32(np.sqrt(1 / ac - 1)), f32(shift), f32(-np.sqrt(1 - ac)))

  @property
  def num_timesteps(self):
    return len(self.betas)

  def at(self, name, t):
    """Buffer `name` at timesteps t (B,), shaped (B, 1, 1, 1) for NHWC images."""
    return jnp.asarray(getattr(self, name))[t][:, None, None, None]

  def q_sample(self, x_start, t, noise):
    return self.at("sqrt_alphas_cumprod", t) * x_start + self.at("sqrt_one_minus_alphas_cumprod", t) * noise

  def predict_start(self, x_t, t, eps):
    return self.at("sqrt_recip_alphas_cumprod", t) * x_t - self.at("sqrt_recipm1_alphas_cumprod", t) * eps


def mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy (B,) of logits (B, K) with integer labels (B,)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def safe_norm(x, axis=-1):
  """L2 norm whose gradient at 0 is 0 (PyTorch's convention) instead of NaN. At initialisation the
  decoder's output layer is zero, so pred_z_new == pred_z exactly and ||pred_z - pred_z_new|| = 0."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def disentangling_terms(pred_z, pred_z_new, cond, concept):
  """Logits and cross-entropies of the disentangling loss. pred_z, pred_z_new, cond: (B, N, f)."""
  cond = stop(cond)
  norm_org = stop(safe_norm(pred_z - cond))
  logits = norm_org - safe_norm(pred_z_new - cond)
  logits_deta = safe_norm(pred_z - pred_z_new)
  return {"logits": logits, "logits_deta": logits_deta, "ce": cross_entropy(logits, concept),
          "ce_deta": cross_entropy(logits_deta, concept)}


def disdiff_loss(model_fn, encode_fn, frozen_encode_fn, x_start, image, t, noise, concept, sched, *,
                 decode=None, dis_weight=0.05, weight_type="Z", latent_unit=None):
  """The official DisDiff loss and its terms.

  Args:
    model_fn: (x_t, t, codes, concept) -> dict with "pred", "out_grad", "sub_grad" (a ShiftUNet apply).
    encode_fn: image -> codes (B, N*f), the trained encoder (gradients flow into it through the decoder).
    frozen_encode_fn: image -> codes with the encoder's parameters held fixed (the official eval-mode copy;
      gradients flow through its input only).
    x_start: (B, h, w, c) clean sample in the diffusion space (pixels, or latents with `decode`).
    image: (B, H, W, C) the image the encoder sees (equal to x_start in pixel space).
    t: (B,) int timesteps; noise: like x_start; concept: (B,) int sampled factor per example.
    sched: LDMSchedule.
    decode: diffusion space -> image (the first stage's decoder); None in pixel space.
    dis_weight: gamma (official 0.05); weight_type: "Z" or "IM" (see module docstring).
    latent_unit: N; default: the number of fields the model returns.
  Returns:
    (loss, terms) with loss = mean(loss_simple) + mean(dis_loss) and every intermediate in `terms`.
  """
  if weight_type not in ("Z", "IM"):
    raise ValueError(f"weight_type must be 'Z' or 'IM'; got {weight_type!r}.")
  decode = decode or (lambda z: z)
  cond = encode_fn(image)
  x_noisy = sched.q_sample(x_start, t, noise)
  out = model_fn(x_noisy, t, cond, concept)
  n = latent_unit or out["G"].shape[0]
  eps_pred = out["pred"] + sched.at("shift_coef", t) * out["out_grad"]
  loss_simple = mean_flat(jnp.abs(noise - eps_pred))
  z_start = stop(sched.predict_start(x_noisy, t, out["pred"]))
  pred_x0 = stop(decode(z_start))
  pred_z = stop(frozen_encode_fn(pred_x0))
  eps_new = out["pred"] + sched.at("ddim_coef", t) * out["sub_grad"]
  z_start_new = sched.predict_start(x_noisy, t, eps_new)
  pred_x0_new = decode(z_start_new)
  pred_z_new = frozen_encode_fn(pred_x0_new)
  split = lambda z: z.reshape(z.shape[0], n, -1)
  terms = disentangling_terms(split(pred_z), split(pred_z_new), split(cond), concept)
  if weight_type == "Z":
    weight = stop(mean_flat((z_start - z_start_new) ** 2))
  else:
    weight = stop(mean_flat((pred_x0 - pred_x0_new) ** 2))
  dis_loss = weight * dis_weight * (terms["ce"] + terms["ce_deta"])
  loss = jnp.mean(loss_simple) + jnp.mean(dis_loss)
  terms.update(cond=cond, x_noisy=x_noisy, eps_pred=eps_pred, loss_simple=loss_simple, z_start=z_start,
               z_start_new=z_start_new, pred_z=pred_z, pred_z_new=pred_z_new, weight=weight, dis_loss=dis_loss,
               **out)
  return loss, terms
