"""Copies the DisDiff reference tensors the tests need out of the official-code reference archive.

The archive (`disdiff_golden.npz`) holds what the official DisDiff code (ThomasMrY/DisDiff @
c3ba0c7e69a2581be4df3c12e7c37a81317f244b, `openaimodel_shift.UNetModel`, `Encoder4`,
`LatentDiffusion.p_losses`) computes on tiny random models (float16-exact parameters, fixed inputs,
timesteps and sampled factors). This script keeps the encoder and UNet parameters, the inputs, the outputs
of the encoder, the UNet (with and without sampled concepts), the schedule buffers and every term of both
losses (weight types "Z" and "IM"), and the names of the parameters that receive gradients; it drops the
first-stage (VQ) decoder parameters, whose outputs on the two x0 predictions are stored instead.

Usage: python tools/make_disdiff_reference.py --golden DIR [--out tests/data] [--check]
(DIR holds disdiff_golden.npz). --check compares the stored file with a fresh extraction, array by array.
"""

import argparse
import pathlib
import sys

import numpy as np

OUT_NAME = "disdiff_tiny.npz"
EXPECTED_COMMIT = "c3ba0c7e69a2581be4df3c12e7c37a81317f244b"
KEEP_PREFIXES = ("unet/param/", "encoder/param/", "encoder/in/", "encoder/out", "unet/in/", "unet/out/",
                 "unet/mid/prt_emb", "unet/mid/emb", "unet/mid/cond", "unet/mid/part_emb", "loss/",
                 "loss_IM/", "grad/names_with_grad", "meta/set_config_json", "meta/commit")
KEEP_SCHEDULE = ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "shift_coef",
                 "ddim_coef")


def extract(golden_dir):
  golden = np.load(pathlib.Path(golden_dir) / "disdiff_golden.npz")
  commit = str(golden["meta/commit"])
  if commit != EXPECTED_COMMIT:
    raise SystemExit(f"reference made at commit {commit}, expected {EXPECTED_COMMIT}")
  out = {k: golden[k] for k in golden.files
         if k.startswith(KEEP_PREFIXES) and golden[k].dtype != object}
  out.update({f"sched/{k}": golden[f"sched/{k}"] for k in KEEP_SCHEDULE})
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--golden", required=True, help="folder with disdiff_golden.npz")
  parser.add_argument("--out", default="tests/data")
  parser.add_argument("--check", action="store_true")
  args = parser.parse_args(argv)
  arrays = extract(args.golden)
  path = pathlib.Path(args.out) / OUT_NAME
  if args.check:
    stored = np.load(path)
    bad = sorted(set(stored.files) ^ set(arrays))
    bad += [k for k in arrays if k in stored.files and not np.array_equal(stored[k], arrays[k])]
    print(f"{path}: {len(arrays)} arrays, {'OK' if not bad else 'MISMATCH ' + ', '.join(bad[:10])}")
    return 1 if bad else 0
  np.savez_compressed(path, **arrays)
  print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(arrays)} arrays)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
