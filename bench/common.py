"""Shared pieces of the benchmarks: timing, the matmul peak, machine description, BENCHMARKS.md output."""

import datetime
import os
import pathlib
import platform
import shlex
import sys
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def time_fn(fn, *args, warmup=1, min_time=3.0, min_iters=3):
  """Median-free simple timing: seconds per call of a jitted `fn`, after `warmup` calls.

  Runs at least `min_iters` calls and at least `min_time` seconds, blocking on the result each call.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  n, start = 0, time.perf_counter()
  while n < min_iters or time.perf_counter() - start < min_time:
    jax.block_until_ready(fn(*args))
    n += 1
  return (time.perf_counter() - start) / n


def peak_matmul_size() -> int:
  """Side of the square matmul that measures the peak: 2048 on a CPU, 8192 on an accelerator (whose
  peak a 2048^3 product, a few microseconds of work, does not reach)."""
  return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_peak_flops(dtype=jnp.float32, size=None, min_time=4.0):
  """FLOP/s of a large square matmul in `dtype`: the practical peak of this device for that dtype."""
  size = size or peak_matmul_size()
  a = jax.random.normal(jax.random.key(0), (size, size)).astype(dtype)  # random: zeros run faster on GPUs
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  # The fastest of many calls: on a shared machine a mean over 2 s can land in a slow spell and make the
  # model's MFU exceed 100%.
  best, start = float("inf"), time.perf_counter()
  while time.perf_counter() - start < min_time:
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * size**3 / best


def machine() -> str:
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
          f"{jax.device_count()}x {dev.platform} ({kind}), jax {jax.__version__}")


def command() -> str:
  """The command line of this run, as a user would type it from the repository root."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  program = ["-m", spec.name] if spec is not None and spec.name else [os.path.relpath(sys.argv[0], ROOT)]
  return "python " + " ".join(shlex.quote(a) for a in program + sys.argv[1:])


def record(title: str, body: str, append: bool = True) -> None:
  """Prints a section and appends it to BENCHMARKS.md with the date, machine and command.

  With ``append=False`` (the scripts' ``--no-record``) it prints the body alone and writes nothing; that is
  the output `bench.ab_commits` reads.
  """
  if not append:
    print(body)
    return
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  section = (f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- command: `{command()}`\n\n"
             f"{body.strip()}\n")
  print(section)
  path = ROOT / "BENCHMARKS.md"
  if not path.exists():
    path.write_text("# jdpm benchmarks\n\nEvery section is appended by a script in `bench/`; compare ratios "
                    "within one section (absolute times drift between runs on shared machines).\n")
  with path.open("a") as f:
    f.write(section)
