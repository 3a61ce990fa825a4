"""Draw class-conditional samples from a trained run or from converted official weights.

  python sample.py --workdir=runs/tiny --out=runs/tiny/samples.png
  python sample.py --workdir=runs/tiny --sampler=unipc --steps=10 --order=3 --cfg-scale=1.5 \
      --guidance-window=0,0.4
  python sample.py --weights=DiT-XL-2-256x256.pt --model=DiT-XL/2 --num-samples=16 --out=dit.png

Text to image from a Stable Diffusion 1.x/2.x diffusers folder or a built-in model (python -m jdpm.t2i.train),
optionally without the text for the last N evaluations (the T2I paper's acceleration):

  python sample.py --pipeline=runs/t2i --prompt="a red ring left of a blue square" --drop-text-last=10

Writes a PNG grid (one column per class) and an .npz beside it with the raw samples and their labels.
The batch is sharded over all devices.

Evaluation (FID, sFID, Inception Score, precision, recall), features computed on the fly, no PNGs:

  python sample.py --workdir=runs/dit_xl --vae=sd-vae-ft-ema/diffusion_pytorch_model.safetensors \
      --num-samples=50000 --batch-size=250 --eval-stats=VIRTUAL_imagenet256_labeled.npz \
      --inception-weights=pt_inception-2015-12-05-6726825d.pth
  python sample.py --workdir=runs/tiny --num-samples=2000 --eval-stats=runs/shapes_ref.npz

With --eval-features=proxy (the default for the built-in shapes/digits data) the features come from jdpm's
small classifier of that dataset ("shapes-FID", see jdpm.eval.proxy) and the class accuracy of the samples
is reported too. A missing --eval-stats file is computed from the real images of --eval-dataset (default:
the run's dataset) and saved. An interrupted evaluation resumes from OUT.eval_state.npz.
"""

import argparse
import json
import logging
import pathlib
import sys
import time

from jdpm import huge_pages

