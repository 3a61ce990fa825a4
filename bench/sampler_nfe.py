"""Sampler accuracy vs NFE on analytic data, jdpm's default final-step rule vs the authors' rule.

The data are the 8-D Gaussian mixture of tests/data/samplers_gmm.npz plus one Gaussian coordinate
N(0.3, 0.5^2) (x_T from -3 to 3); their noise prediction is exact (`jdpm.samplers.gaussian_mixture_eps`),
so every sampler's output is compared with the exact solution of the diffusion ODE (DOP853 at rtol 1e-12
for the mixture, closed form for the Gaussian), in float64. The error is the max |x - exact| over the 16
samples, for the mixture and the Gaussian separately.

Three schedules: the continuous linear VP-SDE (beta 0.1 .. 20), the discrete linear betas (1e-4 .. 0.02)
and Stable Diffusion's scaled-linear betas (0.00085 .. 0.012), 1000 steps each.

  * Table 1 (per schedule and grid, t: 1 -> 1e-3): error vs NFE, `default / authors` per method
    (lower_order_final=True vs "authors").
  * Table 2 (linear VP, every grid, t_end 1e-3 .. 1e-12, 10-50 steps): the default rule's largest error, and
    its largest ratio to DDIM's error at the same NFE.
  * Table 3 (grid choice): the three grids side by side for a pixel-like case (linear betas), a latent-like
    one (SD betas) and guided sampling (SD betas, classifier-free guidance eps_u + s (eps_c - eps_u) towards
    a conditional mixture whose weight sits on one mode; the exact guided ODE uses the same combination of
    data predictions).

  python bench/sampler_nfe.py [--no-record]
"""

import argparse
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jdpm  # noqa: E402
from bench import common  # noqa: E402
from jdpm.diffusion import VPSchedule  # noqa: E402
from jdpm.samplers import analytic  # noqa: E402
from jdpm.samplers import sampling  # noqa: E402

NFES = (5, 6, 8, 10, 15, 20, 30, 50)
METHODS = {
    "DPM-Solver++(2M)": dict(method="dpm_solver++", order=2),
    "DPM-Solver++(3M)": dict(method="dpm_solver++", order=3),
    "DPM-Solver-3M": dict(method="dpm_solver", order=3),
    "UniPC-2 bh1": dict(method="unipc", order=2, variant="bh1"),
    "UniPC-2 bh2": dict(method="unipc", order=2, variant="bh2"),
    "UniPC-3 bh1": dict(method="unipc", order=3, variant="bh1"),
    "UniPC-3 bh2": dict(method="unipc", order=3, variant="bh2"),
    "UniPC-3 bh2 noise": dict(method="unipc", order=3, variant="bh2", prediction="noise"),
}
SCHEDULES = {
    "linear VP (continuous)": lambda: VPSchedule.linear(beta_0=0.1, beta_1=20.0),
    "linear betas (discrete)": lambda: VPSchedule.discrete(np.linspace(1e-4, 0.02, 1000)),
    "SD scaled-linear (discrete)": lambda: VPSchedule.discrete(
        np.linspace(0.00085**0.5, 0.012**0.5, 1000)**2),
}
GAUSS = (0.3, 0.5)
T_ENDS = tuple(10.0**-k for k in range(3, 13))
SWEEP_STEPS = (10, 15, 20, 30, 50)


def _guided_eps(sched, uncond, cond, scale, x, t):
  eps_u = jdpm.samplers.gaussian_mixture_eps(sched, *uncond, x, t)
  return eps_u + scale * (jdpm.samplers.gaussian_mixture_eps(sched, *cond, x, t) - eps_u)


