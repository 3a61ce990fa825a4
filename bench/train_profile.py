"""Where a training step's time goes: a `jax.profiler` trace of jdpm's jitted step, op durations summed by kind.

  python bench/train_profile.py --model=DiT-S/2 --batch 8 32
  python bench/train_profile.py --model=DiT --model-kwargs='{"hidden_size": 128, "depth": 4, "num_heads": 4,
      "patch_size": 4, "input_size": 32, "in_channels": 3, "num_classes": 10}'     # the tiny DiT

The step is `bench/train_throughput.py`'s (jdpm's real update: diffusion loss with learned sigma, AdamW,
EMA). Every XLA op of the trace is mapped, through the compiled HLO's metadata, to the JAX operation it
came from, and grouped: matmuls (dot_general, convolution) of the forward and of the backward pass; the
other arithmetic of each pass (norms, GELU, softmax, modulation, their gradients); layout (transpose,
copy, pad, reshape, slicing); and everything outside the model (optimizer, EMA, loss, random draws).

"busy" is the summed op time over the step's wall time times the cores: ops that run one at a time on a
2-core machine read 50%. XLA's profiler events carry the op's name only; the kind comes from the HLO.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from jdpm import huge_pages  # noqa: E402
from bench import common  # noqa: E402
from bench import train_throughput  # noqa: E402
from jdpm import fields  # noqa: E402

MATMULS = ("dot_general", "conv_general_dilated")
LAYOUT = ("transpose", "copy", "pad", "reshape", "concatenate", "slice", "dynamic_slice", "gather",
          "broadcast_in_dim", "squeeze", "expand_dims", "rev")
KINDS = ("forward matmul", "backward matmul", "forward other", "backward other", "layout", "outside the model")


def hlo_sources(hlo_text):
  """{HLO instruction name: the JAX op_name of its metadata} of a compiled module's text."""
  pattern = re.compile(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"")
  return {m.group(1): m.group(2) for m in pattern.finditer(hlo_text)}


def kind_of(op_name):
  """One of KINDS for a JAX op_name such as 'jit(f)/transpose(jvp(DiT))/blocks_0/mlp/fc1/dot_general'."""
  primitive = op_name.rsplit("/", 1)[-1]
  in_model = "jvp(" in op_name
  if not in_model:
    return "outside the model"
  if primitive in LAYOUT:
    return "layout"
  backward = "transpose(jvp(" in op_name
  if primitive in MATMULS:
    return "backward matmul" if backward else "forward matmul"
  return "backward other" if backward else "forward other"


def trace_ops(directory):
  """[(op name, duration µs, thread id)] of the perfetto trace written under `directory`."""
  path = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  return [(e["name"], e["dur"], e.get("tid")) for e in events if e.get("ph") == "X" and "dur" in e]


def profile(model_name, batch, steps=5, **model_kwargs):
  """Per-kind milliseconds per step, the wall time per step and the busy fraction of one training step."""
  s = train_throughput.setup(model_name, batch, **model_kwargs)
  update, state, data = s["update"], s["state"], s["data"]
  sources = hlo_sources(update.lower(state, data).compile().as_text())
  for _ in range(3):  # compile and warm up
    state, metrics = update(state, data)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = update(state, data)
  jax.block_until_ready(metrics)
  wall_ms = (time.perf_counter() - start) / steps * 1e3
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(steps):
      state, metrics = update(state, data)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    ops = [op for op in trace_ops(directory) if op[0] in sources]
  per_kind = collections.Counter()
  top = collections.Counter()
  for name, duration, _ in ops:
    per_kind[kind_of(sources[name])] += duration / steps / 1e3
    top[re.sub(r"blocks_\d+", "blocks_*", sources[name].split(")/", 1)[-1])] += duration / steps / 1e3
  op_ms = sum(per_kind.values())
  busy = op_ms / (wall_ms * (os.cpu_count() or 1))
  gflops = 6 * s["macs"] * batch / (wall_ms / 1e3) / 1e9
  return dict(wall_ms=wall_ms, op_ms=op_ms, busy=busy, per_kind=per_kind, top=top, gflops=gflops,
              ops_per_step=len(ops) / steps)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments of jdpm.models.create")
  p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
  p.add_argument("--top", type=int, default=8, help="the most expensive JAX operations listed per batch")
  p.add_argument("--no-record", action="store_true", help="print only, do not append to BENCHMARKS.md")
  args = p.parse_args()
  kwargs = fields.hashable(json.loads(args.model_kwargs))  # e.g. a UNet's block_out_channels

  peak = common.matmul_peak_flops()
  rows = ["| batch | step ms | GFLOP/s (MFU) | ops/step | busy | " + " | ".join(KINDS) + " |",
          "|---:|---:|---:|---:|---:|" + "---:|" * len(KINDS)]
  tops = []
  for b in args.batch:
    r = profile(args.model, b, **kwargs)
    rows.append(f"| {b} | {r['wall_ms']:.1f} | {r['gflops']:.0f} ({r['gflops'] * 1e9 / peak:.0%}) | "
                f"{r['ops_per_step']:.0f} | {r['busy']:.0%} | "
                + " | ".join(f"{r['per_kind'][k]:.1f}" for k in KINDS) + " |")
    tops.append(f"batch {b}, the most expensive operations (ms per step, summed over blocks): "
                + "; ".join(f"{name} {ms:.1f}" for name, ms in r["top"].most_common(args.top)))
  name = args.model + (f" {json.dumps(kwargs)}" if kwargs else "")
  body = (f"Model: {name}. Peak (fp32 {common.peak_matmul_size()}^3 matmul, same run): {peak / 1e9:.0f} GFLOP/s. "
          f"Kinds in ms per step, summed op time (see the script's docstring).\n\n" + "\n".join(rows)
          + "\n\n" + "\n".join(f"- {t}" for t in tops))
  common.record(f"Training step profile: {args.model}", body, append=not args.no_record)


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
