"""Regenerates tests/data/samplers_gmm.npz: the official UniPC and DPM-Solver(++) samplers on an
analytic Gaussian mixture, and the exact ODE solution (float64 throughout).

Needs torch and scipy, a checkout of github.com/wl-zhao/UniPC at commit
cf9de85bf2ed68137e6fba5f165f451677b174c4 (``uni_pc.py``) and one of
github.com/LuChengTHU/dpm-solver at commit 52bc3fbcd5de56d60917b826b15d2b69460fc2fa
(``dpm_solver_pytorch.py``):

  python tools/make_sampler_reference.py --unipc /path/to/UniPC --dpm-solver /path/to/dpm-solver
      [--check]

The data distribution has 8 independent coordinates, each a two-component mixture
(``gmm/{means,stds,weights}``, decimal literals below), so the noise prediction
ε*(x, t) = −σ_t ∇ log p_t(x) is exact and cheap. Schedules: each library's
``NoiseScheduleVP('linear', continuous_beta_0=0.1, continuous_beta_1=20.)`` and
``NoiseScheduleVP('discrete', betas=linspace(1e-4, 0.02, 1000), dtype=float64)``. The samplers get
ε* directly as ``model_fn(x, t_continuous)`` (no model_wrapper), start from
x_T = ``RandomState(3).randn(16, 8)`` reshaped to (16, 8, 1, 1) and run from t = 1 to 1e-3.
Keys (see the test modules of the samplers for their use):

* ``{sch}/unipc/{bh1,bh2}/{data,noise}/o{1,2,3}/{skip}/n{n}/lof{1,0}``;
* ``{sch}/{dpmsolver++,dpmsolver}/multistep/o{1,2,3}/{skip}/n{n}/lof{1,0}``,
  ``.../multistep_taylor/o{2,3}/{skip}/n{n}/lof1``, ``.../singlestep/o{2,3}/{skip}/n{n}``,
  ``.../singlestep_fixed/o{2,3}/{skip}/n{n}``; ``{sch}/ddim/{skip}/n{n}`` (= dpmsolver multistep
  order 1); ``nfe/<key>`` the number of model calls;
* ``{sch}/timesteps/{skip}/n{n}``, ``{sch}/dpm_singlestep_grid/o{o}/{skip}/n{n}/{orders,
  timesteps_outer}``, ``{sch}/intermediates/<key>`` for five runs;
* ``gmm/eps_test/{x,t}`` and ``{sch}/eps_test/{alpha,sigma,lambda,eps}``;
* ``{sch}/ode_reference``: the probability-flow ODE dx/dt = (d log α_t/dt)(x − ε*/σ_t) solved by
  scipy's DOP853 (rtol = atol = 1e-13; for ``discrete`` piece by piece between the knots of
  log α) and ``{sch}/ode_reference_selfcheck_maxabs``: its distance to the same solve with a step
  size forced 20× below (max_step = 1e-3).

``--check``: inputs, grids, orders and NFE bit-exact; sampler results within 1e-10 and the ODE
solution within 1e-11 (max |diff| / max |stored|: the solvers amplify last-bit differences of ε*
by up to ~600×); the self-check distance within 10× its stored value.
"""

import contextlib
import io

import numpy as np

import official_common as common

UNIPC = ("wl-zhao/UniPC", "cf9de85bf2ed68137e6fba5f165f451677b174c4")
DPM = ("LuChengTHU/dpm-solver", "52bc3fbcd5de56d60917b826b15d2b69460fc2fa")

MEANS = [[-0.8, 0.6], [-0.9, 0.75], [-1.0, 0.9], [-1.1, 1.05], [-1.2, 1.2], [-1.3, 1.35],
         [-1.4, 1.5], [-1.5, 1.65]]
STDS = [[0.10, 0.30], [0.12, 0.28], [0.14, 0.26], [0.16, 0.24], [0.18, 0.22], [0.20, 0.20],
        [0.22, 0.18], [0.24, 0.16]]
WEIGHTS = [[0.30, 0.70], [0.35, 0.65], [0.40, 0.60], [0.45, 0.55], [0.50, 0.50], [0.55, 0.45],
           [0.60, 0.40], [0.65, 0.35]]
SCHEDULES = ("linear", "discrete")
SKIPS = ("logSNR", "time_uniform", "time_quadratic")
STEPS = (5, 6, 8, 10)
T_START, T_END = 1.0, 1e-3
INTERMEDIATES = ["unipc/bh2/data/o3/logSNR/n10/lof1", "unipc/bh1/data/o3/logSNR/n10/lof1",
                 "unipc/bh2/noise/o2/time_uniform/n6/lof1",
                 "dpmsolver++/multistep/o3/logSNR/n8/lof1", "dpmsolver++/singlestep/o3/logSNR/n8"]


def betas():
  return np.linspace(1e-4, 0.02, 1000)


def schedule(module, name):
  import torch  # pylint: disable=import-outside-toplevel
  if name == "linear":
    return module.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.)
  return module.NoiseScheduleVP("discrete", betas=torch.tensor(betas()), dtype=torch.float64)


