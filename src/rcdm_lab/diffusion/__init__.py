"""Gaussian diffusion (IDDPM / ADM): schedules, the forward/reverse process, samplers and guidance."""

from rcdm_lab.diffusion.gaussian import GaussianDiffusion, build_diffusion
from rcdm_lab.diffusion.guidance import classifier_free
from rcdm_lab.diffusion.samplers import Denoiser, ddim_sample, ddpm_sample, sample
from rcdm_lab.diffusion.schedules import make_betas, respace_betas, respaced_timesteps

__all__ = [
    "Denoiser",
    "GaussianDiffusion",
    "build_diffusion",
    "classifier_free",
    "ddim_sample",
    "ddpm_sample",
    "make_betas",
    "respace_betas",
    "respaced_timesteps",
    "sample",
]
