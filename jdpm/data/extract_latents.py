"""Encode an image dataset once with the Stable Diffusion VAE: the latent dataset the paper configs train on.

  python -m jdpm.data.extract_latents --vae=sd-vae-ft-ema/diffusion_pytorch_model.safetensors \\
      --source=imagenet2012 --out=imagenet2012_latents --batch-size=256

Runs `jdpm.data.build_latent_dataset` with the VAE's encoder, sharded over every device (on a pod slice, run
the same command on every host with --distributed). As DiT/EDT/MDT's feature extraction, each image is stored
as a scaled posterior sample (`0.18215 * z`, one key per batch) together with the latent of its horizontal
mirror, so the training pipeline's random flip is exact; --mean stores posterior means instead. ImageNet
images are already ADM centre-cropped to 256x256 by the `imagenet2012` builder.
"""

import argparse
import logging


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vae", required=True, help="diffusers AutoencoderKL weights (.safetensors or .bin)")
  p.add_argument("--source", default="imagenet2012", help="image dataset to encode")
  p.add_argument("--out", default="imagenet2012_latents", help="name of the latent dataset to write")
  p.add_argument("--data-dir", default=None, help="dataset root (default $JDPM_DATA_DIR)")
  p.add_argument("--batch-size", type=int, default=256, help="global batch (a multiple of the device count)")
  p.add_argument("--splits", default=None, help="comma-separated splits (default all)")
  p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
  p.add_argument("--mean", action="store_true", help="store posterior means instead of samples")
  p.add_argument("--no-flips", action="store_true", help="do not store the mirrored images' latents")
  p.add_argument("--float16", action="store_true", help="store latents as float16 (half the disk)")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed.initialize()")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  import jax
  import numpy as np

  from jdpm import convert, parallel
  from jdpm.data import latents

  if args.distributed:
    parallel.initialize_distributed()
  vae, variables = convert.vae_from_diffusers(args.vae)
  encode_fn, params = latents.vae_encode_fn(vae, variables)
  info = latents.build_latent_dataset(
      encode_fn, args.source, out_name=args.out, data_dir=args.data_dir, batch_size=args.batch_size,
      splits=args.splits.split(",") if args.splits else None,
      latent_dtype=np.float16 if args.float16 else np.float32, with_flips=not args.no_flips,
      rng=None if args.mean else jax.random.key(args.seed), params=params, overwrite=args.overwrite)
  print(f"wrote latent dataset {args.out!r}: {info}")


if __name__ == "__main__":
  main()
