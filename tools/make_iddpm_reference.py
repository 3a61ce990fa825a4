"""Regenerates tests/data/iddpm.npz from the official Gaussian diffusion code of DiT (and EDT's
Min-SNR variant of it).

Needs torch, a checkout of github.com/facebookresearch/DiT at commit
ed81ce2229091fd4ecc9a223645f95cf379d582b (``diffusion/``) and one of github.com/xinwangChen/EDT
at commit 15faf9c07c7b17f1f200c54f14321a383f923c16 (its modified ``diffusion/``):

  python tools/make_iddpm_reference.py --dit /path/to/DiT --edt /path/to/EDT [--check]

Processes: ``base = create_diffusion(timestep_respacing="")`` (linear betas, ε-prediction,
learned-range variance, MSE + VB: what DiT/EDT train with) and
``respaced250 = create_diffusion(timestep_respacing="250")``. Inputs, drawn in this order from
one ``torch.Generator().manual_seed(2)``: x_start, noise = randn(4, 4, 8, 8),
eps_pred = noise + 0.3·randn, var = 2·rand − 1, sample_noise = randn; the model is a constant
``model_fn`` returning concat([eps_pred, var]) (``input/model_output``); t = [0, 1, 437, 999],
t_respaced = [0, 1, 100, 249]. Outputs: ``base/training_losses/{mse,vb,loss}``,
``base/q_sample`` (= x_t), ``{base,respaced250}/p_mean_variance/clip{0,1}/*`` and
``.../p_sample/clip{0,1}/*`` at x_t (p_sample's ``randn_like`` replaced by sample_noise), the
schedule tables, the 250-step ``timestep_map`` and the timesteps the wrapped model received, and
``edt_minsnr/training_losses/*`` from EDT's ``diffusion`` package.

``--check``: schedules, inputs and integer arrays bit-exact; float32 results within 1e-6
(max |diff| / max |stored|).
"""

import contextlib

import numpy as np

import official_common as common

DIT = ("facebookresearch/DiT", "ed81ce2229091fd4ecc9a223645f95cf379d582b")
EDT = ("xinwangChen/EDT", "15faf9c07c7b17f1f200c54f14321a383f923c16")
T = [0, 1, 437, 999]
T_RESPACED = [0, 1, 100, 249]
SCHEDULE = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]
PMV_KEYS = ["mean", "variance", "log_variance", "pred_xstart"]


def inputs():
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(2)
  shape = (4, 4, 8, 8)
  x_start = torch.randn(shape, generator=g)
  noise = torch.randn(shape, generator=g)
  eps_pred = noise + 0.3 * torch.randn(shape, generator=g)
  var = 2 * torch.rand(shape, generator=g) - 1
  sample_noise = torch.randn(shape, generator=g)
  return dict(x_start=x_start, noise=noise, model_output=torch.cat([eps_pred, var], dim=1),
              sample_noise=sample_noise, t=torch.tensor(T), t_respaced=torch.tensor(T_RESPACED))


@contextlib.contextmanager
def fixed_randn_like(torch, value):
  """p_sample draws its noise with ``th.randn_like``: hand it the stored sample noise."""
  original = torch.randn_like
  torch.randn_like = lambda *args, **kwargs: value.clone()
  try:
    yield
  finally:
    torch.randn_like = original


def losses(diffusion, inp, model_fn):
  out = diffusion.training_losses(model_fn, inp["x_start"], inp["t"], model_kwargs=None,
                                  noise=inp["noise"])
  return {k: common.to_numpy(out[k]) for k in ("mse", "vb", "loss")}


def reverse_step(torch, diffusion, model_fn, x_t, t, clip, sample_noise, prefix, arrays):
  out = diffusion.p_mean_variance(model_fn, x_t, t, clip_denoised=clip)
  for k in PMV_KEYS:
    arrays[f"{prefix}/p_mean_variance/clip{int(clip)}/{k}"] = common.to_numpy(out[k])
  with fixed_randn_like(torch, sample_noise):
    out = diffusion.p_sample(model_fn, x_t, t, clip_denoised=clip)
  for k in ("sample", "pred_xstart"):
    arrays[f"{prefix}/p_sample/clip{int(clip)}/{k}"] = common.to_numpy(out[k])


def make(dit_checkout, edt_checkout):
  import torch  # pylint: disable=import-outside-toplevel
  inp = inputs()
  received = []

  def model_fn(x, t, **kwargs):
    del x, kwargs
    received.append(t.clone())
    return inp["model_output"]

  arrays = {f"input/{k}": common.to_numpy(v) for k, v in inp.items()}
  with common.on_path(dit_checkout):
    import diffusion as dit_diffusion  # pylint: disable=import-outside-toplevel
    base = dit_diffusion.create_diffusion(timestep_respacing="")
    respaced = dit_diffusion.create_diffusion(timestep_respacing="250")
    arrays.update({f"base/training_losses/{k}": v for k, v in losses(base, inp, model_fn).items()})
    x_t = base.q_sample(inp["x_start"], inp["t"], noise=inp["noise"])
    arrays["base/q_sample"] = common.to_numpy(x_t)
    for clip in (False, True):
      reverse_step(torch, base, model_fn, x_t, inp["t"], clip, inp["sample_noise"], "base", arrays)
    for k in SCHEDULE:
      arrays[f"base/schedule/{k}"] = np.asarray(getattr(base, k), np.float64)
    arrays["base/schedule/betas_linear_raw"] = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    arrays["respaced250/betas"] = np.asarray(respaced.betas, np.float64)
    arrays["respaced250/alphas_cumprod"] = np.asarray(respaced.alphas_cumprod, np.float64)
    arrays["respaced250/timestep_map"] = np.asarray(respaced.timestep_map, np.int64)
    received.clear()
    reverse_step(torch, respaced, model_fn, x_t, inp["t_respaced"], False, inp["sample_noise"],
                 "respaced250", arrays)
    arrays["respaced250/model_t_received"] = common.to_numpy(received[0]).astype(np.int64)
  with common.on_path(edt_checkout):
    import diffusion as edt_diffusion  # pylint: disable=import-outside-toplevel,reimported
    assert edt_diffusion.__file__.startswith(str(edt_checkout.resolve()))
    minsnr = edt_diffusion.create_diffusion(timestep_respacing="")
    arrays.update({f"edt_minsnr/training_losses/{k}": v
                   for k, v in losses(minsnr, inp, model_fn).items()})
  return arrays


def main():
  args = common.parser(__doc__, {"dit": DIT, "edt": EDT}).parse_args()
  common.verify_checkout(args.dit, *DIT, ["diffusion/gaussian_diffusion.py"])
  common.verify_checkout(args.edt, *EDT, ["diffusion/gaussian_diffusion.py"])
  tol = {k: 1e-6 for k in ("base/training_losses", "base/q_sample", "base/p_", "respaced250/p_",
                           "edt_minsnr/")}
  common.finish([common.save_or_check(args.out / "iddpm.npz", make(args.dit, args.edt),
                                      args.check, tol)])


if __name__ == "__main__":
  main()
