"""Training and inference throughput of a denoiser, and its model FLOP utilisation (MFU).

  python bench/train_throughput.py                                   # DiT-S/2, batch 8 and 32, fp32
  python bench/train_throughput.py --model=DiT-XL/2 --batch=64 --dtype=bfloat16   # on a GPU / TPU

Model FLOPs per image: 2 x the forward multiply-accumulates (from `jdpm.models.count_macs`, the papers'
convention: matmuls and convolutions, attention included); a training step costs 3 forwards (forward +
backward). MFU = achieved model FLOP/s / peak FLOP/s, with the peak measured in the same run by a large
matmul in the same dtype. The training step is jdpm's real one (diffusion loss with learned sigma, AdamW,
EMA, and on CPU the trainer's automatic micro-batches, `jdpm.parallel.cpu_grad_accum_steps`), on 32x32x4
latents as in the papers. Inference is the network call as jdpm's samplers make it (on CPU over cache-sized
micro-batches, `jdpm.parallel.micro_batched`).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from jdpm import huge_pages  # noqa: E402
import jdpm  # noqa: E402
from bench import common  # noqa: E402
from configs import common as config_common  # noqa: E402
from jdpm import diffusion, parallel  # noqa: E402
from jdpm.training.objectives import DenoisingObjective  # noqa: E402
from jdpm.training.state import create_train_state  # noqa: E402
from jdpm.training.step import jit_update_fn, make_update_fn  # noqa: E402


def setup(model_name, batch, dtype="float32", objective_factory=None, **model_kwargs):
  """Everything a timing or profile of one model needs: its jitted forward and training step with inputs.

  Returns a dict: model, macs (forward MACs per image), forward (jitted variables, x -> output), variables,
  x (B, H, W, C) noise input, update (jitted state, batch -> (state, metrics): jdpm's real step with the
  diffusion loss, AdamW and EMA), state (on the mesh) and data (the batch dict).
  """
  model = jdpm.models.create(model_name, **model_kwargs)
  mesh = parallel.make_mesh()
  shape = (batch, model.input_size, model.input_size, model.in_channels)
  rng = jax.random.key(0)
  x = jax.random.normal(rng, shape)
  y = jnp.arange(batch) % model.num_classes
  t = jnp.arange(batch) * 7 % 1000
  variables = jax.jit(model.init)(rng, x, t, y)
  compute_dtype = jnp.bfloat16 if dtype == "bfloat16" else None
  # As jdpm's samplers call the network (`jdpm.generate.sample_images`): on one device here.
  apply = parallel.micro_batched(model.apply, parallel.cpu_micro_batch(model, model.sample_shape, y))
  forward = jax.jit(lambda v, x: apply(jdpm.training.step.cast_floats(v, compute_dtype),
                                       x.astype(compute_dtype or x.dtype), t, y))
  objective = (objective_factory or DenoisingObjective)(model=model, diffusion=diffusion.create_diffusion(""))
  optimizer = optax.adamw(1e-4)
  state = create_train_state(variables["params"], optimizer, rng, extra=objective.init_extra())
  shardings = jax.tree.map(lambda a: parallel.param_sharding(a.shape, mesh), state)
  accum = parallel.cpu_grad_accum_steps(model, batch // jax.device_count())  # the trainer's default ("auto")
  # As the trainer: the norm metrics on its logging steps only (the papers' configs' log_every).
  update = make_update_fn(objective, optimizer, compute_dtype=compute_dtype, grad_accum_steps=accum,
                          norms_every=config_common.base_config().log_every)
  update = jit_update_fn(update, shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh))
  return dict(model=model, macs=jdpm.models.count_macs(model), forward=forward, variables=variables, x=x,
              update=update, state=jax.device_put(state, shardings),
              data={"image": np.asarray(x), "label": np.asarray(y, np.int32)})


def measure(model_name, batch, dtype, min_time, objective_factory=None, **model_kwargs):
  """(train img/s, inference img/s, forward GMACs per image) for one model and batch size."""
  s = setup(model_name, batch, dtype, objective_factory, **model_kwargs)
  infer_s = common.time_fn(s["forward"], s["variables"], s["x"], min_time=min_time)
  holder = {"state": s["state"]}

  def train_step(batch):
    holder["state"], metrics = s["update"](holder["state"], batch)
    return metrics

  train_s = common.time_fn(train_step, s["data"], min_time=min_time)
  return batch / train_s, batch / infer_s, s["macs"] / 1e9


def mfu(images_per_s, gmacs, peak, forwards=1):
  """Model FLOP utilisation at `forwards` forward passes per image (a training step counts 3: forward +
  backward), 2 FLOPs per multiply-accumulate."""
  return images_per_s * forwards * 2 * gmacs * 1e9 / peak


def run(args):
  """Measures every batch of `args` in this process; (peak FLOP/s, forward GMACs, [(batch, train img/s, train
  MFU, inference img/s, inference MFU)])."""
  peak = common.matmul_peak_flops(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  results = []
  for b in args.batch:
    train_ips, infer_ips, gmacs = measure(args.model, b, args.dtype, args.min_time)
    results.append((b, train_ips, mfu(train_ips, gmacs, peak, 3), infer_ips, mfu(infer_ips, gmacs, peak)))
  return peak, gmacs, results


def compare_cpu_devices(args):
  """One subprocess per CPU device count, alternating over `args.rounds` rounds; one table (median per row)."""
  import json
  import statistics
  import subprocess
  runs = {n: [] for n in args.cpu_devices}
  for _ in range(args.rounds):
    for n in args.cpu_devices:
      cmd = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--min-time",
             str(args.min_time), "--cpu-devices", str(n), "--json", "--batch", *map(str, args.batch)]
      out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
      runs[n].append(json.loads(out.strip().splitlines()[-1]))
  # The matmul peak of a process varies between processes by up to 25% on a shared machine, whatever its
  # device count: MFU is against the highest peak of the run, the same for every row.
  peak = max(r["peak"] for n in runs for r in runs[n])
  gmacs = runs[args.cpu_devices[0]][0]["gmacs"]
  rows = ["| model | batch | CPU devices | train img/s | train MFU | inference img/s | inference MFU |",
          "|---|---|---|---|---|---|---|"]
  for i, b in enumerate(args.batch):
    for n in args.cpu_devices:
      med = lambda k: statistics.median(r["results"][i][k] for r in runs[n])  # noqa: E731
      rows.append(f"| {args.model} | {b} | {n} | {med(1):.2f} | {mfu(med(1), gmacs, peak, 3):.1%} | "
                  f"{med(3):.2f} | {mfu(med(3), gmacs, peak):.1%} |")
  peaks = ", ".join(f"{n} device(s): " + " / ".join(f"{r['peak'] / 1e9:.0f}" for r in runs[n]) for n in runs)
  return (f"CPU device counts compared in one run: {args.rounds} alternating rounds, a fresh process each, median "
          f"per row. Peak: the highest {args.dtype} {common.peak_matmul_size()}^3 matmul rate of the run's "
          f"processes, {peak / 1e9:.0f} GFLOP/s (each process's, GFLOP/s: {peaks}). Forward: {gmacs:.2f} GMACs per "
          f"image; training counts 3 forwards. Inference runs on one device in every process.\n\n" + "\n".join(rows))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--min-time", type=float, default=10.0, help="seconds of timing per measurement")
  p.add_argument("--cpu-devices", type=int, nargs="+", default=None,
                 help="CPU only: split the CPU into this many JAX devices (the step is data-parallel over them); "
                      "several counts: compare them, one process each")
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds when comparing --cpu-devices counts")
  p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one line of results, for the comparison
  p.add_argument("--no-record", action="store_true", help="print only, do not append to BENCHMARKS.md")
  args = p.parse_args()

  if args.cpu_devices and len(args.cpu_devices) > 1:
    body, title = compare_cpu_devices(args), f"Training throughput by CPU device count: {args.model}"
  else:
    if args.cpu_devices and not parallel.use_cpu_devices(args.cpu_devices[0]):
      sys.exit(f"--cpu-devices={args.cpu_devices[0]}: the CPU device count is already fixed (XLA_FLAGS?).")
    peak, gmacs, results = run(args)
    if args.json:
      import json
      print(json.dumps({"peak": peak, "gmacs": gmacs, "results": results}))
      return
    rows = ["| model | batch | dtype | devices | train img/s | train MFU | inference img/s | inference MFU |",
            "|---|---|---|---|---|---|---|---|"]
    for b, train_ips, train_mfu, infer_ips, infer_mfu in results:
      rows.append(f"| {args.model} | {b} | {args.dtype} | {jax.device_count()} | {train_ips:.2f} | {train_mfu:.1%} | "
                  f"{infer_ips:.2f} | {infer_mfu:.1%} |")
    body = (f"Peak ({args.dtype} {common.peak_matmul_size()}^3 matmul, same run): {peak / 1e9:.1f} GFLOP/s. "
            f"Forward: {gmacs:.2f} GMACs per image; training counts 3 forwards.\n\n" + "\n".join(rows))
    title = f"Training throughput and MFU: {args.model}"
  common.record(title, body, append=not args.no_record)


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
