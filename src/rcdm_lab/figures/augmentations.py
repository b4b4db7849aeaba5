"""Fig. 3/25/26: is a representation invariant to a transformation of its input? Sample from it and look.

One input image and fixed transformations of it -- vertical shift, zoom out, zoom in, grayscale, colour jitter --
one row each under the original: the (transformed) image, then k samples from its representation. If the samples
of a transformed image look like those of the original, the representation discarded the change (the paper's SSL
backbones ignore vertical shifts); if they follow it, the representation kept it (scale, grayscale, background
colour). One block per model, every row and model from the same noise, so only the representation differs.

The transformations are deterministic (fixed parameters, not random draws): the figure must show the same change
every time it is made and for every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.blocks import block_rows, model_blocks, model_summary, print_diversity, same_noise
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.distances import single_augmentations, squared_distances_to
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.settings import all_of, integer, number, one_of
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 3/25/26"
SUMMARY = ("vertical shift, zoom out, zoom in, grayscale, colour jitter (fixed parameters) and each one's "
           "representation distance to the original")
SEVERAL_MODELS = False

TRANSFORMS = ("vertical_shift", "zoom_out", "zoom_in", "grayscale", "color_jitter")
PADDINGS = {"edge": "replicate", "zero": "constant"}


@dataclass(frozen=True)
class Settings:
    image_index: int          # which input image (validation item or file of images=)
    samples_per_image: int    # samples per row (paper: 3)
    transforms: list[str]     # rows under the original, in order; each of TRANSFORMS at most once
    shift: float              # vertical_shift: fraction of the height the content moves down (negative: up)
    shift_padding: str        # vertical_shift fill: edge (repeat the top row: background continues) or zero (black)
    zoom_out: float           # zoom_out: side of the shrunk image as a fraction of the original
    zoom_out_padding: str     # zoom_out fill: zero (black border) or edge (smears objects touching the border)
    zoom_in: float            # zoom_in: central fraction of the side kept and resized back
    brightness: float         # color_jitter factors (fixed, not random): 1 = unchanged
    contrast: float
    saturation: float
    hue: float                # hue rotation in turns, in [-0.5, 0.5]; 0 = unchanged

    def __post_init__(self) -> None:
        check_settings(self, [
            integer("image_index", minimum=0),
            integer("samples_per_image"),
            all_of("transforms", TRANSFORMS),
            number("shift", above=-1, below=1),
            one_of("shift_padding", PADDINGS),
            number("zoom_out", above=0, at_most=1),
            one_of("zoom_out_padding", PADDINGS),
            number("zoom_in", above=0, at_most=1),
            number("brightness", at_least=0),
            number("contrast", at_least=0),
            number("saturation", at_least=0),
            number("hue", at_least=-0.5, at_most=0.5),
        ])
        if len(set(self.transforms)) != len(self.transforms):
            raise RCDMError(f"figure.transforms {list(self.transforms)}: name each at most once, from "
                            f"{list(TRANSFORMS)}")


def _pad(images: Tensor, left: int, right: int, top: int, bottom: int, padding: str) -> Tensor:
    if padding not in PADDINGS:
        raise RCDMError(f"unknown padding {padding!r} (figure.shift_padding / figure.zoom_out_padding); "
                        f"use one of {sorted(PADDINGS)}")
    return F.pad(images, (left, right, top, bottom), mode=PADDINGS[padding])


def vertical_shift(images: Tensor, fraction: float, padding: str = "edge") -> Tensor:
    """Content moved down by round(fraction * H) pixels (up if negative); the uncovered rows repeat the edge row
    ("edge") or are black ("zero"). The size is unchanged."""
    height = images.shape[-2]
    if not -1 < fraction < 1:
        raise RCDMError(f"figure.shift is a fraction of the height in (-1, 1), got {fraction}")
    shift = round(fraction * height)
    if shift >= 0:
        return _pad(images, 0, 0, shift, 0, padding)[..., :height, :]
    return _pad(images, 0, 0, 0, -shift, padding)[..., -shift:, :]


def zoom_out(images: Tensor, scale: float, padding: str = "edge") -> Tensor:
    """The image shrunk to `scale` of its side and padded back, centred, to its size.

    "zero" padding is the figure's default: "edge" repeats the border pixels outwards, which smears any object that
    touches the border into stripes the encoder would see as content.
    """
    if not 0 < scale <= 1:
        raise RCDMError(f"figure.zoom_out is the shrunk side as a fraction of the original, in (0, 1], got {scale}")
    height, width = images.shape[-2:]
    small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
    # Antialiased resizing may overshoot [0, 1] by round-off; the encoders assume the exact range.
    small = TF.resize(images, [small_h, small_w], antialias=True).clamp(0, 1)
    top, left = (height - small_h) // 2, (width - small_w) // 2
    return _pad(small, left, width - small_w - left, top, height - small_h - top, padding)


def zoom_in(images: Tensor, crop: float) -> Tensor:
    """The central `crop` fraction of each side, resized back to the full size (the Appendix C centre crop)."""
    if not 0 < crop <= 1:
        raise RCDMError(f"figure.zoom_in is the kept central fraction of the side, in (0, 1], got {crop}")
    return single_augmentations(crop_fraction=crop)["center_crop"](images)


def grayscale(images: Tensor) -> Tensor:
    """Luma, kept as three equal channels so the encoders see an RGB image."""
    return single_augmentations()["grayscale"](images)


def color_jitter(images: Tensor, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0) -> Tensor:
    """Fixed colour changes, in ColorJitter's order: factors of 1 (hue 0) leave the image as it is."""
    if min(brightness, contrast, saturation) < 0 or not -0.5 <= hue <= 0.5:
        raise RCDMError(f"colour jitter needs brightness/contrast/saturation >= 0 and hue in [-0.5, 0.5], got "
                        f"{brightness}, {contrast}, {saturation}, {hue}")
    images = TF.adjust_brightness(images, brightness)
    images = TF.adjust_contrast(images, contrast)
    images = TF.adjust_saturation(images, saturation)
    return TF.adjust_hue(images, hue)


