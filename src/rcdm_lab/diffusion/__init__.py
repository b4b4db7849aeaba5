"""Gaussian diffusion (IDDPM / ADM): schedules, the forward/reverse process, samplers and guidance."""

from rcdm_lab.diffusion.gaussian import GaussianDiffusion, build_diffusion
from rcdm_lab.diffusion.guidance import classifier_free
from rcdm_lab.diffusion.samplers import (
    SAMPLERS,
    ModelOutputFn,
    StepInfo,
    check_sampler_options,
    ddim_sample,
    ddpm_sample,
    register_sampler,
    sample,
)
from rcdm_lab.diffusion.schedules import make_betas, respace_betas, respaced_timesteps

__all__ = [
    "SAMPLERS",
    "GaussianDiffusion",
    "ModelOutputFn",
    "StepInfo",
    "build_diffusion",
    "check_sampler_options",
    "classifier_free",
    "ddim_sample",
    "ddpm_sample",
    "make_betas",
    "register_sampler",
    "respace_betas",
    "respaced_timesteps",
    "sample",
]
