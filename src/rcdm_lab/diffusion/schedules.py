"""Noise schedules (beta_t) and timestep respacing, following IDDPM / ADM."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch

from rcdm_lab.errors import RCDMError

KNOWN_SCHEDULES = ("linear", "cosine")
COSINE_OFFSET = 0.008  # s in IDDPM eq. 17: keeps beta_t from being vanishingly small near t = 0
MAX_BETA = 0.999  # IDDPM clips the cosine betas so the last step does not become a singularity


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def make_betas(schedule: str, num_timesteps: int = 1000) -> torch.Tensor:
    """beta_1..beta_T as a float64 tensor of shape (T,)."""
    if num_timesteps < 1:
        raise RCDMError(f"num_timesteps must be a positive integer, got {num_timesteps}")
    if schedule == "linear":
        # IDDPM rescales DDPM's 1e-4..0.02 range so that any T reaches roughly the same final alpha_bar.
        scale = 1000 / num_timesteps
        if scale * 0.02 >= 1:
            raise RCDMError(
                f"the linear schedule needs num_timesteps > 20 (its last beta is 20/T = {scale * 0.02:g}); "
                f"use more steps or schedule 'cosine'"
            )
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)
    raise RCDMError(
        f"unknown schedule {schedule!r}; {_did_you_mean(str(schedule), KNOWN_SCHEDULES)}"
        f"Known: {', '.join(KNOWN_SCHEDULES)}"
    )


def _ddim_stride_steps(num_timesteps: int, count: int) -> list[int]:
    for stride in range(1, num_timesteps + 1):
        kept = list(range(0, num_timesteps, stride))
        if len(kept) == count:
            return kept
    raise RCDMError(
        f"no constant stride gives exactly {count} of {num_timesteps} steps for 'ddim{count}'; "
        f"pick another count or use plain {count!r} (even spacing)"
    )


def _parse_count(text: str, spacing: str | int) -> int:
    try:
        count = int(text)
    except ValueError:
        raise RCDMError(
            f"cannot read timestep spacing {spacing!r}; use a step count (100), sections ('10,15,20') "
            f"or 'ddimN' (ddim25)"
        ) from None
    if count < 1:
        raise RCDMError(f"timestep spacing {spacing!r} asks for {count} steps; every count must be >= 1")
    return count


def check_spacing(spacing: str | int) -> None:
    """Raise RCDMError unless `spacing` is a step count >= 1, 'a,b,c' section counts or 'ddimN' (any process)."""
    if isinstance(spacing, bool) or not isinstance(spacing, (int, str)):
        raise RCDMError(f"cannot read timestep spacing {spacing!r}; use a step count (100), sections ('10,15,20') "
                        "or 'ddimN' (ddim25)")
    text = str(spacing).strip()
    parts = [text.removeprefix("ddim")] if text.startswith("ddim") else text.split(",")
    for part in parts:
        _parse_count(part, spacing)


def respaced_timesteps(num_timesteps: int, spacing: str | int) -> list[int]:
    """Indices (ascending) of the original steps kept by `spacing`, guided-diffusion's space_timesteps.

    An int or "N" keeps N evenly spaced steps (first and last included); "a,b,c" splits the process into
    equal sections and keeps a, b, c evenly spaced steps in each; "ddimN" keeps range(0, T, stride) with the
    stride that yields exactly N steps.
    """
    text = str(spacing).strip()
    if text.startswith("ddim"):
        count = _parse_count(text[len("ddim") :], spacing)
        if count > num_timesteps:
            raise RCDMError(f"'{text}' asks for {count} steps but the process only has {num_timesteps}")
        return _ddim_stride_steps(num_timesteps, count)

    counts = [_parse_count(part, spacing) for part in text.split(",")]
    section_size, remainder = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = section_size + (1 if i < remainder else 0)
        if count > size:
            raise RCDMError(
                f"timestep spacing {spacing!r}: section {i} has {size} steps, cannot keep {count}; "
                f"ask for at most {size} there"
            )
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated (not j * stride) so the rounding matches guided-diffusion step for step
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respace_betas(betas: torch.Tensor, kept: Sequence[int]) -> torch.Tensor:
    """Betas of the shorter process whose alpha_bar at each kept step equals the original one there."""
    alpha_bar = torch.cumprod(1 - betas.to(torch.float64), dim=0)[torch.as_tensor(list(kept), dtype=torch.long)]
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous
