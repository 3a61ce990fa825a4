"""MDTv2 (Gao et al., 2023) training recipes: the Masked Diffusion Transformer v2.

``get_config(arg)`` with arg one of:
  tiny  a small MDTv2 in pixel space on the built-in ``shapes`` data (32x32 RGB, 10 classes), with the
        mask latent modelling objective; trains on a 2-core CPU.
  S, B, XL  the paper's MDTv2-{S,B,XL}/2 on ImageNet 256 latents (32x32x4 from the SD VAE), as the official
        training scripts: Adan (betas 0.98/0.92/0.99, no weight decay, its own gradient clipping at norm 1),
        constant lr 5e-4 (S) / 3e-4 (B, XL), global batch 256, EMA 0.9999, 1000 linear-beta steps, learned
        sigma, Min-SNR-5 loss weighting, masked pass with mask ratio U(0.3, 0.5) added to the full pass,
        decoder depth 6 (S) / 4 (B, XL). Sampling: CFG 3.8 with the power-cosine scale schedule
        (power 4) on 3 guided channels. Needs the latent dataset ``imagenet2012_latents`` (see README).
Override any field on the command line: ``--config=configs/mdt.py:S --config.batch_size=32``.
"""

import ml_collections

from configs.common import base_config, tiny_recipe

# name: (hidden_size, depth, num_heads, decode_layer, lr)
MDT_SIZES = {"S": (384, 12, 6, 6, 5e-4), "B": (768, 12, 12, 4, 3e-4), "XL": (1152, 28, 16, 4, 3e-4)}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = base_config()
  c.objective = "mdt_masking"     # full-pass + masked-pass loss (jdpm.training.mdt_masking)
  c.mdt_masking = ml_collections.ConfigDict(dict(
      mask_ratio_span=0.2,          # mask ratios r ~ U(model.mask_ratio, model.mask_ratio + span)
      per_example_ratio=False))     # official: one ratio per forward call; here one per step
  c.model.name = "MDTv2"
  c.model.class_dropout_prob = 0.1
  c.model.learn_sigma = True
  c.model.mask_ratio = 0.3
  c.model.mlp_ratio = 4.0
  c.diffusion.min_snr_gamma = 5.0
  c.optimizer.update(dict(optimizer="adan", schedule="constant", b1=0.98, b2=0.92, b3=0.99, eps=1e-8,
                          weight_decay=0.0, grad_clip=1.0))
  # Classifier-free guidance with MDTv2's time-dependent scale
  # s(t) = 1 + (cfg_scale - 1) * (1 - cos(pi * (1 - t / num_timesteps) ** cfg_scale_pow)) / 2.
  c.sample.update(dict(cfg_scale=3.8, cfg_channels=3, cfg_schedule="power_cosine", cfg_scale_pow=4.0))
  if arg == "tiny":
    c.model.update(dict(hidden_size=128, depth=4, num_heads=4, decode_layer=2, patch_size=4, input_size=32,
                        in_channels=3, num_classes=10))
    return tiny_recipe(c)
  if arg not in MDT_SIZES:
    raise ValueError(f"unknown MDTv2 config {arg!r}; choose one of tiny, {', '.join(MDT_SIZES)}.")
  hidden, depth, heads, decode_layer, lr = MDT_SIZES[arg]
  c.model.update(dict(hidden_size=hidden, depth=depth, num_heads=heads, decode_layer=decode_layer, patch_size=2,
                      input_size=32, in_channels=4, num_classes=1000))
  if arg == "S":
    c.model.amm_blocks = (8,)     # the EDT authors' AMM placement for MDTv2-S; used only with sample.amm
  c.data.name = "imagenet2012_latents"
  c.optimizer.lr = lr
  return c
