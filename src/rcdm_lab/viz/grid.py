"""Image grids: one row per conditioning, first column the conditioning image, then its samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
    samples_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """A (3, H, W) uint8 grid: row i = conditioning[i] (in [0, 1], any size) then its samples (in `samples_range`).

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
    cond_u8, samples_u8 = to_uint8(cond, (0.0, 1.0)), to_uint8(samples, samples_range)
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


def to_pil(image01: torch.Tensor, min_width: int = 0) -> Image.Image:
    """(3, H, W) in [0, 1] as an RGB PIL image, enlarged (nearest, whole factors) to at least `min_width` pixels."""
    picture = Image.fromarray(to_uint8(image01, (0.0, 1.0)).permute(1, 2, 0).numpy(), mode="RGB")
    scale = max(1, min_width // picture.width)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def save_png(image: torch.Tensor, path: str | Path, upscale: int = 1) -> Path:
    """Write a (3, H, W) uint8 tensor as PNG, optionally enlarged (nearest) so 32 px samples are visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST)
    picture.save(path)
    return path


def labelled_rows(
    rows: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    red_frames: Sequence[Sequence[bool]] | None = None,
    cell: int = 64,
    gap_after_first: bool = True,
) -> torch.Tensor:
    """A (3, H, W) uint8 figure: row i = the images rows[i] ((3, h, w) each, in [0, 1], any sizes), left to right.

    Every image is enlarged (nearest) to `cell` px so 32 px samples and text are readable; `row_labels` are
    written left of each row, `cell_labels` under each image (e.g. a distance or a predicted class), and
    `red_frames` draws a red border around flagged images (e.g. misclassified). The first column is set apart
    by a gap: in every figure it holds the conditioning or input image.
    """
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    text_height = 12 if cell_labels is not None else 0
    label_width = 8 + 7 * max((len(label) for label in row_labels), default=0) if row_labels else 0
    pad, gap = 3, 8 if gap_after_first else 0
    columns = max(len(row) for row in rows)
    width = label_width + pad + columns * (cell + pad) + gap
    height = pad + len(rows) * (cell + text_height + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad + r * (cell + text_height + pad)
        if row_labels:
            draw.text((4, top + cell // 2 - 6), row_labels[r], fill="black", font=font)
        for c, image in enumerate(row):
            left = label_width + pad + c * (cell + pad) + (gap if c > 0 else 0)
            # Downscaling (a 224 px input) antialiased, enlarging (32 px samples) nearest: crisp pixels.
            mode = "nearest" if image.shape[-1] <= cell else "area"
            pixels = to_uint8(F.interpolate(image[None].float().cpu(), size=(cell, cell), mode=mode)[0], (0.0, 1.0))
            canvas.paste(Image.fromarray(pixels.permute(1, 2, 0).numpy()), (left, top))
            if red_frames is not None and red_frames[r][c]:
                draw.rectangle((left - 2, top - 2, left + cell + 1, top + cell + 1), outline=(220, 0, 0), width=3)
            if cell_labels is not None and c < len(cell_labels[r]) and cell_labels[r][c]:
                draw.text((left + 1, top + cell + 1), cell_labels[r][c][: cell // 6], fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
