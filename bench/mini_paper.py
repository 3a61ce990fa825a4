"""A CPU-sized reproduction of the EDT comparison: tiny EDT, MDTv2 and DiT on `shapes`, same wall-clock budget.

  python bench/mini_paper.py                          # 15 minutes of training per model, 1000 samples each
  python bench/mini_paper.py --budget-minutes 4 --families DiT --no-record   # a quick look

Each model is its family's `tiny` config (configs/{edt,mdt,dit}.py, with its own training recipe: EDT's token
relation-enhanced masking, MDTv2's mask latent modelling, DiT's plain loss) resized to about the same parameter
count (EDT D0 60, MDTv2 width 116, DiT width 136: 1.41-1.45 M). Each trains for the same number of seconds
(compilation excluded) on the same data order, with one JAX device per CPU core as `train.py` does, then draws
`--num-samples` class-conditional samples (labels 0..9 in turn) with UniPC at 10 steps, with and without the
Attention Modulation Matrix (EDT: its configured blocks 7 and 10; DiT and MDTv2: a placement scaled from the
official DiT-XL / MDTv2-S ones). Quality is shapes-FID and class accuracy under the saved proxy classifier
(`jdpm.eval.proxy`); the real-vs-real shapes-FID of the same number of test images is the floor.

The paper predicts: EDT reaches the lowest FID per unit of training time, and AMM improves EDT's samples.
The table says whether that holds here.
"""

import argparse
import pathlib
import shutil
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jdpm import huge_pages  # noqa: E402
from bench import common  # noqa: E402
from configs import dit as dit_config, edt as edt_config, mdt as mdt_config  # noqa: E402

# family -> (config module, size overrides giving ~1.3 M parameters, AMM blocks used at sampling)
MODELS = {
    "EDT": (edt_config, dict(hidden_size=60, dims=edt_config.stage_widths(60)), (7, 10)),
    "MDTv2": (mdt_config, dict(hidden_size=116), (2,)),   # MDTv2-S: block 8 of 12 (+ side block)
    "DiT": (dit_config, dict(hidden_size=136), (2, 3)),   # DiT-XL: blocks 15-24 of 28
}


def model_config(family, args, workdir):
  module, sizes, amm_blocks = MODELS[family]
  c = module.get_config("tiny")
  c.model.update(sizes)
  c.model.amm_blocks = amm_blocks
  c.seed = args.seed
  c.data.data_dir = args.data_dir or ""
  c.total_steps = 10**9
  c.time_budget_s = args.budget_minutes * 60
  c.checkpoint_every = 10**9
  c.sample_every = 0
  c.log_every = 100
  return c


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--budget-minutes", type=float, default=15.0,
                 help="training time per model (15: long enough for the main job's DiT to draw shapes)")
  p.add_argument("--num-samples", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--families", default="EDT,MDTv2,DiT")
  p.add_argument("--workdir", default=str(ROOT / "runs" / "mini_paper"))
  p.add_argument("--data-dir", default=None)
  p.add_argument("--no-record", action="store_true")
  args = p.parse_args()

  from jdpm import parallel
  # Before JAX starts: one CPU device per core, as train.py (no effect on GPU/TPU).
  parallel.use_cpu_devices(parallel.cpu_devices_for(dit_config.get_config("tiny").batch_size))
  import jax
  from jdpm import generate, models
  from jdpm.eval import proxy
  from jdpm.training import run, trainer

  classifier = proxy.load_proxy_classifier("shapes", args.data_dir)  # trained once, then reused
  real, real_labels = proxy.load_split("shapes", "test", args.data_dir)
  n = min(args.num_samples, len(real))
  floor = proxy.proxy_metrics(real[:n], real_labels[:n], classifier=classifier, data_dir=args.data_dir)
  labels = np.arange(args.num_samples) % 10
  rows = []
  for family in args.families.split(","):
    workdir = pathlib.Path(args.workdir) / family
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run: the budget is the whole training
    config = model_config(family, args, workdir)
    t0 = time.time()
    trainer.train(config, workdir)
    config, model, variables, steps = run.restore(workdir)
    params = models.count_params(model)
    for amm in (False, True):
      options = generate.sample_options(config, sampler="unipc", steps=10, amm=amm)
      images = generate.sample_images(model, variables, labels, jax.random.key(args.seed + 1), **options)
      metrics = proxy.proxy_metrics(generate.host_array(images), labels, classifier=classifier,
                                    data_dir=args.data_dir)
      rows.append(dict(family=family, params=params, steps=steps, steps_per_s=steps / (args.budget_minutes * 60),
                       amm=amm, fid=metrics["fid"], accuracy=metrics["accuracy"]))
      generate.save_grid(images[:40], workdir / f"samples_amm{int(amm)}.png", ncol=10)
    print(f"{family}: {steps} steps in {time.time() - t0:.0f} s (incl. compile and sampling)", flush=True)

  table = ["| model | params | steps in budget | step/s | AMM | shapes-FID | class accuracy |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    table.append(f"| {r['family']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['steps_per_s']:.2f} | "
                 f"{'on' if r['amm'] else 'off'} | {r['fid']:.2f} | {r['accuracy']:.3f} |")
  best = {}
  for r in rows:
    if not r["amm"]:
      best[r["family"]] = r["fid"]
  ranking = sorted(best, key=best.get)
  amm_effect = {r["family"]: r["fid"] for r in rows if r["amm"]}
  edt_amm = ("EDT" in best and "EDT" in amm_effect)
  body = "\n".join(table) + (
      f"\n\nReal-vs-real floor ({n} test images vs the test statistics): shapes-FID {floor['fid']:.2f}, accuracy "
      f"{floor['accuracy']:.3f}. Budget {args.budget_minutes:g} min of training per model (compilation excluded), "
      f"batch {dit_config.get_config('tiny').batch_size}, seed {args.seed}; {args.num_samples} samples, UniPC 10 "
      f"steps, CFG as each tiny config; proxy "
      f"classifier {classifier.fingerprint} (test accuracy {classifier.meta['test_accuracy']:.3f}).\n\n"
      f"Ranking by shapes-FID without AMM (lower is better): {' < '.join(ranking)}. "
      f"Paper's prediction 'EDT lowest FID per unit of training time': "
      f"{'holds' if ranking and ranking[0] == 'EDT' else 'does not hold'} here. ")
  if edt_amm:
    delta = amm_effect["EDT"] - best["EDT"]
    verdict = "no measurable effect" if abs(delta) < 0.05 else ("helps" if delta < 0 else "does not help")
    body += f"AMM on EDT changes shapes-FID by {delta:+.2f} ({verdict} at this scale)."
  common.record("Mini reproduction of the EDT comparison on shapes (tiny EDT / MDTv2 / DiT)", body,
                append=not args.no_record)


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
