"""Stable Diffusion UNet speed: jdpm (JAX) vs diffusers (PyTorch) in the same run, same machine and threads.

  python bench/unet_throughput.py                              # SD1.5-UNet, 64x64x4 latents, fp32, CPU
  python bench/unet_throughput.py --steps 20 --batches 1 2 --torch-python /path/to/torch/env/bin/python
  python bench/unet_throughput.py --dtype bfloat16 --no-torch   # e.g. on a GPU without torch

Measures (1) one UNet forward at batch 1 and batch 2 (the classifier-free-guidance batch of one image),
and (2) a text-to-image denoising loop: UniPC order 2 (bh2), `--steps` steps with guidance (a batch-2 UNet
call per step): jdpm's compiled `jdpm.samplers.sample` against diffusers' UniPCMultistepScheduler driven by a
Python loop, as its pipelines do. Weights are random (nothing is downloaded); the speed does not depend on
them. The PyTorch side runs in a subprocess with `--torch-python` (torch and diffusers are never imported by
jdpm); both sides use all the cores (`torch.set_num_threads(os.cpu_count())`). Compilation is excluded
from jdpm's times and reported separately. The ratio is diffusers' time over jdpm's (> 1: jdpm is faster).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

TORCH_WORKER = "--torch-worker"


def torch_worker(spec):
  """Runs in the torch environment: times diffusers' UNet forward and UniPC loop; prints JSON."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DConditionModel, UniPCMultistepScheduler  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  unet = UNet2DConditionModel(**spec["config"]).to(device=device, dtype=dtype).eval()
  side, channels, context_dim = spec["side"], spec["channels"], spec["context_dim"]
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def timed(fn, min_time, min_iters=2, warmup=True):
    if warmup:
      fn()
      sync()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < min_time:
      fn()
      sync()
      n += 1
    return (time.perf_counter() - start) / n

  results = {}
  with torch.inference_mode():
    for batch in spec["batches"]:
      x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
      context = torch.randn(batch, 77, context_dim, device=device, dtype=dtype)
      t = torch.full((batch,), 500, device=device)
      results[f"forward_{batch}"] = timed(lambda: unet(x, t, encoder_hidden_states=context), spec["min_time"])
    if spec["steps"]:
      scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          solver_order=2, solver_type="bh2")
      context = torch.randn(2, 77, context_dim, device=device, dtype=dtype)

      def loop():
        scheduler.set_timesteps(spec["steps"])
        x = torch.randn(1, channels, side, side, device=device, dtype=dtype)
        for t in scheduler.timesteps:
          eps = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
          cond, uncond = eps.chunk(2)
          x = scheduler.step(uncond + 7.5 * (cond - uncond), t, x).prev_sample
        return x

      # The forwards above warmed the batch-2 UNet call up; one loop is timed.
      results["loop"] = timed(loop, 0.0, min_iters=1, warmup=False)
  print(json.dumps(results))


