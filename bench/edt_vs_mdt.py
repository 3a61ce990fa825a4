"""EDT-S/2 vs MDTv2-S/2 vs DiT-S/2: training and inference throughput in one run, with ratios and MFU.

  python bench/edt_vs_mdt.py                      # batch 8 and 32, fp32, 32x32x4 latents
  python bench/edt_vs_mdt.py --batch 256 --dtype=bfloat16 --size=XL    # on a GPU / TPU
  python bench/edt_vs_mdt.py --batch 8 --official-dit DiT --official-edt EDT --official-mdt MDT \
      --torch-python /path/to/python-with-torch    # also the authors' PyTorch code (fp32, CPU)

With the three official checkouts (see bench/official_torch.py), the same run also measures the authors'
PyTorch models on the CPU (fp32, same batch sizes, torch threads = CPU cores, XLA's default) in a separate
interpreter that has torch, and records their throughput and ratios next to jdpm's. Without them the record
holds jdpm's own figures only.

Each model trains with its own recipe's objective: EDT full + token relation-enhanced masked pass, MDTv2 full
+ mask latent modelling pass, DiT the plain denoising loss. MFU uses the unmasked forward MACs
(`jdpm.models.count_macs`): inference 2 x MACs per image; training 3 forwards per pass, 2 passes for the
masking recipes (an upper bound of the work: masked passes drop 10-50% of the tokens in parts of the network).
The "expected" ratios are those FLOP counts' ratios: what the throughput ratios would be at equal MFU.
"""

import argparse
import json
import os
import subprocess
import sys

import jax.numpy as jnp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from jdpm import huge_pages  # noqa: E402
from bench import common  # noqa: E402
from bench.train_throughput import measure, mfu  # noqa: E402
from jdpm.training.edt_masking import EDTMaskingObjective  # noqa: E402
from jdpm.training.mdt_masking import MaskedDenoisingObjective  # noqa: E402
from jdpm.training.objectives import DenoisingObjective  # noqa: E402

# name -> (objective, passes per training step)
RECIPES = {"EDT": (EDTMaskingObjective, 2), "MDTv2": (MaskedDenoisingObjective, 2), "DiT": (DenoisingObjective, 1)}


def official_throughput(args):
  """The official PyTorch models' {family: {batch: (train img/s, inference img/s)}} and the thread count,
  measured by bench/official_torch.py; None when no checkouts were given."""
  checkouts = [args.official_dit, args.official_edt, args.official_mdt]
  if not any(checkouts):
    return None
  if not all(checkouts):
    raise SystemExit("--official-dit, --official-edt and --official-mdt go together.")
  if args.dtype != "float32":
    raise SystemExit("the official PyTorch side is measured in float32 on the CPU only.")
  script = common.ROOT / "bench" / "official_torch.py"
  threads = args.torch_threads or os.cpu_count()
  cmd = [args.torch_python, str(script), "--dit", args.official_dit, "--edt", args.official_edt,
         "--mdt", args.official_mdt, "--size", args.size, "--min-time", str(args.min_time),
         "--threads", str(threads), "--batch", *map(str, args.batch)]
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
  report = json.loads(out.strip().splitlines()[-1])
  results = {family: {int(b): tuple(v) for b, v in per_batch.items()}
             for family, per_batch in report["results"].items()}
  return results, report


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="S", help="S, B or XL")
  p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--min-time", type=float, default=10.0)
  p.add_argument("--no-record", action="store_true")
  p.add_argument("--official-dit", help="facebookresearch/DiT checkout: also measure the official models")
  p.add_argument("--official-edt", help="xinwangChen/EDT checkout")
  p.add_argument("--official-mdt", help="sail-sg/MDT checkout")
  p.add_argument("--torch-python", default=sys.executable, help="interpreter with torch, timm and einops")
  p.add_argument("--torch-threads", type=int, default=None, help="torch threads (default: all CPU cores)")
  args = p.parse_args()

  peak = common.matmul_peak_flops(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  results = {}
  for b in args.batch:
    for family, (objective, passes) in RECIPES.items():
      name = f"{family}-{args.size}/2"
      train_ips, infer_ips, gmacs = measure(name, b, args.dtype, args.min_time, objective_factory=objective)
      results[family, b] = (train_ips, infer_ips, gmacs, passes)
      print(f"{name} batch {b}: train {train_ips:.2f} img/s, inference {infer_ips:.2f} img/s", flush=True)

  rows = ["| model | batch | GMACs/img | train img/s | train MFU | inference img/s | inference MFU |",
          "|---|---|---|---|---|---|---|"]
  for (family, b), (train_ips, infer_ips, gmacs, passes) in results.items():
    train_mfu = mfu(train_ips, gmacs, peak, passes * 3)
    infer_mfu = mfu(infer_ips, gmacs, peak)
    rows.append(f"| {family}-{args.size}/2 | {b} | {gmacs:.2f} | {train_ips:.2f} | {train_mfu:.1%} | "
                f"{infer_ips:.2f} | {infer_mfu:.1%} |")
  ratio_rows = ["| batch | EDT/MDTv2 train | expected | EDT/MDTv2 inference | expected | EDT/DiT train | "
                "EDT/DiT inference |", "|---|---|---|---|---|---|---|"]
  for b in args.batch:
    e, m, d = results["EDT", b], results["MDTv2", b], results["DiT", b]
    ratio_rows.append(
        f"| {b} | {e[0] / m[0]:.2f}x | {(m[2] * m[3]) / (e[2] * e[3]):.2f}x | {e[1] / m[1]:.2f}x | "
        f"{m[2] / e[2]:.2f}x | {e[0] / d[0]:.2f}x | {e[1] / d[1]:.2f}x |")
  size = common.peak_matmul_size()
  body = (f"Peak ({args.dtype} {size}^3 matmul, same run): {peak / 1e9:.1f} GFLOP/s.\n\n" + "\n".join(rows) +
          "\n\n" + "\n".join(ratio_rows))
  official = official_throughput(args)
  if official is None:
    body += "\n\nOfficial PyTorch code: not measured in this run (see --official-* options)."
  else:
    measured, report = official
    off_rows = [f"Official PyTorch code, same run (torch {report['torch']}, fp32, {report['threads']} threads; "
                "bench/official_torch.py):", "",
                "| model | batch | train img/s | inference img/s | jdpm/official train | jdpm/official inference |",
                "|---|---|---|---|---|---|"]
    for (family, b), (train_ips, infer_ips, _, _) in results.items():
      o_train, o_infer = measured[family][b]
      off_rows.append(f"| {family}-{args.size}/2 | {b} | {o_train:.2f} | {o_infer:.2f} | "
                      f"{train_ips / o_train:.2f}x | {infer_ips / o_infer:.2f}x |")
    off_rows += ["", "| batch | official EDT/MDTv2 train | official EDT/MDTv2 inference | official EDT/DiT train |",
                 "|---|---|---|---|"]
    for b in args.batch:
      e, m, d = measured["EDT"][b], measured["MDTv2"][b], measured["DiT"][b]
      off_rows.append(f"| {b} | {e[0] / m[0]:.2f}x | {e[1] / m[1]:.2f}x | {e[0] / d[0]:.2f}x |")
    body += "\n\n" + "\n".join(off_rows)
  common.record(f"EDT vs MDTv2 vs DiT ({args.size}/2, {args.dtype})", body, append=not args.no_record)


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