class Problem:
  """The mixture + Gaussian data (as one 9-coordinate mixture), x_T, and cached exact solutions.

  With `guidance` = s, the model is guided towards `cond` (each coordinate's weight on its first mode,
  the Gaussian coordinate shifted to N(0.6, 0.4^2)) with eps_u + s (eps_c - eps_u).
  """

  def __init__(self, data, guidance=None):
    with np.load(data) as f:
      g = dict(f)
    means = np.concatenate([g["gmm/means"], [[GAUSS[0]] * 2]])
    stds = np.concatenate([g["gmm/stds"], [[GAUSS[1]] * 2]])
    weights = np.concatenate([g["gmm/weights"], [[0.5, 0.5]]])
    self.uncond = (means, stds, weights)
    cond_means, cond_stds = means.copy(), stds.copy()
    cond_means[8], cond_stds[8] = 0.6, 0.4
    cond_weights = np.tile([0.95, 0.05], (9, 1))
    self.cond = (cond_means, cond_stds, cond_weights)
    self.guidance = guidance
    self.x_T = np.concatenate([g["x_T"], np.linspace(-3.0, 3.0, 16)[:, None]], axis=1)
    self._exact = {}

  def x0(self, x, lam):
    x0_u = analytic.gaussian_mixture_x0(*self.uncond, x, lam)
    if self.guidance is None:
      return x0_u
    # eps and x0 are affine in each other at fixed (x, lam): the same combination guides x0.
    return x0_u + self.guidance * (analytic.gaussian_mixture_x0(*self.cond, x, lam) - x0_u)

  def exact(self, name, sched, t_end):
    if (name, t_end) not in self._exact:
      with jax.enable_x64(True):
        lam0, lam1 = (float(sched.lambda_(jnp.float64(t))) for t in (1.0, t_end))
      exact = analytic.ode_solution(self.x0, self.x_T, lam0, lam1)
      if self.guidance is None:  # the Gaussian coordinate in closed form
        exact[:, 8:] = analytic.gaussian_ode_solution(*GAUSS, self.x_T[:, 8:], lam0, lam1)
      self._exact[(name, t_end)] = exact
    return self._exact[(name, t_end)]

  def noise_fn(self, sched):
    if self.guidance is None:
      return jdpm.samplers.gaussian_mixture_noise_fn(sched, *self.uncond)
    return jax.tree_util.Partial(_guided_eps, sched, self.uncond, self.cond, self.guidance)

  def errors(self, name, sched, t_end, **kwargs):
    """(max error on the mixture, max error on the Gaussian)."""
    noise_fn = self.noise_fn(sched)
    with jax.enable_x64(True), warnings.catch_warnings():
      warnings.simplefilter("ignore", sampling.LongFinalStepWarning)  # the authors' rule, measured on purpose
      # One compiled program for every method and NFE (padded loop and history).
      x = jdpm.samplers.sample(noise_fn, sched, jnp.asarray(self.x_T), t_start=1.0, t_end=t_end,
                               history_size=4, max_evals=max(NFES), **kwargs)
    diff = np.abs(np.asarray(x) - self.exact(name, sched, t_end))
    return float(diff[:, :8].max()), float(diff[:, 8].max())


def nfe_tables(problem):
  """Table 1: one markdown table per schedule and grid; also returns the cases where a method with the
  default rule is less accurate than DDIM at 10+ NFE."""
  lines, losses = [], []
  for name, make in SCHEDULES.items():
    sched = make()
    for skip in ("time_uniform", "logSNR"):
      lines += [f"\n**{name}, {skip} grid**: max error (mixture; Gaussian), `default / authors`\n",
                "| NFE | DDIM | " + " | ".join(METHODS) + " |", "|---:|" + "---:|" * (len(METHODS) + 1)]
      for nfe in NFES:
        ddim = problem.errors(name, sched, 1e-3, method="ddim", steps=nfe, skip_type=skip)
        cells = [f"{ddim[0]:.3g}; {ddim[1]:.3g}"]
        for method, kwargs in METHODS.items():
          new = problem.errors(name, sched, 1e-3, steps=nfe, skip_type=skip, **kwargs)
          old = problem.errors(name, sched, 1e-3, steps=nfe, skip_type=skip, lower_order_final="authors",
                               **kwargs)
          worse = new[0] > ddim[0] or new[1] > ddim[1]
          if worse and nfe >= 10:
            losses.append(f"{name} {skip} {nfe} NFE {method}")
          mark = "**" if worse else ""
          cells.append(f"{mark}{new[0]:.3g}; {new[1]:.3g}{mark} / {old[0]:.3g}; {old[1]:.3g}")
        lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
  return "\n".join(lines), losses


