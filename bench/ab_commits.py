"""The same benchmark at two commits, interleaved, as same-run ratios: did a change slow anything down?

  python bench/ab_commits.py --base 3f529c5 --rounds 3 -- bench/train_throughput.py --batch 8 --min-time 3
  python bench/ab_commits.py --base 3f529c5 -- bench/sampler_overhead.py

The base commit is checked out into a temporary git worktree; the benchmark (any script that prints a
markdown table and takes --no-record) runs alternately there and in this working tree, `--rounds` times
each, so that a slow spell of a shared machine hits both sides alike. Every numeric cell of the printed
tables is compared: the record gives the median over rounds of each side and their ratio (head / base).
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile

from bench import common

_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?(e[-+]?\d+)?%?$")


def table_cells(output):
  """{(row label, column name): float} of every markdown table in `output` (the row label: its cells that are
  not numbers; a label repeated within a table, e.g. one model at two batch sizes, gets " #2", " #3", ...)."""
  cells, header, seen = {}, None, {}
  for line in output.splitlines():
    line = line.strip()
    if not line.startswith("|"):
      header = None
      continue
    parts = [p.strip() for p in line.strip("|").split("|")]
    if all(set(p) <= set("-: ") for p in parts):
      continue
    if header is None:
      header, seen = parts, {}
      continue
    label = " ".join(p for p in parts if not _NUMBER.match(p))
    seen[label] = seen.get(label, 0) + 1
    if seen[label] > 1:
      label = f"{label} #{seen[label]}"
    for name, value in zip(header, parts):
      if _NUMBER.match(value):
        cells[(label, name)] = float(value.rstrip("%"))
  return cells


def run_bench(tree, script_args):
  proc = subprocess.run([sys.executable, *script_args, "--no-record"], cwd=tree, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise SystemExit(f"ab_commits: the benchmark failed in {tree}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  return table_cells(proc.stdout)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--base", required=True, help="the commit to compare against (e.g. the previous main)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--no-record", action="store_true")
  p.add_argument("bench", nargs=argparse.REMAINDER, help="-- script.py [its arguments]")
  args = p.parse_args()
  bench = [a for a in args.bench if a != "--"]
  if not bench:
    p.error("give the benchmark after --, e.g. -- bench/sampler_overhead.py")
  base_sha = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=common.ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
  head_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
  with tempfile.TemporaryDirectory(prefix="jdpm-ab-") as tmp:
    subprocess.run(["git", "worktree", "add", "--detach", tmp, base_sha], cwd=common.ROOT, check=True,
                   capture_output=True)
    try:
      samples = {"base": [], "head": []}
      for r in range(args.rounds):
        for side, tree in (("base", tmp), ("head", common.ROOT)):
          samples[side].append(run_bench(tree, bench))
          print(f"round {r + 1}/{args.rounds} {side} done", flush=True)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=common.ROOT, check=False,
                     capture_output=True)
  keys = [k for k in samples["head"][0] if all(k in s for s in samples["base"] + samples["head"])]
  rows = [f"| row | column | base {base_sha} (median) | head {head_sha} (median) | head / base |",
          "|---|---|---|---|---|"]
  for key in keys:
    base = statistics.median(s[key] for s in samples["base"])
    head = statistics.median(s[key] for s in samples["head"])
    ratio = head / base if base else float("nan")
    rows.append(f"| {key[0]} | {key[1]} | {base:.4g} | {head:.4g} | {ratio:.3f} |")
  body = (f"`{' '.join(bench)}` at {base_sha} and at {head_sha} (working tree), alternately, "
          f"{args.rounds} rounds each.\n\n" + "\n".join(rows))
  common.record(f"A/B: {bench[0]} at {base_sha} vs {head_sha}", body, append=not args.no_record)


if __name__ == "__main__":
  main()
