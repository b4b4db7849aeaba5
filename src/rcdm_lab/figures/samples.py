"""Fig. 1a/8 (validation images) and Fig. 1b/9/28 (`images=` any folder, e.g. out-of-distribution photos).

Each row: the input image, then samples from its representation. All rows share the same noise, so what changes
down a column is due to the representation alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 1a/8, 1b/9/28"
SUMMARY = "samples from validation images, or from any `images=` folder"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    num_images: int           # input images, one row each (validation items 0.., or the images= folder)
    samples_per_image: int    # samples per input image (the same noise for every row)

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_images"), integer("samples_per_image")])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_images, settings.samples_per_image
    images, names = ctx.input_images(n)
    h = ctx.run.pipeline.encode(images)
    samples = ctx.sample(h, k)
    png = ctx.save(labelled_rows(sample_rows(images, samples, k), names))
    diversity = sample_diversity(samples, ctx.run.pipeline.encode(samples), k)
    return {"figure_png": png, "images": names, "samples_per_image": k, "diversity": diversity}
