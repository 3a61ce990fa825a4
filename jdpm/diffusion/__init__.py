"""Diffusion math with no Flax inside: noise schedules, the forward process, losses, DDPM sampling."""

from jdpm.diffusion.vp import VPSchedule, interpolate
