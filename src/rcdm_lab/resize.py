"""Every image resize in rcdm_lab, and the diffusion target made with one.

Three resizes on purpose, each pinned by what it must match:
- `resize_and_center_crop`: what the encoder sees (bilinear; rounded as torchvision's Resize + CenterCrop, so
  features match a torchvision preprocessing pipeline bit for bit);
- `resize_and_center_crop_pil`: how datasets bring decoded files to their source size (Lanczos on 8-bit pixels);
- `resize_to_resolution`: source images -> the diffusion resolution (bicubic, antialiased; the cache stores it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def resize_and_center_crop(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) float: shorter side to ``size`` (bilinear, antialiased), then the central square."""
    height, width = images.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short != size:
        new_long = int(size * long / short)
        height, width = (size, new_long) if height <= width else (new_long, size)
        images = F.interpolate(images, (height, width), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    return images[..., top : top + size, left : left + size]


def resize_and_center_crop_pil(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (Lanczos, antialiased), then the central size x size square."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_to_resolution(images: Tensor, size: int) -> Tensor:
    """Antialiased bicubic resize of a square (B, 3, S, S) batch in [0, 1] to (B, 3, size, size); a no-op at S."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


def quantise(images01: Tensor) -> Tensor:
    """[0, 1] float -> uint8, rounding to nearest."""
    return images01.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def uint8_to_x0(image: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [-1, 1]."""
    # numpy, not torch: per-item torch ops spread over threads and crawl when the CPU is shared.
    return torch.from_numpy(image.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def to_x0(image01: Tensor, resolution: int) -> Tensor:
    """A (3, S, S) image in [0, 1] -> the diffusion target (3, R, R) in [-1, 1], quantised like the cache."""
    return uint8_to_x0(quantise(resize_to_resolution(image01[None], resolution))[0])
