"""Fig. 35: what a representation keeps as its encoder trains, e.g. VICReg after 1, 5 and 50 epochs.

One RCDM per encoder checkpoint, given in training order (ckpts=[...], labels=[1,5,50]). The same inputs and the
same noise go through every model; rows are grouped by input image, so reading down one image's rows shows the
samples tighten from colour and texture to shape as the encoder trains. Per model we add how close the samples'
representations stay to their conditioning, in that model's own encoder space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcdm_lab.figures.blocks import ModelBlock, block_rows, model_blocks, model_summary, print_diversity, same_noise
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.distances import squared_distances_to
from rcdm_lab.metrics.diversity import mean_pairwise_distance
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 35"
SUMMARY = ("the same inputs through models trained on encoder checkpoints of increasing training "
           "(`ckpts=[...]`)")
SEVERAL_MODELS = True


@dataclass(frozen=True)
class Settings:
    num_images: int          # input images; each gets one row per checkpoint
    first_image: int         # inputs first_image .. first_image + num_images - 1 (validation items or images=)
    samples_per_image: int   # samples per input and checkpoint

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_images"), integer("first_image", minimum=0),
                              integer("samples_per_image")])


def closeness(block: ModelBlock) -> dict[str, float | None]:
    """Mean squared L2 from the samples' representations to their conditioning h, raw and relative.

    Each checkpoint's encoder space has its own scale (an early encoder may map everything close together), so
    the raw number cannot be compared across checkpoints; divided by the mean squared distance between the
    different inputs' representations it can: 0 = the samples map back onto h, 1 = as far as another input.
    """
    n, k = len(block.h), block.k
    to_h = float(squared_distances_to(block.h, block.sample_reps.view(n, k, -1)).mean())
    between_inputs = mean_pairwise_distance(block.h, n) if n > 1 else 0.0
    return {"sq_l2_to_conditioning": to_h,
            "relative_to_between_inputs": to_h / between_inputs if between_inputs > 0 else None}


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    ctx.require_runs(2, "training_checkpoints")   # a progression needs at least two checkpoints
    n, k = settings.num_images, settings.samples_per_image
    images, names = ctx.input_images(n, offset=settings.first_image)
    blocks = model_blocks(ctx, images, names, k)
    rows, row_labels = block_rows(blocks, by_image=True)
    png = ctx.save(labelled_rows(rows, row_labels))
    models = {block.label: {**model_summary(block), **closeness(block)} for block in blocks}
    print_diversity("training_checkpoints", blocks, models)
    return {"figure_png": png, "images": names, "samples_per_image": k, "same_noise": same_noise(blocks),
            "models": models}