def eps_model(ns, counter=None):
  """ε*(x, t) of the mixture under schedule ``ns``, for x of shape (B, 8, ...) and t of (B,)."""
  import torch  # pylint: disable=import-outside-toplevel
  means, stds, weights = (torch.tensor(a, dtype=torch.float64) for a in (MEANS, STDS, WEIGHTS))

  def fn(x, t):
    if counter is not None:
      counter[0] += 1
    shape = (-1,) + (1,) * (x.dim() - 1)
    alpha = ns.marginal_alpha(t).reshape(shape)[..., None]
    sigma = ns.marginal_std(t).reshape(shape)[..., None]
    extra = (1,) * (x.dim() - 2)
    mu = means.reshape(1, 8, *extra, 2)
    s = stds.reshape(1, 8, *extra, 2)
    w = weights.reshape(1, 8, *extra, 2)
    xk = x[..., None]
    v = alpha**2 * s**2 + sigma**2
    logit = torch.log(w) - 0.5 * torch.log(v) - (xk - alpha * mu) ** 2 / (2 * v)
    r = torch.softmax(logit, dim=-1)
    return sigma[..., 0] * torch.sum(r * (xk - alpha * mu) / v, dim=-1)

  return fn


def ode_solution(name, x_t):
  """The exact sample at t = 1e-3 (scipy DOP853), and its distance to a finer solve."""
  from scipy.integrate import solve_ivp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  means, stds, weights = (np.asarray(a, np.float64) for a in (MEANS, STDS, WEIGHTS))
  if name == "linear":
    b0, b1 = 0.1, 20.0
    log_alpha = lambda t: -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    pieces = [(T_START, T_END, lambda t: -0.5 * t * (b1 - b0) - 0.5 * b0)]
  else:
    knots = np.linspace(0.0, 1.0, 1001)[1:]
    table = 0.5 * np.cumsum(np.log(1 - betas()))
    log_alpha = lambda t: np.interp(t, knots, table)
    slopes = np.diff(table) / np.diff(knots)
    pieces = [(knots[n + 1], knots[n], (lambda t, s=slopes[n]: s)) for n in range(998, -1, -1)]
  del torch

  def eps(x, t):
    la = log_alpha(t)
    alpha, sigma = np.exp(la), np.sqrt(1 - np.exp(2 * la))
    x = x.reshape(16, 8, 1)
    v = alpha**2 * stds**2 + sigma**2
    logit = np.log(weights) - 0.5 * np.log(v) - (x - alpha * means) ** 2 / (2 * v)
    logit -= logit.max(-1, keepdims=True)
    r = np.exp(logit) / np.exp(logit).sum(-1, keepdims=True)
    return sigma * np.sum(r * (x - alpha * means) / v, -1), sigma

  def solve(max_step):
    y = x_t.reshape(-1).copy()
    for t0, t1, dlog_alpha in pieces:
      def rhs(t, y):
        e, sigma = eps(y, t)
        return dlog_alpha(t) * (y - e.reshape(-1) / sigma)
      sol = solve_ivp(rhs, (t0, t1), y, method="DOP853", rtol=1e-13, atol=1e-13,
                      max_step=max_step)
      y = sol.y[:, -1]
    return y.reshape(16, 8)

  exact = solve(np.inf)
  fine = solve(1e-3)
  return exact, float(np.max(np.abs(exact - fine)))


def run(solver, x, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()):  # UniPC prints its choices at every step
    out = solver.sample(x, t_start=T_START, t_end=T_END, denoise_to_zero=False, **kwargs)
  if isinstance(out, tuple):
    out, inter = out
    return out, inter
  return out, None


