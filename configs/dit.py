"""DiT (Peebles & Xie, 2023) training recipes.

``get_config(arg)`` with arg one of:
  tiny  a small DiT in pixel space on the built-in ``shapes`` data (32x32 RGB, 10 classes); trains on a
        2-core CPU in 6-7 minutes (the README's main job).
  tiny_long  the same model trained 40,000 steps with a decaying rate (18-19 minutes on 2 cores).
  S, B, L, XL  the paper's DiT-{S,B,L,XL}/2 on ImageNet 256 latents (32x32x4 from the SD VAE): AdamW 1e-4
        constant, no weight decay, global batch 256, EMA 0.9999, 1000 linear-beta steps, learned sigma,
        CFG 1.5 at sampling. Needs the latent dataset ``imagenet2012_latents`` (see README).
Override any field on the command line: ``--config=configs/dit.py:tiny --config.batch_size=32``.
"""

import ml_collections

from configs.common import base_config, tiny_long_recipe, tiny_recipe

# name: (hidden_size, depth, num_heads)
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.name = "DiT"
  c.model.class_dropout_prob = 0.1
  c.model.learn_sigma = True
  if arg in ("tiny", "tiny_long"):
    c.model.update(dict(hidden_size=128, depth=4, num_heads=4, patch_size=4, input_size=32, in_channels=3,
                        num_classes=10, mlp_ratio=4.0))
    if arg == "tiny":
      # Half the papers' label dropout: at the main job's 14,000 steps 0.05 gave accuracy 0.748 and 0.755
      # (seeds 0 and 1) against 0.733 and 0.730 for 0.1, shapes-FID unchanged; 0.02 (0.718) and 0.25 lost
      # (BENCHMARKS.md, "First-run quality", parts 10, 14 and 15). Less unconditional training leaves more of
      # the small model to the classes, but guidance still needs a trained null class.
      c.model.class_dropout_prob = 0.05
    return tiny_recipe(c) if arg == "tiny" else tiny_long_recipe(c)
  if arg not in DIT_SIZES:
    raise ValueError(f"unknown DiT config {arg!r}; choose one of tiny, tiny_long, {', '.join(DIT_SIZES)}.")
  hidden, depth, heads = DIT_SIZES[arg]
  c.model.update(dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=2, input_size=32,
                      in_channels=4, num_classes=1000, mlp_ratio=4.0))
  c.data.name = "imagenet2012_latents"
  c.sample.cfg_scale = 1.5
  return c
