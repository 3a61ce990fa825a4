"""DiT (Peebles & Xie, 2023) training recipes.

``get_config(arg)`` with arg one of:
  tiny  a small DiT in pixel space on the built-in ``shapes`` data (32x32 RGB, 10 classes); trains on a
        2-core CPU in minutes.
  S, B, L, XL  the paper's DiT-{S,B,L,XL}/2 on ImageNet 256 latents (32x32x4 from the SD VAE): AdamW 1e-4
        constant, no weight decay, global batch 256, EMA 0.9999, 1000 linear-beta steps, learned sigma,
        CFG 1.5 at sampling. Needs the latent dataset ``imagenet2012_latents`` (see README).
Override any field on the command line: ``--config=configs/dit.py:tiny --config.batch_size=32``.
"""

import ml_collections

# name: (hidden_size, depth, num_heads)
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


def base_config() -> ml_collections.ConfigDict:
  """Fields shared by every diffusion-transformer recipe (DiT, EDT, MDTv2)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(name="shapes", data_dir="", random_flip=True, worker_count=0))
  c.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_schedule="linear", learn_sigma=True, min_snr_gamma=0.0,
      timestep_sampler="uniform", mask_loss=False))
  c.optimizer = ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=1e-4, schedule="constant", warmup_steps=0, end_lr=5e-5, decay_steps=400_000,
      weight_decay=0.0, b1=0.9, b2=0.999, b3=0.99, eps=1e-8, grad_clip=0.0))
  c.batch_size = 256            # global batch, split over all devices and hosts
  c.grad_accum_steps = 1
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
      sampler="unipc", steps=25, order=2, cfg_scale=1.5, cfg_channels=3, num_samples=16, amm=False))
  return c


def tiny_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The training recipe of every ``tiny`` config: the built-in ``shapes`` data on a 2-core CPU in minutes."""
  c.data.name = "shapes"
  c.optimizer.update(dict(lr=1e-3, schedule="warmup", warmup_steps=200))  # each family keeps its optimizer
  c.diffusion.min_snr_gamma = 5.0  # Min-SNR weighting: much faster convergence on a short budget
  c.batch_size = 32
  c.total_steps = 2400  # the tiny DiT runs ~6 steps/s on 2 cores: about 7 minutes
  c.ema_decay = 0.999
  c.ema_warmup = True
  c.log_every = 50
  c.checkpoint_every = 600
  c.sample_every = 1200
  # Pixel-space data lies in [-1, 1]: keep the solver's data predictions there (dynamic thresholding, as
  # DPM-Solver++ for pixel models); without it a young model's poor noise predictions at high noise are
  # amplified by 1/alpha (up to 158x on the linear schedule) into saturated colours.
  c.sample.update(dict(steps=10, order=3, cfg_scale=1.5, cfg_channels=-1, num_samples=40, clip_denoised=True))
  return c


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = base_config()
  c.model.name = "DiT"
  c.model.class_dropout_prob = 0.1
  c.model.learn_sigma = True
  if arg == "tiny":
    c.model.update(dict(hidden_size=128, depth=4, num_heads=4, patch_size=4, input_size=32, in_channels=3,
                        num_classes=10, mlp_ratio=4.0))
    return tiny_recipe(c)
  if arg not in DIT_SIZES:
    raise ValueError(f"unknown DiT config {arg!r}; choose one of tiny, {', '.join(DIT_SIZES)}.")
  hidden, depth, heads = DIT_SIZES[arg]
  c.model.update(dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=2, input_size=32,
                      in_channels=4, num_classes=1000, mlp_ratio=4.0))
  c.data.name = "imagenet2012_latents"
  c.sample.cfg_scale = 1.5
  return c
