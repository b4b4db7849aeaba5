"""Which labelled factors do the samples keep? The factor classifiers of `metric=factors`, as a figure.

Rows: a validation image, then its samples (every row shares the same noise); under each sample, the factors the
classifier reads differently from the conditioning's true value (blank: it kept them all), framed red when the shape
changed. Beside it, factors.png: kept per factor with its 95 % interval, chance and ceiling (rcdm_lab.metrics.factors).
Beyond the paper, which argues from pictures; works on any dataset with factor labels (data=shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.factor_classifier import factor_classifier_for, predict_factors
from rcdm_lab.metrics.factors import factor_agreement
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows
from rcdm_lab.viz.plots import factor_bars

PAPER = "beyond the paper"
SUMMARY = "what the samples keep per labelled factor (factor classifiers): kept vs chance and ceiling, changed factors"
SEVERAL_MODELS = False
# Short names under each sample (a 64 px cell holds ~10 characters).
_SHORT = {"shape": "shp", "object_colour": "obj", "background_colour": "bg", "texture": "tex", "scale": "scl",
          "x": "x", "y": "y", "rotation": "rot"}


@dataclass(frozen=True)
class Settings:
    num_conditionings: int    # validation conditionings measured (kept, with its interval over them)
    samples_per_image: int    # samples per conditioning (the same noise for every row)
    rows_shown: int           # conditionings drawn in the grid

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_conditionings", minimum=2), integer("samples_per_image"),
                              integer("rows_shown", minimum=0)])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_conditionings, settings.samples_per_image
    classifier, info = factor_classifier_for(ctx.run)
    items = ctx.run.val_items(n, "figure.num_conditionings")
    samples = ctx.sample(items["h"], k)
    conditionings = (items["x0"] + 1) / 2
    per_factor = factor_agreement(classifier, samples, items["labels"], k, conditioning_images=conditionings)
    bars = factor_bars({f: row["kept"] for f, row in per_factor.items()},
                       {f: row["kept_ci95"] for f, row in per_factor.items()},
                       {f: row["chance"] for f, row in per_factor.items()},
                       {f: row["ceiling"] for f, row in per_factor.items()},
                       ctx.out_dir / "factors.png", title=f"factors kept ({n} conditionings x {k})")
    shown = min(n, settings.rows_shown)
    truth = classifier.targets(items["labels"])
    predicted = predict_factors(classifier, samples[: shown * k])
    changed = [[[f for f in predicted if int(predicted[f][i * k + j]) != int(truth[f][i])] for j in range(k)]
               for i in range(shown)]
    cell_labels = [["", *(" ".join(_SHORT.get(f, f[:3]) for f in cell) for cell in row)] for row in changed]
    red = [[False, *("shape" in cell for cell in row)] for row in changed]
    grid = labelled_rows(sample_rows(conditionings[:shown], samples[: shown * k], k),
                         [f"val {int(i)}" for i in items["index"][:shown]], cell_labels=cell_labels, red_frames=red)
    return {"figure_png": ctx.save(grid), "factors_png": str(bars), "per_factor": per_factor,
            "classifier_val_accuracy": info["val_accuracy"]}
