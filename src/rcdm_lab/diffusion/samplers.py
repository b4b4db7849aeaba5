"""Ancestral DDPM and DDIM sampling as pure functions of a diffusion and a denoiser callable.

A denoiser is `denoiser(x_t, t_model, **cond) -> raw network output`, called with the ORIGINAL step indices
(`diffusion.model_timesteps(t)`) and the conditioning keyword arguments untouched.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rcdm_lab.diffusion.gaussian import GaussianDiffusion
from rcdm_lab.errors import RCDMError

Denoiser = Callable[..., Tensor]
KNOWN_SAMPLERS = ("ddpm", "ddim")


def _initial_noise(
    shape: Sequence[int],
    noise: Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise RCDMError(f"noise has shape {tuple(noise.shape)} but samples of shape {tuple(shape)} were asked for")
        return noise
    return torch.randn(tuple(shape), generator=generator, device=device or "cpu", dtype=dtype or torch.float32)


def _reverse_steps(diffusion: GaussianDiffusion, progress: bool, desc: str) -> Iterable[int]:
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    return tqdm(steps, desc=desc, leave=False) if progress else steps


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **cond,
) -> Tensor:
    """Ancestral sampling through every step of `diffusion` (respace it first for fewer steps)."""
    x = _initial_noise(shape, noise, generator, device, dtype)
    for i in _reverse_steps(diffusion, progress, "ddpm"):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = diffusion.p_mean_variance(denoiser(x, diffusion.model_timesteps(t), **cond), x, t, clip_denoised)
        x_prev = out["mean"]
        if i > 0:  # the last step returns the mean: adding noise there would only blur x_0
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_prev.dtype)
            x_prev = x_prev + torch.exp(0.5 * out["log_variance"]) * z
        x = x_prev.to(x.dtype)
    return x


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **cond,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): eta = 0 is deterministic given x_T, eta = 1 is DDPM-like."""
    if not 0.0 <= eta <= 1.0:
        raise RCDMError(f"DDIM eta must lie in [0, 1] (0 = deterministic, 1 = DDPM-like), got {eta}")
    x = _initial_noise(shape, noise, generator, device, dtype)
    for i in _reverse_steps(diffusion, progress, "ddim"):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = diffusion.p_mean_variance(denoiser(x, diffusion.model_timesteps(t), **cond), x, t, clip_denoised)
        # Re-derive eps from the (possibly clipped) x_0 so both DDIM terms describe the same x_0.
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = diffusion.extract("alphas_cumprod", t, x)
        alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        x_prev = out["pred_xstart"] * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        if i > 0 and eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_prev.dtype)
            x_prev = x_prev + sigma * z
        x = x_prev.to(x.dtype)
    return x


def check_sampler_options(sampler: str, eta: float = 0.0) -> None:
    """RCDMError for an unknown sampler or an option it does not take (also checked before a command starts)."""
    if sampler not in KNOWN_SAMPLERS:
        close = difflib.get_close_matches(str(sampler), KNOWN_SAMPLERS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RCDMError(f"unknown sampler {sampler!r}; {hint}Known: {', '.join(KNOWN_SAMPLERS)}")
    if sampler == "ddpm" and eta != 0:
        raise RCDMError(f"eta={eta} only applies to sampler='ddim'; set eta=0 or sampler='ddim'")


def sample(
    diffusion: GaussianDiffusion,
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    sampler: str = "ddpm",
    steps: int | str = 100,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **cond,
) -> Tensor:
    """Respace the full-length `diffusion` to `steps` and run `sampler` ("ddpm" or "ddim") on it."""
    check_sampler_options(sampler, eta)
    respaced = diffusion.respace(steps)
    options = dict(
        generator=generator,
        noise=noise,
        clip_denoised=clip_denoised,
        progress=progress,
        device=device,
        dtype=dtype,
    )
    if sampler == "ddim":
        return ddim_sample(respaced, denoiser, shape, eta=eta, **options, **cond)
    return ddpm_sample(respaced, denoiser, shape, **options, **cond)