HERE = pathlib.Path(__file__).resolve().parent
log = logging.getLogger("jdpm.sample")
PROXY_DATASETS = ("shapes", "digits")  # built-in data measured by jdpm's proxy classifier (shapes-FID)
QUICK_EVAL_DATASETS = ("shapes",)  # of those, the ones whose classifier ships with jdpm


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_argument_group("what to sample from (a workdir, or official weights)")
  src.add_argument("--workdir", help="a train.py work directory (uses its config and newest checkpoint)")
  src.add_argument("--config", help="config spec such as configs/dit.py:tiny (default: the workdir's)")
  src.add_argument("--weights", help="official PyTorch weights (.pt/.safetensors/.npz) instead of a workdir")
  src.add_argument("--model", help="model name for --weights, e.g. DiT-XL/2")
  src.add_argument("--num-classes", type=int, default=1000, help="classes of the --weights model")
  src.add_argument("--pipeline", help="a diffusers text-to-image pipeline folder (Stable Diffusion 1.x/2.x), or "
                                      "a built-in text-to-image model's workdir (python -m jdpm.t2i.train)")
  src.add_argument("--prompt", action="append", help="a prompt for --pipeline (repeat for several)")
  src.add_argument("--step", type=int, help="checkpoint step (default: the newest good one)")
  src.add_argument("--raw-params", action="store_true", help="use the raw parameters, not the EMA")
  s = p.add_argument_group("sampling")
  s.add_argument("--sampler", default=None, help="unipc | dpm_solver++ | dpm_solver | ddim | ddpm")
  s.add_argument("--steps", type=int, default=None, help="model evaluations (ddpm: respaced steps)")
  s.add_argument("--order", type=int, default=None, help="solver order")
  s.add_argument("--skip-type", default=None, choices=("time_uniform", "logSNR", "time_quadratic"),
                 help="time grid of the ODE samplers (default: the config's, time_uniform)")
  s.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = off)")
  s.add_argument("--cfg-channels", type=int, default=None, help="guide only the first k channels (-1 all)")
  s.add_argument("--guidance-window", default=None,
                 help="lo,hi: guide only this fraction of the steps, e.g. 0,0.4 (T2I acceleration)")
  s.add_argument("--drop-text-last", type=int, default=None,
                 help="--pipeline: condition-dropping acceleration, no guidance for the last N model evaluations "
                      "(one network call each instead of two)")
  s.add_argument("--keep", choices=("uncond", "cond"), default="uncond",
                 help="what those last evaluations use: the unconditional prediction (as the T2I paper) or the "
                      "conditional one")
  s.add_argument("--amm", action=argparse.BooleanOptionalAction, default=None,
                 help="Attention Modulation Matrix on (--amm) or off (--no-amm); default: the config's "
                      "sample.amm (on for the EDT configs, as the paper samples)")
  s.add_argument("--amm-blocks", default=None,
                 help="comma-separated block indices for --amm (default: the model's amm_blocks); AMM has "
                      "no parameters, so any checkpoint can be sampled with any placement")
  s.add_argument("--num-samples", type=int, default=None, help="number of samples (multiple of devices)")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--verbose", action="store_true", help="library INFO logs (JAX, Orbax) as well")
  s.add_argument("--quick-eval", type=int, default=None,
                 help="after the grid, measure class accuracy and shapes-FID on this many class-balanced samples "
                      "(default: 1000 for runs on the built-in shapes data, whose proxy classifier ships with "
                      "jdpm; 0 = off)")
  s.add_argument("--out", default=None, help="output PNG (default: WORKDIR/samples/sample.png)")
  s.add_argument("--vae", default=None,
                 help="diffusers AutoencoderKL weights (.safetensors/.bin) to decode latent samples to images")
  e = p.add_argument_group("evaluation (FID, sFID, IS, precision, recall)")
  e.add_argument("--eval-stats", default=None,
                 help="reference statistics .npz (ADM layout); computed from --eval-dataset if missing")
  e.add_argument("--eval-features", choices=("inception", "proxy"), default=None,
                 help="feature network (default: proxy for shapes/digits, else inception)")
  e.add_argument("--eval-dataset", default=None, help="real images for a missing --eval-stats file "
                 "(default: the run's dataset)")
  e.add_argument("--eval-reference-images", type=int, default=None,
                 help="how many real images make the reference (default: the whole train split)")
  e.add_argument("--inception-weights", default=None,
                 help="pt_inception-2015-12-05-6726825d.pth (default $JDPM_INCEPTION_WEIGHTS)")
  e.add_argument("--batch-size", type=int, default=100, help="samples per sampling call when evaluating")
  args = p.parse_args(argv)
  if args.eval_stats and not args.num_samples:
    p.error("--eval-stats needs --num-samples (the papers use 50000)")
  if sum(bool(v) for v in (args.workdir, args.weights, args.pipeline)) != 1:
    p.error("give exactly one of --workdir, --weights or --pipeline")
  if args.pipeline and not args.prompt:
    p.error("--pipeline needs at least one --prompt")
  if args.weights and not args.model:
    p.error("--weights needs --model, e.g. --model=DiT-XL/2")
  if args.guidance_window:
    try:
      lo, hi = (float(v) for v in args.guidance_window.split(","))
    except ValueError:
      p.error(f"--guidance-window must be two numbers lo,hi; got {args.guidance_window!r}")
    args.guidance_window = (lo, hi)
  if args.amm_blocks is not None:
    try:
      args.amm_blocks = tuple(int(b) for b in args.amm_blocks.split(",") if b.strip())
    except ValueError:
      p.error(f"--amm-blocks must be comma-separated integers; got {args.amm_blocks!r}")
  return args


def load_run(args):
  """(config, model, variables) from a workdir's config and checkpoint (read only)."""
  from jdpm.training import run as run_lib
  from jdpm.training import trainer as trainer_lib

  try:
    config = trainer_lib.load_config(args.config) if args.config else None
    config, model, variables, step = run_lib.restore(args.workdir, step=args.step, raw_params=args.raw_params,
                                                     config=config)
  except run_lib.ConfigError as e:
    sys.exit(f"sample.py: {e}")
  log.info("loaded step %d from %s", step, args.workdir)
  if args.amm_blocks is not None:
    model = model.clone(amm_blocks=args.amm_blocks)
  return config, model, variables


