"""Training losses of a Gaussian diffusion: eps / x0 / v regression, the learned-variance hybrid, Min-SNR.

The functions take a `GaussianDiffusion` as their first argument and return per-example (B,) losses; the
caller averages them (possibly with importance weights from a timestep sampler).
"""

import math

import jax
import jax.numpy as jnp

from jdpm.diffusion import likelihoods

_LOG2 = math.log(2.0)


def vb_terms_bpd(diffusion, model_output, x_start, x_t, t, *, clip_denoised=False):
  """One term of the variational bound, in bits per dimension.

  For t > 0 it is KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); for t = 0 it is the negative log likelihood
  of x_0 under the discretised Gaussian decoder p(x_0 | x_1) (bins of width 2/255). Both are averaged over
  all non-batch dimensions and divided by log 2.

  Args:
    diffusion: a GaussianDiffusion.
    model_output: the model's output at (x_t, t) (see `GaussianDiffusion.p_mean_variance_from_output`).
    x_start: (B, H, W, C) the clean data x_0.
    x_t: (B, H, W, C) the noisy state.
    t: (B,) int steps.
    clip_denoised: clip the x_0 prediction to [-1, 1].
  Returns:
    a dict with "output" (B,) and "pred_xstart" shaped like x_t.
  """
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
  out = diffusion.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
  kl = likelihoods.normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
  kl = likelihoods.mean_flat(kl) / _LOG2
  decoder_nll = -likelihoods.discretized_gaussian_log_likelihood(
      x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
  decoder_nll = likelihoods.mean_flat(decoder_nll) / _LOG2
  return {"output": jnp.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}


def min_snr_weight(snr, gamma, mean_type="epsilon", offset=0.0):
  """The Min-SNR-gamma loss weight for a regression on `mean_type`'s target.

  Min-SNR weights the x_0 error by min(SNR, gamma). The eps and v errors equal the x_0 error times 1/SNR
  and 1/(SNR + 1) respectively, so their weights are min(SNR, gamma) / SNR (what EDT trains with, gamma = 5)
  and min(SNR, gamma) / (SNR + 1).

  With an `offset` the x_0 error is weighted by min(SNR, gamma) + offset instead: the high-noise steps, whose
  Min-SNR weight tends to 0, keep at least `offset`. Offset 1 with v-prediction is the plain v loss clipped at
  SNR gamma (weight 1 up to SNR gamma, (gamma + 1) / (SNR + 1) above). With eps-prediction the offset makes
  the weight unbounded at high noise ((gamma + offset) / SNR); `DenoisingObjective` refuses that pairing.

  Args:
    snr: (B,) alpha_bar / (1 - alpha_bar).
    gamma: the clamp, e.g. 5.
    mean_type: "epsilon", "x0" or "v".
  Returns:
    (B,) weights.
  """
  clamped = jnp.minimum(snr, gamma) + offset
  if mean_type == "epsilon":
    return clamped / snr
  if mean_type == "x0":
    return clamped
  if mean_type == "v":
    return clamped / (snr + 1)
  raise ValueError(f"mean_type must be 'epsilon', 'x0' or 'v'; got {mean_type!r}.")


def training_losses(diffusion, model_fn, x_start, t, noise, *, model_kwargs=None, min_snr_gamma=None,
                    min_snr_offset=0.0):
  """Per-example losses of one training step at timesteps t.

  x_t = q_sample(x_start, t, noise) is fed to ``model_fn(x_t, timestep_map[t], **model_kwargs)``. Then, by
  `diffusion.loss_type`:

  * "mse" / "rescaled_mse": "mse" = mean over (H, W, C) of (target - prediction)^2, where the target is the
    noise (mean_type "epsilon"), x_0 ("x0") or v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x_0 ("v").
    With min_snr_gamma it is multiplied by `min_snr_weight`, with SNR computed in float32 as EDT does.
    If the variance is learned, "vb" = `vb_terms_bpd` of the output whose mean channels are passed through
    stop_gradient, so the bound trains only the variance (improved DDPM's hybrid loss); "rescaled_mse"
    multiplies it by N / 1000. "loss" = "mse" + "vb".
  * "kl" / "rescaled_kl": "loss" = "vb" = `vb_terms_bpd` of the raw output (times N for "rescaled_kl").

  Args:
    diffusion: a GaussianDiffusion.
    model_fn: the denoiser ``model_fn(x, t, **model_kwargs)`` (NHWC; 2C output channels if it learns the
      variance).
    x_start: (B, H, W, C) clean data.
    t: (B,) int steps of `diffusion`.
    noise: standard normal noise shaped like x_start.
    model_kwargs: extra keyword arguments for model_fn (e.g. class labels).
    min_snr_gamma: if set (EDT uses 5.0), apply Min-SNR-gamma weighting to "mse".
    min_snr_offset: added to the Min-SNR weight of the x_0 error (see `min_snr_weight`).
  Returns:
    a dict of (B,) arrays: "mse", "vb" (only with a learned variance), "loss" for MSE losses; "vb" and "loss"
    for KL losses.
  """
  model_kwargs = model_kwargs or {}
  x_t = diffusion.q_sample(x_start, t, noise)
  model_output = model_fn(x_t, diffusion.model_timesteps(t), **model_kwargs)
  num_timesteps = diffusion.num_timesteps

  if diffusion.loss_type in ("kl", "rescaled_kl"):
    vb = vb_terms_bpd(diffusion, model_output, x_start, x_t, t)["output"]
    if diffusion.loss_type == "rescaled_kl":
      vb = vb * num_timesteps
    return {"vb": vb, "loss": vb}

  prediction, var_values = diffusion.split_model_output(model_output, x_t)
  terms = {}
  if var_values is not None:
    # The bound sees the mean prediction as a constant: it trains the variance only.
    frozen = jnp.concatenate([jax.lax.stop_gradient(prediction), var_values], axis=-1)
    vb = vb_terms_bpd(diffusion, frozen, x_start, x_t, t)["output"]
    if diffusion.loss_type == "rescaled_mse":
      # Keeps the vb term's scale that of a 1000-step process.
      vb = vb * (num_timesteps / 1000.0)
    terms["vb"] = vb

  if diffusion.mean_type == "epsilon":
    target = noise
  elif diffusion.mean_type == "x0":
    target = x_start
  else:
    target = diffusion.v_target(x_start, t, noise)
  mse = likelihoods.mean_flat(jnp.square(target - prediction))
  if min_snr_gamma is not None:
    mse = min_snr_weight(diffusion.snr(t), min_snr_gamma, diffusion.mean_type,
                         min_snr_offset).astype(mse.dtype) * mse
  terms["mse"] = mse
  terms["loss"] = mse + terms["vb"] if "vb" in terms else mse
  return terms
