"""Probes of how a text-to-image diffusion model works (Yi et al. 2024, "Towards Understanding the Working
Mechanism of Text-to-Image Diffusion Model"), each a function plus a command that writes figures and numbers:

  frequency   low/high-frequency split of x_t, norms, ratio and per-band SNR over t (forward and reverse)
  attention   per-token cross-attention maps over the sampling steps, [SOS] share, shape formation (IoU of
              x̂0 with the final image) and the per-token relative F1 of the maps
  eos         the [EOS] experiments: swapping prompt B's [EOS] into prompt A, from step a, how many, zero /
              random replacement, keys only / values only
  common      loading the built-in model or a Stable Diffusion folder, sampling with trajectories, plots
"""
