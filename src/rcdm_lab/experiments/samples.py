"""Fig. 1a/8 (validation images) and Fig. 1b/9/28 (`images=` any folder, e.g. out-of-distribution photos).

Each row: the input image, then samples from its representation. All rows share the same noise, so what changes
down a column is due to the representation alone.
"""

from __future__ import annotations

from typing import Any

from rcdm_lab.experiments.context import FigureContext
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.settings import Rule, integer
from rcdm_lab.viz.grid import labelled_rows

# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_images"),
    integer("samples_per_image"),
]


def make(ctx: FigureContext, settings: dict[str, Any]) -> dict[str, Any]:
    n, k = int(settings["num_images"]), int(settings["samples_per_image"])
    images, names = ctx.input_images(n)
    h = ctx.run.pipeline.encode(images)
    samples = ctx.sample(h, k)
    rows = [[images[i], *samples[i * k:(i + 1) * k]] for i in range(n)]
    png = ctx.save(labelled_rows(rows, names))
    diversity = sample_diversity(samples, ctx.run.pipeline.encode(samples), k)
    return {"figure_png": png, "images": names, "samples_per_image": k, "diversity": diversity}