def load_weights(args):
  """(config, model, variables) for converted official weights."""
  import jdpm
  from jdpm.training import trainer as trainer_lib
  config = trainer_lib.load_config(str(HERE / "configs" / "dit.py:XL"))
  config.model.name = args.model
  config.model.num_classes = args.num_classes
  config.data.name = "imagenet2012"  # official weights are ImageNet models (used by --eval-stats)
  extra = {} if args.amm_blocks is None else {"amm_blocks": args.amm_blocks}
  model = jdpm.models.create(args.model, num_classes=args.num_classes, **extra)
  variables = jdpm.convert.from_official(args.weights, args.model, num_classes=args.num_classes, **extra)
  return config, model, variables


def load_decoder(args, model):
  """Latents → [-1, 1] images: the VAE's decoder for latent models, the identity for pixel models."""
  if args.vae:
    import jax
    import jdpm
    vae, vae_variables = jdpm.convert.vae_from_diffusers(args.vae)
    return jax.jit(lambda z: vae.decode_latents(vae_variables, z))
  if model.in_channels != 3:
    sys.exit(f"sample.py: this model samples {model.in_channels}-channel latents; pass --vae with the "
             "diffusers AutoencoderKL weights it was trained with (e.g. sd-vae-ft-ema's "
             "diffusion_pytorch_model.safetensors) to decode them to images.")
  return lambda x: x


def evaluation_reference(args, config, extractor):
  """The --eval-stats reference, computed from real images and saved when the file does not exist yet."""
  from jdpm import eval as eval_lib
  from jdpm.eval import features as features_lib
  path = pathlib.Path(args.eval_stats)
  if path.exists():
    return eval_lib.load_reference(path)
  dataset = args.eval_dataset or config.data.name
  log.info("%s does not exist: computing reference statistics from %s", path, dataset)
  try:
    reference = features_lib.dataset_reference(dataset, extractor, num_images=args.eval_reference_images,
                                               data_dir=config.data.get("data_dir") or None)
  except ValueError as e:
    sys.exit(f"sample.py: cannot compute reference statistics from {dataset!r}: {e} Pass --eval-dataset "
             "with the real image dataset, or an existing --eval-stats file.")
  path.parent.mkdir(parents=True, exist_ok=True)
  reference.save(path)
  log.info("wrote reference statistics of %d images to %s", len(reference.pool_features), path)
  return reference


def run_evaluation(args, config, model, variables, options, decode, out):
  """Samples --num-samples images batch by batch and prints FID, sFID, IS, precision and recall."""
  import jax
  import numpy as np
  from jdpm import generate
  from jdpm.eval import features as features_lib
  from jdpm.eval import sample_eval

  dataset = args.eval_dataset or config.data.name
  kind = args.eval_features or ("proxy" if dataset.split("/")[0] in PROXY_DATASETS else "inception")
  try:
    extractor = features_lib.make_extractor(kind, dataset=dataset, data_dir=config.data.get("data_dir") or None,
                                            inception_weights=args.inception_weights)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"sample.py: {e}")
  reference = evaluation_reference(args, config, extractor)
  batch_size = args.batch_size
  if batch_size % jax.device_count():
    sys.exit(f"sample.py: --batch-size={batch_size} does not split over {jax.device_count()} devices.")
  key = jax.random.key(args.seed)

  def draw_batch(index):
    label_key, sample_key = jax.random.split(jax.random.fold_in(key, index))
    labels = np.asarray(jax.random.randint(label_key, (batch_size,), 0, model.num_classes))
    samples = generate.sample_images(model, variables, labels, sample_key, **options)
    return generate.to_uint8(generate.host_array(decode(samples))), labels

  fingerprint = features_lib.fingerprint(args.workdir or args.weights, args.step, args.raw_params, args.seed,
                                         sorted(options.items()), args.vae)
  results = sample_eval.evaluate_generator(
      draw_batch, extractor, reference, num_samples=args.num_samples, batch_size=batch_size,
      state_path=out.with_suffix(".eval_state.npz"), fingerprint=fingerprint,
      class_accuracy=kind == "proxy")
  results.update(features=kind, reference=str(args.eval_stats))
  if jax.process_index() == 0:
    out.with_suffix(".eval.json").parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".eval.json").write_text(json.dumps(results, indent=2) + "\n")
  names = dict(fid="FID", sfid="sFID", inception_score="IS", precision="precision", recall="recall",
               class_accuracy="class accuracy")
  print(" ".join(f"{names[k]} {results[k]:.4f}" for k in names if k in results)
        + f"  ({results['num_samples']} samples, {kind} features; {out.with_suffix('.eval.json')})")
  return results


