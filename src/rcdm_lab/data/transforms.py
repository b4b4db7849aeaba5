"""Image geometry shared by datasets, the encoder input and sampling from arbitrary images."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of a (3, H, W) or (B, 3, H, W) image to `size` (antialiased), then centre-crop."""
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    height, width = x.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        x = F.interpolate(x.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top:top + size, left:left + size].clamp(0, 1)
    return x if batched else x[0]