def main():
  if TORCH_WORKER in sys.argv:
    torch_worker(json.loads(sys.argv[sys.argv.index(TORCH_WORKER) + 1]))
    return

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  import jdpm  # pylint: disable=import-outside-toplevel
  from bench import common  # pylint: disable=import-outside-toplevel
  from jdpm import diffusion, samplers  # pylint: disable=import-outside-toplevel
  from jdpm.models import unet as unet_lib  # pylint: disable=import-outside-toplevel

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="SD1.5-UNet")
  p.add_argument("--side", type=int, default=64, help="latent side (64: 512x512 images)")
  p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
  p.add_argument("--steps", type=int, default=20, help="denoising-loop steps (0: skip the loop)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--min-time", type=float, default=10.0)
  p.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", ""),
                 help="python of an environment with torch and diffusers (default $TORCH_PYTHON)")
  p.add_argument("--no-torch", action="store_true", help="time jdpm only")
  p.add_argument("--no-record", action="store_true")
  args = p.parse_args()

  dtype = jnp.dtype(args.dtype)
  model = jdpm.models.create(args.model, dtype=dtype)
  abstract = unet_lib.abstract_variables(model)
  # Random weights from the shapes (a Flax init of 860M parameters compiles slowly on a CPU):
  # kernels N(0, 1/fan_in), norm scales 1, biases 0. The timing does not depend on the values.
  rng = np.random.default_rng(0)

  def leaf(path, s):
    name = path[-1].key
    if name == "scale":
      return jnp.ones(s.shape, s.dtype)
    if name == "bias":
      return jnp.zeros(s.shape, s.dtype)
    fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(s.shape, np.float32) / math.sqrt(fan_in))

  variables = jax.tree_util.tree_map_with_path(leaf, abstract)
  channels, context_dim = model.in_channels, model.context_dim
  rows, jdpm_times = [], {}
  forward = jax.jit(lambda v, x, t, c: model.apply(v, x, t, c))
  for batch in args.batches:
    x = jax.random.normal(jax.random.key(1), (batch, args.side, args.side, channels))
    c = jax.random.normal(jax.random.key(2), (batch, 77, context_dim))
    t = jnp.full((batch,), 500.0)
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, x, t, c))
    compile_s = time.perf_counter() - start
    jdpm_times[f"forward_{batch}"] = common.time_fn(forward, variables, x, t, c, warmup=0,
                                                    min_time=args.min_time, min_iters=2)
    rows.append((f"UNet forward, batch {batch}", f"forward_{batch}", f"compile {compile_s:.1f} s"))
  if args.steps:
    sched = diffusion.VPSchedule.discrete(jdpm.convert.diffusers.scheduler_betas(
        dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")))
    context = jax.random.normal(jax.random.key(3), (1, 77, context_dim))
    noise_fn = samplers.make_noise_fn(model.apply, variables, sched, y=context, guidance_scale=7.5,
                                      null=jnp.zeros((77, context_dim)))
    x_T = jax.random.normal(jax.random.key(4), (1, args.side, args.side, channels))
    run = lambda x: samplers.sample(noise_fn, sched, x, method="unipc", order=2, variant="bh2",
                                    steps=args.steps)
    start = time.perf_counter()
    jax.block_until_ready(run(x_T))
    compile_s = time.perf_counter() - start
    jdpm_times["loop"] = common.time_fn(run, x_T, warmup=0, min_time=0.0, min_iters=1)
    rows.append((f"{args.steps}-step UniPC-2 loop with CFG (batch 1 image)", "loop",
                 f"compile {compile_s:.1f} s; per step {jdpm_times['loop'] / args.steps:.3f} s"))

  torch_times = {}
  if not args.no_torch:
    if not args.torch_python:
      raise SystemExit("Give --torch-python (an environment with torch and diffusers), or --no-torch.")
    config = {k: v for k, v in unet_lib.PRESETS[args.model].items() if k != "class_name"}
    spec = dict(config=config, side=args.side, channels=channels, context_dim=context_dim,
                batches=args.batches, steps=args.steps, dtype=args.dtype, min_time=args.min_time)
    result = subprocess.run([args.torch_python, __file__, TORCH_WORKER, json.dumps(spec)],
                            capture_output=True, text=True)
    if result.returncode:
      raise SystemExit(f"The diffusers worker failed:\n{result.stderr[-3000:]}")
    torch_times = json.loads(result.stdout.strip().splitlines()[-1])

  lines = [f"{args.model}, ({args.side}, {args.side}, {channels}) latents, context (77, {context_dim}), "
           f"{args.dtype}, random weights. Ratio = diffusers time / jdpm time (> 1: jdpm faster).", "",
           "| measurement | jdpm s | diffusers s | ratio | notes |", "|---|---:|---:|---:|---|"]
  for label, key, note in rows:
    theirs = torch_times.get(key)
    ratio = f"{theirs / jdpm_times[key]:.2f}x" if theirs else "-"
    lines.append(f"| {label} | {jdpm_times[key]:.3f} | {f'{theirs:.3f}' if theirs else '-'} | {ratio} | {note} |")
  body = "\n".join(lines)
  common.record(f"UNet throughput: {args.model} jdpm vs diffusers ({args.dtype}, {jax.default_backend()})",
                body, append=not args.no_record)


if __name__ == "__main__":
  main()
