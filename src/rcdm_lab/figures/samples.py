"""Fig. 1a/8 (validation images) and Fig. 1b/9/28 (`images=` any folder, e.g. out-of-distribution photos).

Each row: the input image, then samples from its representation. All rows share the same noise, so what changes
down a column is due to the representation alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rcdm_lab.figures.blocks import representation_spreads, sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.metrics.factor_classifier import factor_classifier_for, predict_factors
from rcdm_lab.resize import resize_and_center_crop
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 1a/8, 1b/9/28"
SUMMARY = "samples from validation images, or from any `images=` folder"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    num_images: int           # input images, one row each (validation items, or the images= folder, in order)
    samples_per_image: int    # samples per input image (the same noise for every row)
    first_image: int = 0      # the rows are input images first_image .. first_image + num_images - 1
    # Also say which labelled factors each row's samples keep (datasets with factor labels, e.g. shapes): the
    # factor classifier of metric=factors (trained on the run's data once, then cached) reads every sample.
    factors: bool = False

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_images"), integer("samples_per_image"),
                              integer("first_image", minimum=0)])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_images, settings.samples_per_image
    images, names = ctx.input_images(n, offset=settings.first_image)
    h = ctx.run.pipeline.encode(images)
    samples = ctx.sample(h, k)
    png = ctx.save(labelled_rows(sample_rows(images, samples, k), names))
    sample_reps = ctx.run.pipeline.encode(samples)
    diversity = sample_diversity(samples, sample_reps, k)
    spread, variance_png = representation_spreads(ctx, {"": (ctx.run, h, sample_reps)}, k)
    results = {"figure_png": png, "images": names, "samples_per_image": k, "diversity": diversity,
               "spread": spread[""], "dim_variance_png": variance_png}
    if settings.factors:
        results["factors_kept"] = dict(zip(names, factors_kept(ctx, images, samples, k, settings.first_image),
                                           strict=True))
    return results


def factors_kept(ctx: FigureContext, images: Tensor, samples: Tensor, k: int, first_image: int) -> list[dict]:
    """Per input image, {factor: fraction of its k samples the factor classifier reads as the input's value}.

    The input's value is its label for validation items, and the classifier's own reading of the input (squared
    at the model's resolution) for images= files, which have no labels.
    """
    classifier, _ = factor_classifier_for(ctx.run)
    if ctx.images:
        reference = predict_factors(classifier, resize_and_center_crop(images, ctx.run.pipeline.resolution))
    else:
        labels = ctx.run.val_items(first_image + len(images))["labels"]
        reference = classifier.targets({f: values[first_image:] for f, values in labels.items()})
    predicted = predict_factors(classifier, samples)
    kept = {f: (predicted[f].cpu().view(len(images), k) == reference[f].cpu()[:, None]).double().mean(1)
            for f in predicted}
    return [{f: float(kept[f][i]) for f in kept} for i in range(len(images))]
