"""Copies a reference set of the project's golden data into tests/data, or checks the copy.

Some reference sets are produced once, outside this repository, by running the independent library
itself (diffusers / transformers) and saving its outputs; the tests read a verbatim copy. This script
makes that copy and, with --check, verifies that tests/data still equals the golden set file by file.

  python tools/copy_golden_reference.py --golden GOLDEN_DIR [--check]

GOLDEN_DIR is the directory that holds the golden sets (its README describes how each was made).
"""

import argparse
import filecmp
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Golden sets copied verbatim: name in the golden directory -> name in tests/data.
SETS = {"diffusers_sd1_tiny": "diffusers_sd1_tiny"}


def files_of(directory):
  return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--golden", required=True, type=pathlib.Path, help="directory of the golden sets")
  p.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "data")
  p.add_argument("--check", action="store_true", help="compare instead of copying; exit 1 on a mismatch")
  args = p.parse_args()
  bad = []
  for source_name, target_name in SETS.items():
    source, target = args.golden / source_name, args.out / target_name
    if not source.is_dir():
      sys.exit(f"{source} is missing: pass --golden with the directory that holds {source_name}/.")
    if args.check:
      if files_of(source) != files_of(target):
        bad.append(f"{target_name}: file lists differ")
      bad += [f"{target_name}/{f}" for f in files_of(source)
              if (target / f).is_file() and not filecmp.cmp(source / f, target / f, shallow=False)]
    else:
      shutil.rmtree(target, ignore_errors=True)
      shutil.copytree(source, target)
      print(f"copied {source_name} -> {target}")
  if bad:
    sys.exit("mismatch: " + ", ".join(bad))
  if args.check:
    print("all golden copies match")


if __name__ == "__main__":
  main()
