"""Fig. 12: samples from the images a linear probe is most and least confident about.

Among the first `num_candidates` validation images (or the `images=` folder), the probe's softmax confidence (max
probability) ranks them; the `num_images` most confident and the `num_images` least confident form two blocks of
rows: the image (cell label: confidence and predicted class), then samples from its representation, each labelled
with the probe's class for the sample and framed in red when it differs from the image's. The paper finds the
samples of confident representations all in one class, those of unconfident ones mixing classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.data.folder import list_images
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.figures.probe_source import factor_labels, probe_for
from rcdm_lab.settings import integer
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 12"
SUMMARY = "the validation images a linear probe is most and least confident about, and their samples"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    num_candidates: int | None   # the first this many validation images ranked by probe confidence; null: 1000 or all
    num_images: int              # rows per block: the most confident, then the least confident
    samples_per_image: int       # samples per image (the same noise for every row)
    factor: str | None           # the probed label; null: "class", else "shape" (shapes dataset)

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_candidates", minimum=2, optional=True), integer("num_images"),
                              integer("samples_per_image")])


def confidence_extremes(confidence: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Indices of the `count` highest confidences (highest first) and the `count` lowest (lowest first).

    Both come from one stable ordering, so the two sets never share an index when 2 * count <= len(confidence).
    """
    if 2 * count > len(confidence):
        raise RCDMError(f"asked for the {count} most and {count} least confident of {len(confidence)} candidates: "
                        f"raise figure.num_candidates to at least {2 * count} or lower figure.num_images")
    order = torch.argsort(confidence, descending=True, stable=True)
    return order[:count], order[-count:].flip(0)


def _candidates(ctx: FigureContext, num_candidates: int) -> tuple[Tensor, list[str], Tensor | None]:
    """Representations and names of the candidates, and their images when they come from `images=`."""
    run = ctx.run
    if ctx.images:
        count = min(num_candidates, len(list_images(ctx.images)))
        images, names = ctx.input_images(count)
        return run.pipeline.encode(images), names, images
    available = run.split_size("val")
    if num_candidates > available:
        raise RCDMError(f"figure.num_candidates={num_candidates} but the validation split has {available} items: "
                        "lower it (or use a bigger validation set)")
    # The cached representations: ranking thousands of candidates never decodes their images.
    return run.representations("val")[:num_candidates], [f"val {i}" for i in range(num_candidates)], None


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_images, settings.samples_per_image
    num_candidates = ctx.run.count("val", settings.num_candidates, "figure.num_candidates", default=1000)
    run = ctx.run
    target = factor_labels(run, settings.factor)   # the probe's labels, and the true ones of the rows below
    probe = probe_for(ctx, run, settings.factor, target=target)
    h, names, folder_images = _candidates(ctx, num_candidates)
    with torch.no_grad():
        probabilities = torch.softmax(probe(h.to(run.pipeline.device)), dim=1).cpu()
    confidence, predicted = probabilities.max(dim=1)
    most, least = confidence_extremes(confidence, n)
    chosen = torch.cat([most, least])

    images = folder_images[chosen] if folder_images is not None else run.images("val", chosen)
    samples = ctx.sample(h[chosen], k)   # all 2n conditionings share the same k noise images
    sample_predicted = probe.predict(run.pipeline.encode(samples)).cpu().view(2 * n, k)
    true = None
    # True labels only for validation rows, and when the probe's classes are this dataset's (a probe.pt may come
    # from other data).
    if folder_images is None and target.class_names == probe.class_names:
        true = target.y_val[:num_candidates]

    label = probe.class_names
    rows, row_labels, cell_labels, frames = [], [], [], []
    for r, index in enumerate(chosen.tolist()):
        block, rank = ("most", r + 1) if r < n else ("least", r - n + 1)
        rows.append([images[r], *samples[r * k:(r + 1) * k]])
        row_labels.append(f"{block} {rank}: {names[index]}")
        cell_labels.append([f"{float(confidence[index]):.2f} {label[int(predicted[index])]}",
                            *[label[int(c)] for c in sample_predicted[r]]])
        frames.append([False, *(sample_predicted[r] != predicted[index]).tolist()])
    png = ctx.save(labelled_rows(rows, row_labels, cell_labels, frames))

    def block(indices: Tensor, offset: int) -> dict[str, Any]:
        agree = sample_predicted[offset:offset + n] == predicted[indices][:, None]
        summary = {
            "indices": indices.tolist(),
            "names": [names[i] for i in indices.tolist()],
            "confidences": confidence[indices].tolist(),
            "labels": [label[int(c)] for c in predicted[indices]],
            # Fraction of samples the probe puts in the conditioning image's predicted class.
            "samples_match_label": float(agree.double().mean()),
        }
        if true is not None:
            summary["true_labels"] = [label[int(c)] for c in true[indices]]
        return summary

    result = {
        "figure_png": png,
        "factor": probe.factor,
        "probe": ctx.probe or "fitted on the train split",
        "num_candidates": len(confidence),
        "samples_per_image": k,
        "mean_confidence": float(confidence.double().mean()),
        "most_confident": block(most, 0),
        "least_confident": block(least, n),
    }
    if true is not None:
        result["probe_accuracy_on_candidates"] = float((predicted == true).double().mean())
    return result
