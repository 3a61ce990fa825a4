"""EDT (Chen et al., NeurIPS 2024) training recipes: the Efficient Diffusion Transformer.

``get_config(arg)`` with arg one of:
  tiny  a small EDT in pixel space on the built-in ``shapes`` data (32x32 RGB, 10 classes), patch 4
        (8x8 → 4x4 → 2x2 tokens), widths 96·(1, 4/3, 5/3, 4/3, 1), with the masking objective; trains
        on a 2-core CPU. (Width 48 did not learn at all in minutes: its samples stayed patch noise.)
  S, B, XL  the paper's EDT-{S,B,XL}/2 on ImageNet 256 latents (32x32x4 from the SD VAE), as the official
        masking training script: Adan (betas 0.98/0.92/0.99, no weight decay, no clipping), lr 1e-3 (S, B) /
        5e-4 (XL) decayed linearly to 5e-5 at step 400k, global batch 256, EMA 0.9999, 1000 linear-beta
        steps, learned sigma, Min-SNR-5 loss weighting, loss-second-moment timestep sampling, token
        relation-enhanced masking (full pass + masked pass; drop U(0.4, 0.5) / U(0.1, 0.2) of the tokens at
        the two down-samplings; XL also replaces U(0.15, 0.25) of the first stage's tokens by their
        position embedding). Sampling: CFG 2 on 3 guided channels with the Attention Modulation Matrix in
        the preset's AMM blocks. Needs the latent dataset ``imagenet2012_latents`` (see README).
Override any field on the command line: ``--config=configs/edt.py:S --config.batch_size=32``.

The trainer builds the objective named by ``config.objective`` ("edt_masking"):
``jdpm.training.edt_masking.EDTMaskingObjective.from_config(config, model)``, which reads
``config.edt_masking``.
"""

import ml_collections

from configs.common import base_config, tiny_recipe

# name: (hidden_size D0, stages_depth, lr, AMM blocks, mid-stage mask ratio)
EDT_SIZES = {
    "S": (312, (2, 2, 2, 3, 3), 1e-3, (7, 10), None),
    "B": (624, (2, 2, 2, 3, 3), 1e-3, (7, 10), None),
    "XL": (936, (6, 4, 4, 7, 7), 5e-4, (23, 25), (0.15, 0.25)),
}
HEAD_DIM = 52


def stage_widths(hidden_size):
  """D0·(1, 4/3, 5/3, 4/3, 1), the widths of the five stages."""
  return tuple(int(round(hidden_size * m)) for m in (1, 4 / 3, 5 / 3, 4 / 3, 1))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = base_config()
  c.objective = "edt_masking"     # full pass + masked pass (jdpm.training.edt_masking)
  c.edt_masking = ml_collections.ConfigDict(dict(
      down_mask_ratios=((0.4, 0.5), (0.1, 0.2)),  # drop-probability range per down-sampling
      mid_mask_ratio=None))                        # (low, high) for EDT-XL, else None
  c.model.name = "EDT"
  c.model.class_dropout_prob = 0.1
  c.model.learn_sigma = True
  c.model.mlp_ratio = 4.0
  c.diffusion.update(dict(min_snr_gamma=5.0, timestep_sampler="loss-second-moment"))
  # The masking script lowers the rate every step (its plain-training script every 5000 steps:
  # lr_update_every=5000).
  c.optimizer.update(dict(optimizer="adan", b1=0.98, b2=0.92, b3=0.99, eps=1e-8, weight_decay=0.0,
                          grad_clip=0.0, schedule="linear_decay", end_lr=5e-5, decay_steps=400_000,
                          lr_update_every=1))
  c.sample.update(dict(cfg_scale=2.0, cfg_channels=3, amm=True))
  if arg == "tiny":
    c.model.update(dict(hidden_size=96, dims=stage_widths(96), num_heads=(6, 8, 10, 8, 6),
                        stages_depth=(2, 2, 2, 3, 3), amm_blocks=(7, 10), patch_size=4,
                        input_size=32, in_channels=3, num_classes=10))
    return tiny_recipe(c)
  if arg not in EDT_SIZES:
    raise ValueError(f"unknown EDT config {arg!r}; choose one of tiny, {', '.join(EDT_SIZES)}.")
  hidden, stages_depth, lr, amm_blocks, mid_mask_ratio = EDT_SIZES[arg]
  dims = stage_widths(hidden)
  c.model.update(dict(hidden_size=hidden, dims=dims, num_heads=tuple(d // HEAD_DIM for d in dims),
                      stages_depth=stages_depth, amm_blocks=amm_blocks, patch_size=2,
                      input_size=32, in_channels=4, num_classes=1000))
  c.edt_masking.mid_mask_ratio = mid_mask_ratio
  c.data.name = "imagenet2012_latents"
  c.optimizer.lr = lr
  c.total_steps = 400_000
  return c
