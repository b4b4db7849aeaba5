"""Fig. 2/24 and Fig. 36: the same input images through several RCDMs, one per representation.

Each model gets a block of rows -- an input image, then k samples from that model's representation of it -- and
every block sees the same inputs and the same noise (when the models share a resolution), so a difference between
blocks is a difference between representations. A representation that keeps more of the image (a backbone, an SSL
encoder) gives samples that vary less than one that keeps little (a projector head, a random network): the
per-model sample diversity, in pixels and in that model's own encoder space, puts a number on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcdm_lab.figures.blocks import (
    block_rows,
    model_blocks,
    model_summary,
    print_diversity,
    representation_spreads,
    same_noise,
)
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 2/24/36"
SUMMARY = ("the same inputs through several models (`ckpts=[...]`), one block each, with pixel and representation "
           "diversity")
SEVERAL_MODELS = True


@dataclass(frozen=True)
class Settings:
    num_images: int          # input images per model block (the paper shows 1)
    first_image: int         # inputs first_image .. first_image + num_images - 1 (validation items or images=)
    samples_per_image: int   # samples per input (Fig. 2: 7, Fig. 24: 9)

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_images"), integer("first_image", minimum=0),
                              integer("samples_per_image")])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    # With one checkpoint this is the samples figure; a single model here almost always means ckpt= (or a sweep)
    # where ckpts=[a,b] was meant, so say so rather than quietly draw a one-block "comparison".
    ctx.require_runs(2, "compare_models")
    n, k = settings.num_images, settings.samples_per_image
    images, names = ctx.input_images(n, offset=settings.first_image)
    blocks = model_blocks(ctx, images, names, k)
    rows, row_labels = block_rows(blocks)
    png = ctx.save(labelled_rows(rows, row_labels))
    spreads, variance_png = representation_spreads(
        ctx, {block.label: (block.run, block.h, block.sample_reps) for block in blocks}, k)
    models = {block.label: {**model_summary(block), "spread": spreads[block.label]} for block in blocks}
    print_diversity("compare_models", blocks, models)
    return {"figure_png": png, "images": names, "samples_per_image": k, "same_noise": same_noise(blocks),
            "models": models, "dim_variance_png": variance_png}
