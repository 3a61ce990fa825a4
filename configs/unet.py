"""A class-conditional pixel UNet (`jdpm.models.class_unet.ClassUNet`: diffusers' UNet2DModel with a class
embedding) on the built-in ``shapes`` data, with the tiny recipe of the transformers.

``get_config("tiny")``: widths (32, 64, 64) at 32x32 / 16x16 / 8x8, one resnet per level, self-attention
at 16x16; no learned variance (the UNet predicts v only). 1.1 M parameters, as the tiny DiT's 1.3 M, but a
step costs 4.6x the DiT's on 2 cores (8.7 against 40 steps/s), and at the main job's 6 minutes of training it
ends far behind (shapes-FID 8.8, accuracy 0.27 against 3.0 and 0.68: BENCHMARKS.md, "First-run quality ...
part 4"). It is here for that comparison and for users with faster machines.

``get_config("tiny_long")``: the same UNet trained 28,000 steps, the rate decayed over all of them (42 minutes
on 2 cores), sampled with guidance 2.5. Unlike the tiny DiT, whose accuracy stays at about 0.73 from 14,000
steps on, the UNet keeps learning the shapes: accuracy 0.933 and shapes-FID 0.7 (0.921 and 1.1 at the tiny
recipe's guidance 3), against 0.746 and 1.3 after 14,000 steps (BENCHMARKS.md, "First-run quality ... parts 11
and 13"). Neither its peak rate (1e-3 and 4e-3 no better at 6,000 steps) nor a decay to zero over 30,000
steps (0.927 at guidance 2.5, in 47 minutes) improves it; what does is more steps.

The model's options ``resnet_time_scale_shift`` and ``space_to_depth`` are off here: ADM's adaptive GroupNorm
(``"scale_shift"``) gave 0.519 against 0.746 at 14,000 steps, and folding 2x2 pixel blocks into channels,
which makes a step 2.7x cheaper, gave 0.704 against 0.921 at 28,000 ("... part 12"). Halving the widths
at 32x32 and 16x16 lost as well (0.760): what the UNet gains over the DiT seems to need its full width at
full resolution.
"""

import ml_collections

from configs.common import base_config, tiny_recipe


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "tiny_long"):
    raise ValueError(f"unknown UNet config {arg!r}; choose tiny or tiny_long.")
  c = base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="ClassUNet", input_size=32, in_channels=3, num_classes=10, class_dropout_prob=0.1, learn_sigma=False,
      block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=16, norm_num_groups=8,
      resnet_time_scale_shift="default", space_to_depth=1))
  c = tiny_recipe(c)
  if arg == "tiny_long":
    c.total_steps = 28_000
    c.optimizer.decay_steps = 28_000
    # Guidance 2.5 instead of the tiny recipe's 3 (tuned on the DiT): on this recipe's final checkpoint 0.933 and
    # shapes-FID 0.7 against 0.921 and 1.1, and the same gain at 30,000 and 40,000 steps; 4 and above fall
    # apart (BENCHMARKS.md, "First-run quality ... part 13").
    c.sample.cfg_scale = 2.5
  return c
