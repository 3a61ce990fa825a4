"""Image restoration with DP-IR (Zhussip, Koshelev, Lefkimmiatis, NeurIPS 2024).

  degradations  4x bicubic SR, blur + noise, a synthetic RAW burst (pure JAX, parameters recorded)
  classical     bicubic, Wiener deconvolution, burst mean-after-alignment (restorer baselines)
  networks      the denoiser phi_D, the restorers phi_IR and the fusion phi_F (Flax)
  sampler       the reverse process: full chain, the jump to tau, strided ladders, exact NFE (no Flax)
  dpir          the three modules and the schedule in one bundle; the denoiser-only baseline
  training      objectives and the training loop (jdpm's optimizer, checkpoints and freezing)
  experiment    config -> task, modules, data, a trained stage, a loaded model
  train, restore  the command lines
"""