def t_end_table(problem):
  """Table 2: the default rule across t_end on the linear VP schedule, over 10, 15, 20, 30 and 50 steps."""
  name = "linear VP (continuous)"
  sched = SCHEDULES[name]()
  lines = ["\n**linear VP, t_end sweep, 10-50 steps** (10, 15, 20, 30, 50): per cell the largest max error "
           "over those step counts (the worse of mixture and Gaussian) and, in brackets, the largest ratio to "
           "DDIM's error at the same NFE (> 1 in bold)\n",
           "| grid | t_end | DDIM | " + " | ".join(METHODS) + " |",
           "|---|---:|---:|" + "---:|" * len(METHODS)]
  worst = {}
  for skip in ("time_uniform", "time_quadratic", "logSNR"):
    for t_end in T_ENDS:
      ddim = {n: problem.errors(name, sched, t_end, method="ddim", steps=n, skip_type=skip)
              for n in SWEEP_STEPS}
      cells = [f"{max(max(e) for e in ddim.values()):.3g}"]
      for method, kwargs in METHODS.items():
        errs = {n: problem.errors(name, sched, t_end, steps=n, skip_type=skip, **kwargs) for n in SWEEP_STEPS}
        ratio = max(max(errs[n][0] / ddim[n][0], errs[n][1] / ddim[n][1]) for n in SWEEP_STEPS)
        worst[method] = max(worst.get(method, 0.0), ratio)
        cell = f"{max(max(e) for e in errs.values()):.3g} ({ratio:.2f})"
        cells.append(f"**{cell}**" if ratio > 1 else cell)
      lines.append(f"| {skip} | {t_end:.0e} | " + " | ".join(cells) + " |")
  lines.append("| worst ratio | | | " + " | ".join(f"{worst[m]:.2f}" for m in METHODS) + " |")
  return "\n".join(lines)


GRID_CASES = {
    "pixel-like (linear betas)": ("linear betas (discrete)", None),
    "latent-like (SD betas)": ("SD scaled-linear (discrete)", None),
    "guided, s = 4 (SD betas)": ("SD scaled-linear (discrete)", 4.0),
    "guided, s = 7.5 (SD betas)": ("SD scaled-linear (discrete)", 7.5),
}
GRID_METHODS = ("DDIM", "DPM-Solver++(2M)", "UniPC-2 bh2", "UniPC-3 bh2")


def grid_table(data):
  """Table 3: the three grids side by side (default rule, t_end = 1e-3), best grid per row in bold."""
  skips = ("logSNR", "time_uniform", "time_quadratic")
  lines = ["\n**Grid choice** (t: 1 -> 1e-3, default rule): max error, the worse of mixture and Gaussian; "
           "best grid in bold\n", "| case | NFE | method | " + " | ".join(skips) + " |",
           "|---|---:|---|---:|---:|---:|"]
  for case, (sched_name, guidance) in GRID_CASES.items():
    problem, sched = Problem(data, guidance), SCHEDULES[sched_name]()
    for nfe in (5, 10, 20):
      for method in GRID_METHODS:
        kwargs = dict(method="ddim") if method == "DDIM" else METHODS[method]
        errs = [max(problem.errors(case, sched, 1e-3, steps=nfe, skip_type=skip, **kwargs)) for skip in skips]
        best = int(np.argmin(errs))
        cells = [f"**{e:.3g}**" if i == best else f"{e:.3g}" for i, e in enumerate(errs)]
        lines.append(f"| {case} | {nfe} | {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=str(common.ROOT / "tests" / "data" / "samplers_gmm.npz"))
  parser.add_argument("--no-record", action="store_true", help="print only, do not append to BENCHMARKS.md")
  args = parser.parse_args()
  problem = Problem(args.data)
  body, losses = nfe_tables(problem)
  sweep = t_end_table(problem)
  grids = grid_table(args.data)
  if losses:
    summary = "With the default rule, at 10-50 NFE (t_end = 1e-3), less accurate than DDIM: " + "; ".join(losses)
  else:
    summary = ("With the default rule, at 10-50 NFE (t_end = 1e-3), every method is at least as accurate as DDIM "
               "on every schedule and grid")
  text = ("8-D Gaussian mixture (tests/data/samplers_gmm.npz) + a Gaussian N(0.3, 0.5^2) coordinate, 16 "
          "samples, float64, errors against the exact ODE solution; `default` = lower_order_final=True, "
          "`authors` = lower_order_final=\"authors\"; bold: less accurate than DDIM.\n"
          f"{body}\n\n{summary}.\n{sweep}\n{grids}")
  common.record("Sampler error vs NFE: final-step rule, discrete and continuous schedules", text,
                append=not args.no_record)


if __name__ == "__main__":
  main()