def make(unipc_checkout, dpm_checkout):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_default_dtype(torch.float64)  # the samplers' linspace grids are then float64
  with common.on_path(unipc_checkout):
    uni = common.load_module(unipc_checkout, "uni_pc.py", "unipc_official")
  with common.on_path(dpm_checkout):
    dpm = common.load_module(dpm_checkout, "dpm_solver_pytorch.py", "dpm_solver_official")
  rs = np.random.RandomState(3)
  x_t = rs.randn(16, 8)
  eps_x = rs.randn(16, 8) * 1.5
  eps_t = np.linspace(1e-3, 1, 16)
  arrays = {"x_T": x_t, "gmm/means": np.asarray(MEANS), "gmm/stds": np.asarray(STDS),
            "gmm/weights": np.asarray(WEIGHTS), "gmm/eps_test/x": eps_x, "gmm/eps_test/t": eps_t,
            "discrete/betas": betas()}
  x4 = torch.tensor(x_t).reshape(16, 8, 1, 1)
  to2d = lambda a: common.to_numpy(a).reshape(16, 8)

  def record(sch, key, solver, counter, **kwargs):
    counter[0] = 0
    want = key in INTERMEDIATES
    out, inter = run(solver, x4, return_intermediate=want, **kwargs)
    arrays[f"{sch}/{key}"] = to2d(out)
    arrays[f"nfe/{sch}/{key}"] = np.int64(counter[0])
    if want:
      arrays[f"{sch}/intermediates/{key}"] = np.stack([to2d(a) for a in inter])

  for sch in SCHEDULES:
    ns_uni, ns_dpm = schedule(uni, sch), schedule(dpm, sch)
    t = torch.tensor(eps_t)
    arrays[f"{sch}/eps_test/alpha"] = common.to_numpy(ns_dpm.marginal_alpha(t))
    arrays[f"{sch}/eps_test/sigma"] = common.to_numpy(ns_dpm.marginal_std(t))
    arrays[f"{sch}/eps_test/lambda"] = common.to_numpy(ns_dpm.marginal_lambda(t))
    arrays[f"{sch}/eps_test/eps"] = common.to_numpy(eps_model(ns_dpm)(torch.tensor(eps_x), t))
    if sch == "discrete":
      arrays["discrete/t_array"] = common.to_numpy(ns_dpm.t_array).reshape(-1)
      arrays["discrete/log_alpha_array"] = common.to_numpy(ns_dpm.log_alpha_array).reshape(-1)
    counter = [0]
    probe = dpm.DPM_Solver(eps_model(ns_dpm), ns_dpm, algorithm_type="dpmsolver++")
    for skip in SKIPS:
      for n in STEPS:
        arrays[f"{sch}/timesteps/{skip}/n{n}"] = common.to_numpy(
            probe.get_time_steps(skip, T_START, T_END, n, "cpu"))
        for o in (2, 3):
          outer, orders = probe.get_orders_and_timesteps_for_singlestep_solver(
              n, o, skip, T_START, T_END, "cpu")
          grid = f"{sch}/dpm_singlestep_grid/o{o}/{skip}/n{n}"
          arrays[f"{grid}/timesteps_outer"] = common.to_numpy(outer)
          arrays[f"{grid}/orders"] = np.asarray(orders, np.int64)
    for variant in ("bh1", "bh2"):
      for pred in ("data", "noise"):
        solver = uni.UniPC(eps_model(ns_uni, counter), ns_uni,
                           algorithm_type=f"{pred}_prediction", variant=variant)
        for o in (1, 2, 3):
          for skip in SKIPS:
            for n in STEPS:
              for lof in (1, 0):
                record(sch, f"unipc/{variant}/{pred}/o{o}/{skip}/n{n}/lof{lof}", solver, counter,
                       steps=n, order=o, skip_type=skip, method="multistep",
                       lower_order_final=bool(lof))
    for alg in ("dpmsolver++", "dpmsolver"):
      solver = dpm.DPM_Solver(eps_model(ns_dpm, counter), ns_dpm, algorithm_type=alg)
      for skip in SKIPS:
        for n in STEPS:
          for o in (1, 2, 3):
            for lof in (1, 0):
              record(sch, f"{alg}/multistep/o{o}/{skip}/n{n}/lof{lof}", solver, counter, steps=n,
                     order=o, skip_type=skip, method="multistep", lower_order_final=bool(lof),
                     solver_type="dpmsolver")
          for o in (2, 3):
            record(sch, f"{alg}/multistep_taylor/o{o}/{skip}/n{n}/lof1", solver, counter,
                   steps=n, order=o, skip_type=skip, method="multistep", lower_order_final=True,
                   solver_type="taylor")
            for method in ("singlestep", "singlestep_fixed"):
              record(sch, f"{alg}/{method}/o{o}/{skip}/n{n}", solver, counter, steps=n, order=o,
                     skip_type=skip, method=method, solver_type="dpmsolver")
    for skip in SKIPS:
      for n in STEPS:
        arrays[f"{sch}/ddim/{skip}/n{n}"] = arrays[f"{sch}/dpmsolver/multistep/o1/{skip}/n{n}/lof1"]
    exact, selfcheck = ode_solution(sch, x_t)
    arrays[f"{sch}/ode_reference"] = exact
    arrays[f"{sch}/ode_reference_selfcheck_maxabs"] = selfcheck
  return arrays


def main():
  args = common.parser(__doc__, {"unipc": UNIPC, "dpm_solver": DPM}).parse_args()
  common.verify_checkout(args.unipc, *UNIPC, ["uni_pc.py"])
  common.verify_checkout(args.dpm_solver, *DPM, ["dpm_solver_pytorch.py"])
  tol = {f"{sch}/{alg}": 1e-10 for sch in SCHEDULES
         for alg in ("unipc", "dpmsolver++", "dpmsolver", "ddim", "intermediates", "eps_test")}
  tol.update({f"{sch}/ode_reference": 1e-11 for sch in SCHEDULES})
  tol.update({f"{sch}/ode_reference_selfcheck_maxabs": 10.0 for sch in SCHEDULES})
  common.finish([common.save_or_check(args.out / "samplers_gmm.npz",
                                      make(args.unipc, args.dpm_solver), args.check, tol)])


if __name__ == "__main__":
  main()
