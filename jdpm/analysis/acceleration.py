"""Condition-dropping acceleration: classifier-free guidance for the first steps only, then the
unconditional prediction alone (the paper) or the conditional one alone, for the last a steps.

For each sampler and each a: network calls (a guided evaluation counts two), wall time of the whole
generation (median of repeats, after a warm-up; every a reuses one compiled sampling program), the mean
absolute difference to the a = 0 image (on the [0, 1] pixel scale), and on the built-in model the proxy's
prompt alignment and the Fréchet distance of proxy features to rendered scenes (a CPU-sized stand-in for
FID: a few hundred images, so compare it across a, not to published FIDs).

    python -m jdpm.analysis.acceleration --model DIR --out figs/acceleration --steps 20
    python -m jdpm.analysis.acceleration --pipeline stable-diffusion-v1-5 --out figs/sd15 --steps 50
"""

import argparse
import json
import time

import jax
import numpy as np

from jdpm import pipelines


def generate(source, prompts, *, method, steps, drop, keep, guidance_scale, seed):
  out = pipelines.text_to_image(source.pipeline, list(prompts), steps=steps, method=method,
                                order=1 if method == "ddim" else 2, guidance_scale=guidance_scale, seed=seed,
                                drop_text_last=drop, keep=keep)
  images = np.clip(np.asarray(jax.block_until_ready(out["images"])), -1.0, 1.0)
  return images, out["network_calls"]


def proxy_fd(proxy_variables, images, reference_images):
  """Fréchet distance between proxy-classifier features of two image sets."""
  from jdpm.eval import frechet  # pylint: disable=import-outside-toplevel
  from jdpm.t2i import models  # pylint: disable=import-outside-toplevel
  feats = jax.jit(lambda v, x: models.proxy().apply(v, x)[1])
  f1 = np.asarray(feats(proxy_variables, np.clip(images, -1, 1)), np.float64)
  f2 = np.asarray(feats(proxy_variables, reference_images), np.float64)
  return float(frechet.frechet_distance(*frechet.gaussian_stats(f1), *frechet.gaussian_stats(f2)))


def sweep(source, prompts, *, methods, steps, drops, keep="uncond", guidance_scale=4.0, seed=0, repeats=2):
  """Rows of the sweep (dicts) and the images {(method, a): (N, H, W, 3)}."""
  from jdpm.t2i import bundle  # pylint: disable=import-outside-toplevel
  reference = None
  if source.builtin:
    from jdpm.data import captioned_shapes as cs  # pylint: disable=import-outside-toplevel
    raw, _, _ = cs.generate(max(len(prompts), 256), seed=seed + 99, size=source.image_size)
    reference = cs.to_model_range(raw)
  rows, images = [], {}
  for method in methods:
    base = None
    for drop in drops:
      times = []
      for r in range(repeats + 1):  # the first call compiles (once per method)
        start = time.perf_counter()
        x, calls = generate(source, prompts, method=method, steps=steps, drop=drop, keep=keep,
                            guidance_scale=guidance_scale, seed=seed)
        if r or not repeats:  # with no repeats, the compiling call's time
          times.append(time.perf_counter() - start)
      base = x if drop == 0 else base
      images[(method, drop)] = x
      row = {"method": method, "a": drop, "network_calls": calls, "wall_s": float(np.median(times)),
             "l1_to_a0": float(np.abs(x - base).mean() / 2) if base is not None else float("nan")}
      if source.builtin:
        row.update({f"align_{k}": v for k, v in bundle.summarize(
            bundle.alignment(source.proxy_variables, x, prompts)).items()})
        row["proxy_fd"] = proxy_fd(source.proxy_variables, x, reference)
      rows.append(row)
      print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
  return rows, images


def table(rows):
  """A markdown table of the sweep."""
  keys = [k for k in rows[0] if k not in ("method",)]
  head = "| method | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n"
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  return head + "".join(f"| {r['method']} | " + " | ".join(fmt(r[k]) for k in keys) + " |\n" for r in rows)


def _plot(rows, out, title):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  plt = common.pyplot()
  metrics = ["l1_to_a0", "wall_s"] + (["align_all"] if "align_all" in rows[0] else [])
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3))
  for ax, metric in zip(axes, metrics):
    for method in dict.fromkeys(r["method"] for r in rows):
      sub = [r for r in rows if r["method"] == method]
      ax.plot([r["a"] for r in sub], [r[metric] for r in sub], "o-", label=method)
    ax.set(xlabel="a (last steps without text guidance)", ylabel=metric)
    ax.legend(fontsize=7)
  common.save_figure(fig, out / "acceleration.png", title)


def main(argv=None):
  from jdpm.analysis import common  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="Condition-dropping acceleration sweep.")
  common.add_source_arguments(p)
  p.add_argument("--methods", nargs="+", default=["ddim", "dpm_solver++", "unipc"])
  p.add_argument("--drops", type=int, nargs="+", default=None, help="values of a (default: 0..steps in 5 parts)")
  p.add_argument("--keep", choices=("uncond", "cond"), default="uncond")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args(argv)
  source = common.model_source(args, "the acceleration sweep")
  drops = args.drops or sorted({round(args.steps * f) for f in (0, 0.25, 0.5, 0.75, 1.0)})
  if drops[0] != 0:
    drops = [0] + drops
  out = common.out_dir(args.out)
  prompts = source.prompts(args.num_prompts, seed=args.seed)
  rows, images = sweep(source, prompts, methods=args.methods, steps=args.steps, drops=drops, keep=args.keep,
                       guidance_scale=args.cfg_scale, seed=args.seed, repeats=args.repeats)
  _plot(rows, out, f"{source.name}: {args.num_prompts} prompts, {args.steps} steps, CFG {args.cfg_scale}, "
        f"then {args.keep} only")
  show = min(8, len(prompts))
  method = args.methods[0]
  common.image_grid(np.concatenate([images[(method, a)][:show] for a in drops]),
                    [f"a={a}: {prompts[i]}" for a in drops for i in range(show)], out / "acceleration_samples.png",
                    columns=show, title=f"{method}, rows: a = {drops}")
  (out / "acceleration.json").write_text(json.dumps(rows, indent=1))
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