def run_pipeline(args):
  """Text to image with a diffusers pipeline folder or a built-in T2I model: prompts -> text encoder -> jitted
  sampler (-> VAE) -> PNG grid, one column per prompt."""
  import jdpm
  from jdpm import generate
  from jdpm.t2i import bundle
  folder = pathlib.Path(args.pipeline)
  builtin = bundle.is_builtin(folder)
  if not builtin and not (folder / "model_index.json").is_file():
    sys.exit(f"sample.py: {folder} is not a diffusers pipeline folder (no model_index.json) or a built-in "
             f"text-to-image workdir (no config.json and checkpoints/).")
  try:
    if builtin:  # its own sampling defaults (configs/t2i.py: DPM-Solver++, 20 steps, CFG 4)
      pipe, _, config = bundle.load(folder)
      defaults = dict(config.sample)
    else:
      pipe, defaults = jdpm.pipelines.load_pipeline(folder), dict(method="unipc", steps=20, cfg_scale=7.5)
    t0 = time.time()
    out = jdpm.pipelines.text_to_image(
        pipe, list(args.prompt), steps=args.steps or defaults["steps"], method=args.sampler or defaults["method"],
        guidance_scale=defaults["cfg_scale"] if args.cfg_scale is None else args.cfg_scale,
        guidance_window=args.guidance_window, drop_text_last=args.drop_text_last, keep=args.keep,
        seed=args.seed, **({"order": args.order} if args.order else {}))
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"sample.py: {' '.join(str(e).split())}")
  path = pathlib.Path(args.out or "text_to_image.png")
  generate.save_grid(generate.host_array(out["images"]), path, ncol=len(args.prompt))
  print(f"wrote {path}: {len(args.prompt)} prompt(s), {out['nfe']} model evaluations, {out['network_calls']} "
        f"network calls, {time.time() - t0:.1f} s including compilation")
  return out


def main(argv=None):
  args = parse_args(argv)
  # jdpm's own messages; JAX's backend probing and Orbax's per-file logs only with --verbose.
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
  logging.getLogger("jdpm").setLevel(logging.INFO)
  if not args.verbose:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  import jax
  import numpy as np
  from jdpm import generate

  if args.pipeline:
    return run_pipeline(args)
  config, model, variables = load_run(args) if args.workdir else load_weights(args)
  decode = load_decoder(args, model) if (args.vae or args.eval_stats) else None
  num_samples = args.num_samples or config.sample.num_samples
  labels = generate.class_grid_labels(num_samples, model.num_classes)
  options = generate.sample_options(
      config, sampler=args.sampler, steps=args.steps, order=args.order, skip_type=args.skip_type,
      cfg_scale=args.cfg_scale,
      cfg_channels=args.cfg_channels, guidance_window=args.guidance_window, amm=args.amm)
  out = pathlib.Path(args.out or pathlib.Path(args.workdir or ".") / "samples" / "sample.png")
  if args.eval_stats:
    return run_evaluation(args, config, model, variables, options, decode, out)
  t0 = time.time()
  images = generate.sample_images(model, variables, labels, jax.random.key(args.seed), **options)
  if decode is not None:
    images = decode(images)
  images = generate.host_array(images)
  elapsed = time.time() - t0
  if jax.process_index() == 0:
    from jdpm.data import registry
    generate.save_grid(images, out, ncol=min(model.num_classes, num_samples),
                       column_labels=registry.class_names(config.data.name))
    np.savez(out.with_suffix(".npz"), samples=images, labels=labels, uint8=generate.to_uint8(images))
    print(f"wrote {out} and {out.with_suffix('.npz')}: {num_samples} samples, {options}, "
          f"{elapsed:.1f} s including compilation")
  quick = args.quick_eval if args.quick_eval is not None else default_quick_eval(args, config, model)
  if quick:
    return quick_evaluation(args, config, model, variables, options, quick)
  return None