def transforms_from(settings: Settings) -> dict[str, Callable[[Tensor], Tensor]]:
    """The figure's transformations by name, in the order of `settings.transforms` (its rows)."""
    available = {
        "vertical_shift": partial(vertical_shift, fraction=settings.shift, padding=settings.shift_padding),
        "zoom_out": partial(zoom_out, scale=settings.zoom_out, padding=settings.zoom_out_padding),
        "zoom_in": partial(zoom_in, crop=settings.zoom_in),
        "grayscale": grayscale,
        "color_jitter": partial(color_jitter, brightness=settings.brightness, contrast=settings.contrast,
                                saturation=settings.saturation, hue=settings.hue),
    }
    return {name: available[name] for name in settings.transforms}


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    k = settings.samples_per_image
    transforms = transforms_from(settings)
    image, name = ctx.input_images(1, offset=settings.image_index)
    # Row 0 is the untransformed original: its samples are what every transformed row is compared with.
    images = torch.cat([image, *(transform(image) for transform in transforms.values())])
    row_names = ["original", *transforms]
    blocks = model_blocks(ctx, images, row_names, k)
    models = {}
    cell_labels = []
    for block in blocks:
        distances = squared_distances_to(block.h[:1], block.h[None])[0]   # to the original; 0 for the original
        rows = {}
        for i, row in enumerate(row_names):
            rows[row] = {"sq_l2_to_original": float(distances[i]),
                         "diversity": sample_diversity(block.samples[i * k:(i + 1) * k],
                                                       block.sample_reps[i * k:(i + 1) * k], k)}
            # Written under the (transformed) input: how far the transformation moved the representation.
            cell_labels.append([f"d2={float(distances[i]):.3g}"])
        models[block.label] = {**model_summary(block), "transforms": rows}
    figure_rows, row_labels = block_rows(blocks)
    png = ctx.save(labelled_rows(figure_rows, row_labels, cell_labels))
    print_diversity("augmentations", blocks, models)
    return {"figure_png": png, "image": name[0], "transforms": row_names, "samples_per_image": k,
            "same_noise": same_noise(blocks), "models": models}
