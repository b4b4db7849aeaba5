"""Image grids: one row per conditioning, first column the conditioning image, then its samples."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    low, high = value_range
    scaled = (images.detach().float().cpu() - low) / (high - low)
    return (scaled.clamp(0, 1) * 255).round().to(torch.uint8)


def conditioning_grid(
    conditioning: torch.Tensor,
    samples: torch.Tensor,
    padding: int = 2,
    separator: int = 4,
) -> torch.Tensor:
    """A (3, H, W) uint8 grid: row i = conditioning[i] (in [0, 1], any size) then its samples (in [-1, 1]).

    `samples` is (N * k, 3, R, R), grouped by conditioning as `RCDMPipeline.sample` returns it. The conditioning
    image is resized to R so a row reads as "this image -> what the representation keeps". A wider gap separates
    it from the samples.
    """
    n = len(conditioning)
    if len(samples) % n:
        raise ValueError(f"{len(samples)} samples do not split into {n} rows")
    k = len(samples) // n
    size = samples.shape[-1]
    cond = F.interpolate(conditioning.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    cond_u8, samples_u8 = to_uint8(cond, (0.0, 1.0)), to_uint8(samples)
    cell = size + padding
    height = n * cell + padding
    width = (k + 1) * cell + padding + separator
    grid = torch.full((3, height, width), 255, dtype=torch.uint8)
    for row in range(n):
        top = padding + row * cell
        grid[:, top:top + size, padding:padding + size] = cond_u8[row]
        for col in range(k):
            left = padding + separator + (col + 1) * cell
            grid[:, top:top + size, left:left + size] = samples_u8[row * k + col]
    return grid


def save_png(image: torch.Tensor, path: str | Path, upscale: int = 1) -> Path:
    """Write a (3, H, W) uint8 tensor as PNG, optionally enlarged (nearest) so 32 px samples are visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    picture.save(path)
    return path
