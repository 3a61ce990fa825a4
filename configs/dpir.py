"""DP-IR (Zhussip, Koshelev, Lefkimmiatis, NeurIPS 2024): restorer + denoiser + fusion, on built-in images.

    get_config("sr")            4x super-resolution (stage "fusion": the whole method)
    get_config("deblur")        Gaussian / motion deblurring with noise
    get_config("burst")         RAW burst joint demosaicking, denoising and 4x SR
    get_config("denoiser")      the task-agnostic denoiser phi_D (trained once, shared by the tasks)
    get_config("sr_restorer")   phi_IR of a task;  get_config("sr_fusion")  phi_F of a task
    get_config("sr_tiny")       any of the above with "_tiny": a seconds-long run for tests

The sizes are the CPU scale of this repository (32 x 32 patches, small networks, a 100-step
schedule); the protocol is the paper's. Fields:

  task, stage             "sr" | "deblur" | "burst";  "denoiser" | "restorer" | "fusion"
  degradation             keyword arguments of the task's dataclass (jdpm.restoration.degradations)
  data                    patch, downscale, folder ("" = the built-in images), limit
  diffusion               num_timesteps, beta_schedule (the VP discrete betas of jdpm.diffusion)
  denoiser / restorer / fusion
                          model: the module's keyword arguments; train: batch_size, total_steps,
                          time_budget_s, ema_decay and the optimizer sub-dict of jdpm.training
  frozen_patterns         the frozen half of the fusion run (jdpm.training.freeze)
  sampler                 steps (None = full chain, K = strided), tau (None = no jump), eta
"""

import ml_collections

TASKS = ("sr", "deblur", "burst")
STAGES = ("denoiser", "restorer", "fusion")


def _train(total_steps, lr, batch_size=16, time_budget_s=0.0):
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size, total_steps=total_steps, time_budget_s=time_budget_s, ema_decay=0.999,
      optimizer=dict(optimizer="adamw", lr=lr, schedule="warmup", warmup_steps=20, weight_decay=0.0, grad_clip=1.0)))


def task_config(task):
  """The full configuration of one task (every module and the sampler)."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.stage = "fusion"
  c.seed = 0
  c.degradation = {"sr": dict(scale=4, noise_sigma=0.0),
                   "deblur": dict(kernel_size=9, noise_sigma=0.01),
                   "burst": dict(frames=4, scale=4)}[task]
  c.data = ml_collections.ConfigDict(dict(patch=32, downscale=4, folder="", limit=0))
  c.diffusion = ml_collections.ConfigDict(dict(num_timesteps=100, beta_schedule="linear"))
  c.denoiser = ml_collections.ConfigDict(dict(model=dict(channels=(32, 64), layers_per_block=1, backbone="unet"),
                                              train=_train(600, 2e-3)))
  restorer = dict(features=48, blocks=3, scale=4) if task == "burst" else dict(features=48, blocks=4)
  if task == "sr":
    restorer["scale"] = 4
  # Restorer and fusion start from an estimate that is already good (a zero-initialised residual, a
  # gate towards x0_IR); small learning rates keep Adam's first, sign-like steps from throwing a
  # short run far from it.
  c.restorer = ml_collections.ConfigDict(dict(kind="burst" if task == "burst" else "residual", model=restorer,
                                              train=_train(400, 5e-4)))
  c.fusion = ml_collections.ConfigDict(dict(model=dict(features=64, blocks=3, time_dim=128, time_hidden=448),
                                            max_step=-1, train=_train(400, 1e-4)))
  c.frozen_patterns = ("denoiser/.*", "restorer/.*")
  c.sampler = ml_collections.ConfigDict(dict(steps=None, tau=24, eta=1.0), type_safe=False)  # 25 NFE: N / 4
  return c


def tiny(c):
  """Seconds-long runs: 16 x 16 patches, a 20-step schedule, narrow modules (a residual denoiser)."""
  c.data.patch = 16
  c.data.limit = 64
  c.diffusion.num_timesteps = 20
  c.denoiser.model.channels = (8,)
  c.denoiser.model.backbone = "resnet"
  c.restorer.model.features = 8
  c.restorer.model.blocks = 1
  c.fusion.model.features = 8
  c.fusion.model.blocks = 1
  c.fusion.model.time_hidden = 16
  for module in (c.denoiser, c.restorer, c.fusion):
    module.train.total_steps = 3
    module.train.batch_size = 4
  c.sampler.tau = 4
  return c


def get_config(arg="sr"):
  parts = arg.split("_")
  small = parts[-1] == "tiny"
  parts = parts[:-1] if small else parts
  if parts == ["denoiser"]:
    c = task_config("sr")
    c.stage = "denoiser"
  else:
    if parts[0] not in TASKS or len(parts) > 2 or (len(parts) == 2 and parts[1] not in STAGES[1:]):
      raise ValueError(f"unknown dpir config {arg!r}; use <task>[_restorer|_fusion][_tiny] with task in "
                       f"{TASKS}, or denoiser[_tiny].")
    c = task_config(parts[0])
    c.stage = parts[1] if len(parts) == 2 else "fusion"
  return tiny(c) if small else c
