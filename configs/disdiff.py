"""DisDiff (Yang et al., NeurIPS 2023) recipes: a pixel-space DPM pre-trained on ground-truth-factor data,
then DisDiff (encoder + sub-gradient decoder) on top of it, and the beta-VAE / FactorVAE baselines.

``get_config(arg)`` with arg one of:
  shapes3d_tiny, dsprites_tiny  CPU scale: the downscaled factor grids (`jdpm.data.factors`) rendered at
        16x16, a 32-channel one-level ADM UNet without attention, an encoder of width 32, 6 factors x 8 dims,
        batch 16, a few hundred steps; minutes on a 2-core CPU (32x32: ``--config.data.image_size=32
        --config.unet.channel_mult='(1,2)' --config.unet.attention_resolutions='(2,)'``).
  shapes3d, dsprites  the official DisDiff sizes in pixel space (64x64, encoder width 128, 6 factors x 32
        dims, model_channels 64 with channel_mult (1, 2, 2, 4)); needs an accelerator.
Override fields on the command line: ``--config=configs/disdiff.py:shapes3d_tiny --config.disdiff.steps=50``.
"""

import ml_collections


def get_config(arg: str = "shapes3d_tiny") -> ml_collections.ConfigDict:
  data, _, size = arg.partition("_")
  if data not in ("shapes3d", "dsprites") or size not in ("", "tiny"):
    raise ValueError(f"unknown DisDiff config {arg!r}; choose shapes3d_tiny, dsprites_tiny, shapes3d or dsprites.")
  tiny = size == "tiny"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(name=f"{data}/tiny" if tiny else data, image_size=16 if tiny else 64))
  c.unet = ml_collections.ConfigDict(dict(
      model_channels=32 if tiny else 64, channel_mult=(1,) if tiny else (1, 2, 2, 4), num_res_blocks=1 if tiny else 2,
      attention_resolutions=() if tiny else (4, 8), num_heads=4, norm_groups=32))
  c.encoder = ml_collections.ConfigDict(dict(width=32 if tiny else 128))
  c.latent_unit = 6                 # official: 6 factors for every data set
  c.factor_dim = 8 if tiny else 32  # official repre_emb_channels 32
  c.schedule = ml_collections.ConfigDict(dict(num_timesteps=1000, beta_start=0.0015, beta_end=0.0155))
  c.pretrain = ml_collections.ConfigDict(dict(steps=400 if tiny else 200_000, batch_size=16 if tiny else 64, lr=2e-4))
  c.disdiff = ml_collections.ConfigDict(dict(
      steps=80 if tiny else 100_000, batch_size=16 if tiny else 64, lr=1e-4, dis_weight=0.05, weight_type="Z"))
  c.eval = ml_collections.ConfigDict(dict(
      factor_vae_train=10000, factor_vae_eval=5000, factor_vae_variance=10000, dci_train=1000 if tiny else 10000,
      dci_test=500 if tiny else 5000))
  c.manipulate = ml_collections.ConfigDict(dict(ddim_steps=20 if tiny else 100, pairs=4))
  c.baselines = ml_collections.ConfigDict(dict(latent_dim=10, steps=500 if tiny else 300_000, batch_size=64,
                                               lr=1e-3 if tiny else 1e-4, beta=4.0, gamma=10.0))
  return c
