"""The built-in text-to-image model (Yi et al. 2024's mechanism analyses at CPU scale).

``get_config("tiny")``: captioned 16x16 scenes (`jdpm.data.captioned_shapes`), a word tokenizer with CLIP's
layout (16 positions), a 2-layer causal CLIP-style text encoder pre-trained contrastively against a small
image tower and then frozen, a pixel-space cross-attention UNet (UNet2DConditionModel, two levels, cross-
attention at 8x8 and in the mid block; 1.0M parameters) trained with 10% condition dropout, and the proxy classifier
of shape / colour / layout / size. The denoiser predicts v with Min-SNR-5 weighting at batch 8 (as the
class-conditional tiny recipe, `configs.common.tiny_recipe`: on 2 cores small batches buy more updates). The
model measured in BENCHMARKS.md ("T2I built-in model, v-prediction") is these two commands, 4,000 + 8,000
denoiser steps (319 s + 597 s of denoiser training on 2 cores; the text encoder and proxy stages, 44 s and
17 s, run once):

  python -m jdpm.t2i.train --config tiny --workdir runs/t2i_a
  python -m jdpm.t2i.train --config tiny --workdir runs/t2i --continue_from runs/t2i_a --denoiser_steps 8000
"""

import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "test"):
    raise ValueError(f"unknown t2i config {arg!r}; choose 'tiny' (or 'test', a seconds-long smoke run).")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 16
  c.context_length = 16
  c.num_train = 20_000
  c.text = ml_collections.ConfigDict(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, hidden_act="quick_gelu"))
  c.text_pretrain = ml_collections.ConfigDict(dict(steps=800, batch_size=128, lr=2e-3, embed_dim=64))
  c.unet = ml_collections.ConfigDict(dict(
      block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, norm_num_groups=8,
      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")))
  c.denoiser = ml_collections.ConfigDict(dict(steps=4000, batch_size=8, lr=1e-3, warmup_steps=100,
                                              cond_drop=0.1, ema_decay=0.999, num_timesteps=1000,
                                              min_snr_gamma=5.0, prediction="v"))
  c.proxy = ml_collections.ConfigDict(dict(steps=800, batch_size=128, lr=2e-3, noise_std=0.15))
  c.sample = ml_collections.ConfigDict(dict(method="dpm_solver++", steps=20, cfg_scale=4.0))
  if arg == "test":
    c.num_train = 256
    c.text_pretrain.steps = c.denoiser.steps = c.proxy.steps = 3
    c.text_pretrain.batch_size = c.denoiser.batch_size = c.proxy.batch_size = 8
    c.denoiser.warmup_steps = 1
    c.text.update(hidden_size=32, intermediate_size=64)
    c.unet.update(block_out_channels=(16, 32), attention_head_dim=2)
  return c
