"""Fast diffusion samplers with no Flax inside: UniPC, DPM-Solver(++), DDIM behind one jit-compiled `sample`.

  x0 = jdpm.samplers.sample(noise_fn, sched, x_T, method="unipc", steps=10, order=3, variant="bh2",
                            prediction="data", skip_type="logSNR", lower_order_final=True,
                            t_start=1.0, t_end=1e-3)

`make_noise_fn` turns a denoiser `apply(variables, x, t, y)` (noise / x0 / v outputs, learned sigma,
discrete timesteps, classifier-free guidance with a channel subset and a guidance window) into the
noise_fn(x, t) the samplers take.
"""

from jdpm.samplers.analytic import gaussian_mixture_eps, gaussian_mixture_noise_fn
from jdpm.samplers.guidance import (Guidance, NoiseFn, drop_condition_guidance, guided_nfe, guided_until,
                                    make_guidance, make_noise_fn)
from jdpm.samplers.sampling import METHODS, LongFinalStepWarning, SamplingPlan, make_plan, sample
from jdpm.samplers.thresholding import dynamic_thresholding
from jdpm.samplers.timesteps import SKIP_TYPES, singlestep_orders