def default_quick_eval(args, config, model):
  """1000 samples for a pixel model of the built-in shapes data sampled from a workdir, else 0 (off)."""
  built_in = config.data.name in QUICK_EVAL_DATASETS and model.in_channels == 3
  return 1000 if (args.workdir and built_in and not args.vae) else 0


def quick_evaluation(args, config, model, variables, options, num_samples):
  """Class accuracy and shapes-FID of `num_samples` class-balanced samples, printed with what to try next."""
  import jax
  import numpy as np
  from jdpm import generate
  from jdpm.eval import proxy

  dataset = config.data.name.split("/")[0]
  if dataset not in PROXY_DATASETS:
    sys.exit(f"sample.py: --quick-eval measures runs on the built-in shapes/digits data; this run trained on "
             f"{config.data.name!r}. Use --eval-stats with --num-samples instead.")
  batch = max(jax.device_count(), min(num_samples, 500) // jax.device_count() * jax.device_count())
  t0 = time.time()
  images, labels = [], []
  for start in range(0, num_samples, batch):
    batch_labels = generate.class_grid_labels(batch, model.num_classes)
    key = jax.random.fold_in(jax.random.key(args.seed + 1), start)
    images.append(generate.to_uint8(generate.host_array(
        generate.sample_images(model, variables, batch_labels, key, **options))))
    labels.append(batch_labels)
  images = np.concatenate(images)[:num_samples]
  labels = np.concatenate(labels)[:num_samples]
  metrics = proxy.proxy_metrics(images, labels, dataset=dataset, data_dir=config.data.get("data_dir") or None)
  if jax.process_index() == 0:
    print_quick_evaluation(metrics, num_samples, time.time() - t0, dataset, model.num_classes, args.workdir)
  return metrics


def print_quick_evaluation(metrics, num_samples, seconds, dataset, num_classes, workdir):
  """The quick evaluation's two lines: the numbers (with chance and the real-image floor) and what next."""
  floor = " (real test images: about 0.03 at 1,000 samples; fewer samples read higher)" if dataset == "shapes" else ""
  print(f"quick evaluation ({num_samples} samples, {seconds:.0f} s): class accuracy {metrics['accuracy']:.3f} "
        f"(chance {1 / num_classes:.2f}), {dataset}-FID {metrics['fid']:.1f}{floor}")
  full = (f"the full measurement (FID, sFID, IS, precision, recall): python sample.py --workdir={workdir} "
          f"--num-samples=2000 --eval-stats={pathlib.Path(workdir) / (dataset + '_ref.npz')}")
  if metrics["accuracy"] < 0.9:
    # Measured past the tiny recipes' length: 40,000 steps (dit.py:tiny_long) and a 4x wider DiT give the main
    # job's accuracy again, the UNet's 28,000 steps 0.933 (BENCHMARKS.md, "First-run quality", parts 4-13).
    print(f"  next: a run stopped before its recipe's end gains from more steps (the same train.py command with "
          f"--config.total_steps=<more> resumes {workdir}); past the tiny DiT's 14,000 steps its accuracy stays, "
          f"while the pixel UNet's long recipe reaches 0.93 in about 42 minutes on 2 cores: "
          f"--config=configs/unet.py:tiny_long (BENCHMARKS.md, \"First-run quality\"); {full}")
  else:
    print(f"  next: {full}; other samplers: --sampler=dpm_solver++ --steps=20; the EDT and MDTv2 recipes: "
          f"configs/edt.py, configs/mdt.py")


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()
  main()
