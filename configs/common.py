"""The fields every training recipe shares, and the tiny recipe of the built-in data.

The family files (``configs/dit.py``, ``edt.py``, ``mdt.py``) start from `base_config` and, for their
``tiny`` variant, apply `tiny_recipe`. Fields a run may set besides the family's own:

  diffusion.prediction  what the denoiser predicts: "epsilon" (the papers' recipes), "v" or "x0"; the samplers
                   read it too.
  objective        a registered objective name (``jdpm.training.objectives``): "denoising", "edt_masking",
                   "mdt_masking", ...; its options live in the sub-dict of the same name, if any.
  frozen_patterns  regular expressions over '/'-joined parameter paths: matching parameters are frozen
                   (never differentiated, never in the optimizer; see ``jdpm.training.freeze``).
  init_from        pretrained weights loaded into the fresh run before step 0 (see
                   ``jdpm.training.run.load_pretrained``): path (a jdpm workdir or an official checkpoint
                   file; "" = off), kind ("auto", "jdpm" or "official"), params ("ema" or "raw", for a jdpm
                   workdir), source (a '/'-joined sub-tree of the pretrained parameters, "" = all) and target
                   (where it goes in this model's parameters, "" = the root).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Fields shared by every recipe (DiT, EDT, MDTv2, ...)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = "denoising"
  c.frozen_patterns = ()
  c.init_from = ml_collections.ConfigDict(dict(path="", kind="auto", params="ema", source="", target=""))
  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(name="shapes", data_dir="", random_flip=True, worker_count=0))
  c.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_schedule="linear", learn_sigma=True, min_snr_gamma=0.0, min_snr_offset=0.0,
      timestep_sampler="uniform", timestep_logit_normal=(0.0, 1.0), mask_loss=False, prediction="epsilon"))
  c.optimizer = ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=1e-4, schedule="constant", warmup_steps=0, end_lr=5e-5, decay_steps=400_000,
      weight_decay=0.0, b1=0.9, b2=0.999, b3=0.99, eps=1e-8, grad_clip=0.0))
  c.batch_size = 256            # global batch, split over all devices and hosts
  c.grad_accum_steps = 0         # micro-batches per step; 0: automatic (cache-sized micro-batches on CPU, else 1)
  c.total_steps = 400_000
  c.time_budget_s = 0.0          # > 0: stop (and save) after this many seconds of training
  c.ema_decay = 0.9999
  c.ema_warmup = False          # True: decay min(ema_decay, (1+step)/(10+step)), for short runs
  c.compute_dtype = "float32"   # "bfloat16" for mixed precision on GPU/TPU
  c.fsdp = 1                    # size of the fsdp mesh axis; 1 = pure data parallel
  c.log_every = 100
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.sample_every = 20_000
  c.sample = ml_collections.ConfigDict(dict(
      sampler="unipc", steps=25, order=2, skip_type="time_uniform", cfg_scale=1.5, cfg_channels=3, num_samples=16,
      amm=False))
  return c


def tiny_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The training recipe of every ``tiny`` config: the built-in ``shapes`` data on a 2-core CPU in minutes.

  Measured on the tiny DiT at equal training time (BENCHMARKS.md, "First-run quality"): v-prediction and
  small batches are what make a few minutes of CPU enough. A tiny model trains about 180 images/s at any batch
  from 4 to 32 on 2 cores, so a smaller batch buys more updates for the same images: at 240 s, batch 32 /
  16 / 8 gave shapes-FID 20.7 / 10.8 / 8.6 (batch 4: no further gain).
  """
  c.data.name = "shapes"
  # Each family keeps its optimizer. Rate 2e-3: at the main job's 8,000 steps it gave shapes-FID 3.5 and accuracy
  # 0.647 against 5.4 and 0.624 at 1e-3 (BENCHMARKS.md, "First-run quality ... part 3"). Decayed linearly to a
  # tenth over the run's 14,000 steps: shapes-FID 3.0 and accuracy 0.678, against 3.8 and 0.661 for 8,000
  # steps at a constant rate (part 4).
  c.optimizer.update(dict(lr=2e-3, schedule="linear_decay", warmup_steps=200, end_lr=2e-4, decay_steps=14_000))
  c.diffusion.min_snr_gamma = 5.0  # Min-SNR weighting: much faster convergence on a short budget
  # The x0 error weighted by min(SNR, 5) + 1 instead of min(SNR, 5) (the v loss clipped at SNR 5): the noisy
  # steps, where Min-SNR's weight falls to 0 (below 0.05 for 45% of the timesteps), keep weight 1. At 7,000
  # steps it raised accuracy 0.632 -> 0.706 and cut shapes-FID 4.3 -> 2.7 (BENCHMARKS.md, "... part 5");
  # offsets 3 and 8 gave 0.700 and 0.671.
  c.diffusion.min_snr_offset = 1.0
  # v-prediction: at high noise the network predicts the image itself instead of a noise estimate whose
  # error 1/alpha amplifies; shapes form there. With Min-SNR-5 it cut the tiny DiT's shapes-FID 2.5x at
  # equal training time.
  c.diffusion.prediction = "v"
  c.batch_size = 8
  c.total_steps = 14_000  # the tiny DiT runs 35-40 steps/s on 2 cores (one device per core): 6-7 minutes
  c.ema_decay = 0.999
  c.ema_warmup = True
  c.log_every = 200
  c.checkpoint_every = 2000
  c.sample_every = 7000
  # Pixel-space data lies in [-1, 1]: keep the solver's data predictions there (dynamic thresholding, as
  # DPM-Solver++ for pixel models); without it a young model's poor predictions at high noise are amplified
  # by 1/alpha (up to 158x on the linear schedule) into saturated colours. Guidance 3: on the main job's
  # final checkpoint, scales 2 / 2.5 / 3 / 4 / 6 / 8 gave accuracy .648 / .691 / .701 / .678 / .582 / .494 and
  # shapes-FID 1.4 / 1.6 / 2.0 / 3.0 / 4.9 / 6.9 (part 4); 10 UniPC steps are as good as 20 there.
  c.sample.update(dict(steps=10, order=3, cfg_scale=3.0, cfg_channels=-1, num_samples=40, clip_denoised=True))
  return c


def tiny_long_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``tiny_long``: the tiny recipe trained ~3x longer (18-19 minutes on 2 cores), the rate decayed to a tenth.

  Measured on the tiny DiT (BENCHMARKS.md, "tiny_long with the Min-SNR offset"): accuracy 0.732 and shapes-FID
  2.1 against the main job's 0.728-0.733 and 1.8-1.9: the extra steps do not sharpen the tiny DiT's shapes
  (nor does a 4x wider DiT over the main job's length, part 10); the UNet's ``configs/unet.py:tiny_long`` does
  (0.921, part 11).
  """
  c = tiny_recipe(c)
  c.total_steps = 40_000
  # From 1e-3 (the rate it was measured with; the short recipe's 2e-3 is untried over 40k steps).
  c.optimizer.update(dict(lr=1e-3, schedule="linear_decay", end_lr=1e-4, decay_steps=40_000, lr_update_every=1))
  c.ema_decay = 0.9995
  c.checkpoint_every = 5000
  c.sample_every = 10_000
  return c
