"""Fig. 27: samples from the mean representation of each class of the training set.

The mean of a class's training representations is a point no image was encoded to; sampling from it shows what
the class's images share in the representation. A row per class: the training image of that class nearest to
the mean (so the reader sees which real image the mean is closest to), then samples from the mean; all rows
share the same noise, so differences down a column come from the class means alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.figures.probe_source import factor_labels, resolve_class
from rcdm_lab.metrics.distances import squared_distances_to
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.metrics.knn import nearest_neighbors
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 27"
SUMMARY = "samples from the mean representation of a class"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    factor: str | None                   # the label whose classes are averaged; null: "class", else "shape"
    classes: list[str | int] | None      # class names or indices to show, e.g. [circle, star]; null: every class
    max_classes: int                     # at most this many rows
    samples_per_class: int               # samples from each class mean (the same noise for every row)

    def __post_init__(self) -> None:
        check_settings(self, [integer("max_classes"), integer("samples_per_class")])


def class_means(reps: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(C, D) mean representation of each class in `classes` and (C,) how many rows each averages."""
    means, counts = [], []
    for c in classes:
        members = reps[labels == c]
        if len(members) == 0:
            raise RCDMError(f"class {c} has no training items to average: choose classes present in the train split")
        # Accumulated in float64: a mean over thousands of float32 rows otherwise drifts in the last digits.
        means.append(members.double().mean(dim=0).to(reps.dtype))
        counts.append(len(members))
    return torch.stack(means), torch.tensor(counts)


def chosen_classes(labels: Tensor, names: list[str], factor: str, wanted: Sequence[int | str] | None,
                   max_classes: int) -> list[int]:
    """Class indices to show: `wanted` (names or indices), else every class present in the train split; capped."""
    if wanted is None:
        present = set(labels.unique().tolist())
        classes = [c for c in range(len(names)) if c in present]
    else:
        classes = list(dict.fromkeys(resolve_class(names, w, factor) for w in wanted))
        empty = [names[c] for c in classes if not bool((labels == c).any())]
        if empty:
            raise RCDMError(f"classes {empty} of factor {factor!r} have no training items: choose others")
    return classes[:max_classes]


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    k = settings.samples_per_class
    run = ctx.run
    target = factor_labels(run, settings.factor)
    names, labels = target.class_names, target.y_train
    classes = chosen_classes(labels, names, target.name, settings.classes, settings.max_classes)
    reps = run.representations("train")
    means, counts = class_means(reps, labels, classes)

    # The shown image: the class member nearest to the mean; also the nearest of ANY class (is the mean inside
    # its class's region of the representation space?).
    nearest, nearest_sq_l2 = [], []
    for c, mean in zip(classes, means, strict=True):
        members = torch.nonzero(labels == c).squeeze(1)
        distance, index = nearest_neighbors(mean[None], reps[members], k=1)
        nearest.append(int(members[index[0, 0]]))
        nearest_sq_l2.append(float(distance[0, 0]))
    any_distance, any_index = nearest_neighbors(means, reps, k=1)

    samples = ctx.sample(means, k)   # every class mean gets the same k noise images
    sample_reps = run.pipeline.encode(samples).cpu()
    to_mean = squared_distances_to(means, sample_reps.view(len(classes), k, -1))
    images = run.images("train", nearest)
    row_labels = [f"{names[c]} (n={int(n)})" for c, n in zip(classes, counts, strict=True)]
    png = ctx.save(labelled_rows(sample_rows(images, samples, k), row_labels))

    per_class = []
    for r, c in enumerate(classes):
        block = slice(r * k, (r + 1) * k)
        per_class.append({
            "class": names[c],
            "count": int(counts[r]),
            "nearest_train_index": nearest[r],
            "nearest_sq_l2": nearest_sq_l2[r],                   # mean -> nearest training image of its class
            "nearest_any_sq_l2": float(any_distance[r, 0]),      # mean -> nearest training image of any class
            "nearest_any_class": names[int(labels[any_index[r, 0]])],
            "samples_sq_l2_to_mean": float(to_mean[r].mean()),   # how faithfully the samples encode to the mean
            "diversity": sample_diversity(samples[block], sample_reps[block], k),
        })
    return {"figure_png": png, "factor": target.name, "samples_per_class": k, "classes": per_class}
