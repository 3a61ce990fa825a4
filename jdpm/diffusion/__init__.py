"""Diffusion math with no Flax inside: noise schedules, the forward process, losses, DDPM sampling."""

from jdpm.diffusion.vp import VPSchedule, interpolate
from jdpm.diffusion.betas import betas_for_alpha_bar, cosine_betas, linear_betas, named_beta_schedule
from jdpm.diffusion.respace import space_timesteps
from jdpm.diffusion.gaussian import GaussianDiffusion, create_diffusion
from jdpm.diffusion.likelihoods import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from jdpm.diffusion.losses import min_snr_weight, training_losses, vb_terms_bpd
from jdpm.diffusion.timestep_sampler import (LogitNormalSampler, LossHistory, LossSecondMomentSampler,
                                             UniformSampler, create_named_schedule_sampler)
from jdpm.diffusion.ddpm import ddpm_sample
from jdpm.diffusion.guidance import power_cosine_guidance_scale
