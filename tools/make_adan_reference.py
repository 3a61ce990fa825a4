"""Regenerates tests/data/adan.npz from the official Adan optimizer.

Needs torch and a checkout of github.com/sail-sg/Adan at commit
2c65beaf400775753b155da4082c3819fea689b9 (``adan.py``, its single-tensor path):

  python tools/make_adan_reference.py --adan /path/to/Adan [--check]

``Adan([W, b], lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=wd,
max_grad_norm=mg, no_prox=np_, foreach=False, fused=False)`` runs five steps. Data, drawn in this
order from ``np.random.RandomState(4)``: ``init/W`` randn(5, 3), ``init/b`` randn(3),
``grads/W`` randn(5, 5, 3), ``grads/b`` randn(5, 3); then ``grads/W[2] *= 3`` and
``grads/b[4] *= 0.1``. Step k sets fresh ``.grad`` tensors from ``grads/*[k-1]`` and calls
``step()``. Runs ``run/<name>/{f64,f32}/``: wd0.02 (wd 0.02), wd0.0, wd0.02_noprox
(no_prox=True) and wd0.0_clip1.0 (max_grad_norm 1, as MDT trains), each in float64 and float32,
storing the parameters and the optimizer state after every step and the clip factor the
optimizer used (``clip_coef``, recorded from the call of its update function).

``--check``: bit-exact, except the clipped run: the official code sums the squared gradient norm
in a float32 buffer, whose summation order (so its last bit) depends on the CPU's vector kernels;
that run's arrays must agree within 1e-6 (max |diff| / max |stored|).
"""

import numpy as np

import official_common as common

ADAN = ("sail-sg/Adan", "2c65beaf400775753b155da4082c3819fea689b9")
LR, BETAS, EPS = 1e-3, (0.98, 0.92, 0.99), 1e-8
RUNS = {"wd0.02": (0.02, 0.0, False), "wd0.0": (0.0, 0.0, False),
        "wd0.02_noprox": (0.02, 0.0, True), "wd0.0_clip1.0": (0.0, 1.0, False)}
STATE = ["exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"]


def data():
  rs = np.random.RandomState(4)
  init_w, init_b = rs.randn(5, 3), rs.randn(3)
  grads_w, grads_b = rs.randn(5, 5, 3), rs.randn(5, 3)
  grads_w[2] *= 3
  grads_b[4] *= 0.1
  return {"init/W": init_w, "init/b": init_b, "grads/W": grads_w, "grads/b": grads_b}


def run(adan_module, d, dtype, weight_decay, max_grad_norm, no_prox):
  import torch  # pylint: disable=import-outside-toplevel
  params = {k: torch.nn.Parameter(torch.tensor(d[f"init/{k}"], dtype=dtype)) for k in "Wb"}
  opt = adan_module.Adan([params["W"], params["b"]], lr=LR, betas=BETAS, eps=EPS,
                         weight_decay=weight_decay, max_grad_norm=max_grad_norm, no_prox=no_prox,
                         foreach=False, fused=False)
  clip = []
  update = adan_module._single_tensor_adan  # pylint: disable=protected-access

  def recording(*args, **kwargs):
    clip.append(float(kwargs["clip_global_grad_norm"]))
    return update(*args, **kwargs)

  adan_module._single_tensor_adan = recording  # pylint: disable=protected-access
  out = {f"{k}": [] for k in "Wb"}
  out.update({f"state/{k}/{s}": [] for k in "Wb" for s in STATE})
  try:
    for step in range(5):
      for k in "Wb":
        params[k].grad = torch.tensor(d[f"grads/{k}"][step], dtype=dtype)
      opt.step()
      for k in "Wb":
        out[k].append(common.to_numpy(params[k]).copy())
        for s in STATE:
          out[f"state/{k}/{s}"].append(common.to_numpy(opt.state[params[k]][s]).copy())
  finally:
    adan_module._single_tensor_adan = update  # pylint: disable=protected-access
  arrays = {k: np.stack(v) for k, v in out.items()}
  arrays["clip_coef"] = np.asarray(clip, np.float64)
  return arrays


def make(checkout):
  import torch  # pylint: disable=import-outside-toplevel
  with common.on_path(checkout):
    adan = common.load_module(checkout, "adan.py", "adan_official")
  d = data()
  arrays = dict(d)
  arrays.update({"hparams/lr": LR, "hparams/betas": np.asarray(BETAS), "hparams/eps": EPS})
  for name, (wd, mg, no_prox) in RUNS.items():
    arrays.update({f"run/{name}/hparams/weight_decay": float(wd),
                   f"run/{name}/hparams/max_grad_norm": float(mg),
                   f"run/{name}/hparams/no_prox": np.int64(no_prox)})
    for tag, dtype in (("f64", torch.float64), ("f32", torch.float32)):
      result = run(adan, d, dtype, wd, mg, no_prox)
      arrays.update({f"run/{name}/{tag}/{k}": v for k, v in result.items()})
  return arrays


def main():
  args = common.parser(__doc__, {"adan": ADAN}).parse_args()
  common.verify_checkout(args.adan, *ADAN, ["adan.py"])
  common.finish([common.save_or_check(args.out / "adan.npz", make(args.adan), args.check,
                                      {"run/wd0.0_clip1.0/": 1e-6})])


if __name__ == "__main__":
  main()
