"""Global convergence orders of the samplers on the analytic Gaussian mixture (exact ODE solution known).

The mixture has independent coordinates, so the 16 x 8 entries of x_T are 128 independent one-dimensional
ODE solves. A few of them pass close to the boundary between two narrow modes, where the flow is stiff and
the asymptotic regime starts only beyond ~1000 steps; the median error over the 128 solves is in its
asymptotic regime from ~100 steps. The order is the least-squares slope of log(median error) against
log(steps) on logSNR grids from t = 1 to 1e-3 with lower_order_final off, at 160, 320 and 640 steps.

Reference data: samplers_gmm.npz, written by tools/make_sampler_reference.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdpm
from jdpm.diffusion import VPSchedule

STEPS = (160, 320, 640)

CASES = [
    ("DDIM", dict(method="ddim"), 1.0),
    ("DPM-Solver++(2M)", dict(method="dpm_solver++", order=2), 2.0),
    ("UniPC-1 bh1", dict(method="unipc", order=1, variant="bh1"), 2.0),
    ("UniPC-1 bh2", dict(method="unipc", order=1, variant="bh2"), 2.0),
    ("UniPC-2 bh1", dict(method="unipc", order=2, variant="bh1"), 3.0),
    ("UniPC-2 bh2", dict(method="unipc", order=2, variant="bh2"), 3.0),
    ("UniPC-3 bh1", dict(method="unipc", order=3, variant="bh1"), 4.0),
    ("UniPC-3 bh2", dict(method="unipc", order=3, variant="bh2"), 4.0),
    ("UniPC-3 bh2 noise", dict(method="unipc", order=3, variant="bh2", prediction="noise"), 4.0),
]


@pytest.fixture(scope="module")
def golden(data_dir):
  with np.load(data_dir / "samplers_gmm.npz") as f:
    return dict(f)


def measured_order(golden, sched_name, kwargs, history_size=4, steps_list=STEPS, reduce=np.median):
  sched = (VPSchedule.linear(beta_0=0.1, beta_1=20.0) if sched_name == "linear"
           else VPSchedule.discrete(golden["discrete/betas"]))
  noise_fn = jdpm.samplers.gaussian_mixture_noise_fn(sched, golden["gmm/means"], golden["gmm/stds"],
                                                     golden["gmm/weights"])
  errors = []
  with jax.enable_x64(True):
    x_T = jnp.asarray(golden["x_T"])
    for steps in steps_list:
      # One compiled program for all step counts and orders.
      x = jdpm.samplers.sample(noise_fn, sched, x_T, steps=steps, skip_type="logSNR", lower_order_final=False,
                               t_start=1.0, t_end=1e-3, history_size=history_size, max_evals=max(steps_list),
                               **kwargs)
      errors.append(reduce(np.abs(np.asarray(x) - golden[f"{sched_name}/ode_reference"])))
  slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
  return slope, errors


@pytest.mark.parametrize("sched_name", ["linear", "discrete"])
def test_global_orders(golden, sched_name):
  report = []
  for name, kwargs, expected in CASES:
    slope, errors = measured_order(golden, sched_name, kwargs)
    report.append((name, slope, expected))
    print(f"{sched_name} {name}: order {slope:.3f} (expected {expected}); median errors "
          + " ".join(f"{e:.2e}" for e in errors))
  bad = [r for r in report if abs(r[1] - r[2]) > 0.2]
  assert not bad, bad


def test_unipc_general_order_4(golden):
  """Order 4 comes out of the same B(h) formula: UniP-4 + UniC-4 converge with order 5.

  Its median error falls faster than h^5 up to 640 steps; the max error over the 128 solves is already
  asymptotic from 320 steps (at 1280 steps it is ~3e-10, far above float64 round-off).
  """
  slope, errors = measured_order(golden, "linear", dict(method="unipc", order=4, variant="bh2"), history_size=5,
                                 steps_list=(320, 640, 1280), reduce=np.max)
  print(f"UniPC-4 bh2: order {slope:.3f}; max errors " + " ".join(f"{e:.2e}" for e in errors))
  assert abs(slope - 5.0) < 0.2, slope
