"""Fig. 32: representation algebra h(a) - h(b) + h(c), decoded by RCDM.

Each row: the three input images a, b, c (labelled "a", "-b", "+c"), then samples from h(a) - h(b) + h(c). The paper
uses it for background substitution (a dog on grass - grass + snow). All rows share the same noise, so a column
differs only through the combined representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.distances import squared_distances_to
from rcdm_lab.metrics.knn import METRICS, check_metric, nearest_neighbors
from rcdm_lab.settings import integer, satisfies
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 32"
SUMMARY = "h(a) − h(b) + h(c)"
SEVERAL_MODELS = False


def combine(h_a: Tensor, h_b: Tensor, h_c: Tensor) -> Tensor:
    """h_a - h_b + h_c, computed as h_a + (h_c - h_b) so that b == c gives back exactly h_a (no round-off)."""
    return h_a + (h_c - h_b)


@dataclass(frozen=True)
class Settings:
    triples: list[list[int]]   # [a, b, c] indices into the input images (images= folder order, or val items)
    samples_per_row: int       # samples of each combined representation; every row shares the same noise
    metric: str                # distance for the combined h's nearest training neighbour: l2 | cosine

    def __post_init__(self) -> None:
        if not self.triples or any(len(t) != 3 or min(t) < 0 for t in self.triples):
            raise RCDMError(f"figure.triples must be a non-empty list of [a, b, c] input-image indices >= 0 "
                            f"(e.g. triples=[[0,1,2]]), got {self.triples!r}")
        check_settings(self, [integer("samples_per_row"), satisfies("metric", check_metric, " or ".join(METRICS))])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    triples, k, metric = settings.triples, settings.samples_per_row, settings.metric
    images, names = ctx.input_images(max(max(t) for t in triples) + 1)
    h = ctx.run.pipeline.encode(images).float().cpu()
    index = torch.tensor(triples)
    h_a, h_b, h_c = h[index[:, 0]], h[index[:, 1]], h[index[:, 2]]
    combined = combine(h_a, h_b, h_c)
    train = ctx.run.representations("train")
    nearest_distance, nearest_index = nearest_neighbors(combined, train, 1, metric)

    samples = ctx.sample(combined, k)
    rows = [[images[a], images[b], images[c], *samples[i * k:(i + 1) * k]] for i, (a, b, c) in enumerate(triples)]
    cell_labels = [[f"a {names[a]}", f"-b {names[b]}", f"+c {names[c]}", "="] for a, b, c in triples]
    # Three input columns, not one: no gap after the first, the "=" label marks where the samples start.
    png = ctx.save(labelled_rows(rows, cell_labels=cell_labels, gap_after_first=False))

    sample_reps = ctx.run.pipeline.encode(samples).float().cpu().view(len(triples), k, -1)
    to_a = squared_distances_to(h_a, combined[:, None])[:, 0]
    to_c = squared_distances_to(h_c, combined[:, None])[:, 0]
    samples_to_combined = squared_distances_to(combined, sample_reps).mean(1)
    return {
        "figure_png": png,
        "metric": metric,
        "triples": [{
            "a": names[a], "b": names[b], "c": names[c], "indices": [a, b, c],
            # Squared L2 of h(a) - h(b) + h(c) to h(a) and h(c): which side the result stays closer to.
            "sq_l2_to_a": float(to_a[i]),
            "sq_l2_to_c": float(to_c[i]),
            # A ReLU backbone never outputs negative values: a large fraction means h is off the encoder's range.
            "negative_fraction": float((combined[i] < 0).float().mean()),
            "nearest_train_index": int(nearest_index[i, 0]),
            "nearest_train_distance": float(nearest_distance[i, 0]),
            # Mean squared L2 from the samples' representations to the combined h: is it decoded faithfully?
            "samples_sq_l2_to_result": float(samples_to_combined[i]),
        } for i, (a, b, c) in enumerate(triples)],
    }
