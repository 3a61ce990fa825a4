"""The T2I working-mechanism numbers (Yi et al. 2024) on jdpm's built-in text-to-image model.

Needs a trained model (``python -m jdpm.t2i.train --config tiny --workdir DIR``, about 25 minutes on a shared
2-core CPU) and records, in one BENCHMARKS.md section:
  * the model: proxy accuracy on rendered scenes and the prompt alignment of its samples;
  * the frequency crossing table: per-band SNR crossing steps of the forward process for three cut-offs;
  * the acceleration table: DDIM, DPM-Solver++ and UniPC, CFG for the first steps then the unconditional
    prediction alone for the last a; network calls, wall time, L1 to the a = 0 image, proxy alignment and
    proxy-feature Fréchet distance;
  * the [EOS] table: fractions of images whose object follows prompt A or B after the [EOS] edits;
  * the cross-attention summary: [SOS] share, relative F1 of the token maps and shape IoU over steps.
Figures go to --figures. With --pipeline (a Stable Diffusion diffusers folder) the acceleration and
[EOS] parts run on that model instead (no proxy there: L1 and nearer-image rates only).

    python bench/t2i_mechanism.py --model runs/t2i_tiny --figures figs/t2i
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import common as bench_common  # noqa: E402
from jdpm.analysis import acceleration, attention, common, eos, frequency  # noqa: E402


def fmt(v):
  return f"{v:.3g}" if isinstance(v, float) else str(v)


def frequency_table(args):
  rows = []
  for cutoff in (0.1, 0.25, 0.5):
    stats = frequency.main(["--out", str(args.figures / f"frequency_{cutoff}"), "--cutoff", str(cutoff),
                            "--image_size", "32", "--num_images", "64"])
    rows.append(f"| {cutoff} | {stats['power_low']:.3g} | {stats['power_high']:.3g} | {stats['cross_low']} | "
                f"{stats['cross_high']} |")
  return ("Frequency split of built-in 32x32 scenes (64 images, linear betas, T = 1000): mean power per "
          "frequency of each band and the forward step where its SNR ᾱP/(1−ᾱ) falls below 1.\n\n"
          "| cut-off (x Nyquist) | P_low | P_high | low band crosses at t | high band crosses at t |\n"
          "|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model")
  src.add_argument("--pipeline")
  p.add_argument("--figures", default="t2i_figures")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--cfg_scale", type=float, default=4.0)
  p.add_argument("--num_prompts", type=int, default=32)
  p.add_argument("--num_pairs", type=int, default=24)
  p.add_argument("--repeats", type=int, default=2, help="timed runs per setting (after a compiling one)")
  p.add_argument("--methods", nargs="+", default=["ddim", "dpm_solver++", "unipc"])
  args = p.parse_args()
  args.figures = pathlib.Path(args.figures)
  args.figures.mkdir(parents=True, exist_ok=True)
  start = time.time()
  ns = argparse.Namespace(model=args.model, pipeline=args.pipeline, image_size=16)
  source = common.load_source(ns)
  parts = []
  if source.builtin:
    summary = json.loads((pathlib.Path(args.model) / "summary.json").read_text())
    acc = summary["proxy_test_accuracy"]
    parts.append("Built-in model (`configs/t2i.py:tiny`): training losses " +
                 ", ".join(f"{k} {summary[k]:.3g}" for k in ("text_loss", "proxy_loss", "denoiser_loss")) +
                 "; training time " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings"].items()) +
                 ".\nProxy accuracy on 2000 held-out renders: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) +
                 ".\n")
    parts.append(frequency_table(args))

  drops = sorted({0, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps})
  prompts = source.prompts(args.num_prompts, seed=0)
  t0 = time.time()
  rows, images = acceleration.sweep(source, prompts, methods=args.methods, steps=args.steps, drops=drops,
                                    guidance_scale=args.cfg_scale, repeats=args.repeats)
  acceleration._plot(rows, args.figures, f"{source.name}: acceleration sweep")
  show = 8
  common.image_grid(np.concatenate([images[(args.methods[0], a)][:show] for a in drops]),
                    [f"a={a}: {prompts[i]}" for a in drops for i in range(show)],
                    args.figures / "acceleration_samples.png", columns=show)
  parts.append(f"Acceleration ({len(prompts)} prompts, {args.steps} steps, CFG {args.cfg_scale}; for the last a "
               f"steps the unconditional prediction alone; wall time = whole generation, median of {args.repeats} runs "
               f"after a compiling one; {time.time() - t0:.0f} s for this table):\n\n" + acceleration.table(rows))

  t0 = time.time()
  if source.builtin:
    prompt_pairs = eos.pairs(args.num_pairs, seed=0)
  else:
    sd = common.SD_PROMPTS
    prompt_pairs = [(sd[i % len(sd)], sd[(i + 3) % len(sd)]) for i in range(args.num_pairs)]
  eos_images = eos.run_experiments(source, prompt_pairs, steps=args.steps, method="dpm_solver++",
                                   guidance_scale=args.cfg_scale, switch_steps=[args.steps // 4, args.steps // 2],
                                   counts=(1, 4))
  rates = eos.follow_rates(source, prompt_pairs, eos_images)
  names = list(eos_images)
  common.image_grid(np.concatenate([eos_images[n][:4] for n in names]), [n for n in names for _ in range(4)],
                    args.figures / "eos_images.png", columns=4)
  keys = list(next(iter(rates.values())))
  parts.append(f"[EOS] experiments ({len(prompt_pairs)} pairs of single-object prompts A, B with different shape "
               f"and colour; DPM-Solver++ {args.steps} steps, CFG {args.cfg_scale}; {time.time() - t0:.0f} s). "
               "Fractions of images whose object has A's or B's shape / colour (proxy), and that are nearer to "
               "B's image than to A's:\n\n| experiment | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys)
               + "\n" + "".join(f"| {n} | " + " | ".join(fmt(r[k]) for k in keys) + " |\n" for n, r in rates.items()))

  t0 = time.time()
  att_prompts = source.prompts(8, seed=1)
  result = attention.analyse(source, att_prompts, steps=args.steps, method="dpm_solver++",
                             guidance_scale=args.cfg_scale)
  ids = result["ids"]
  groups = attention.token_groups(ids, int(ids[0, 0]), int(ids[0, -1]))
  result["groups"] = groups
  attention._plots(result, attention._token_names(source, ids[0]), args.figures, f"{source.name}: attention")
  marks = sorted({0, 1, 2, args.steps // 4, args.steps // 2, args.steps - 1})
  lines = []
  for name, mask in groups.items():
    share = attention.group_mean(result["shares"], mask)
    rel = attention.group_mean(result["relative_f1"], mask)
    lines.append(f"| {name} | " + " | ".join(f"{share[s]:.3f} / {rel[s]:.2f}" for s in marks) + " |")
  iou = result["shape_iou"].mean(axis=1)
  lines.append("| shape IoU of x̂0 with the final image | " + " | ".join(f"{iou[s]:.2f}" for s in marks) + " |")
  parts.append(f"Cross-attention over the steps (8 prompts, DPM-Solver++ {args.steps} steps; {time.time() - t0:.0f} "
               "s): mean attention per token of each kind / relative F1 of its maps (F1 with the final image's "
               "shape, over the final step's F1), at sampling steps " + ", ".join(map(str, marks)) +
               ".\n\n| tokens | " + " | ".join(f"step {s}" for s in marks) + " |\n|---|" + "---:|" * len(marks) +
               "\n" + "\n".join(lines) + "\n")
  parts.append(f"Total CPU wall time of this bench: {time.time() - start:.0f} s (2 shared cores). Figures: "
               f"`{args.figures}`.")
  bench_common.record(f"T2I working mechanism: {source.name}", "\n\n".join(parts))


if __name__ == "__main__":
  main()
