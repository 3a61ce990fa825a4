"""DisDiff: unsupervised disentanglement of a pretrained diffusion model (Yang et al., NeurIPS 2023).

`shift_unet` (frozen denoiser + sub-gradient-field decoder), `encoder` (image -> factor codes), `losses`
(PDAE reconstruction and disentangling losses), `train` (pre-training, DisDiff training, manipulation grids),
`baselines` (beta-VAE, FactorVAE).
"""
