"""Fig. 16: the closest training images of RCDM samples, in representation space -- does the model copy its data?

Each row: the conditioning image (red frame, as in the paper), one of its samples, then the sample's
`num_neighbors` nearest training images by the distance between representations. A sample that merely reproduced
a training image would sit next to it; the JSON puts each sample's distance to its conditioning next to its
distance to the nearest training image (and the conditioning's own nearest-training distance as a yardstick).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.knn import METRICS, check_metric, nearest_neighbors, pairwise_distances
from rcdm_lab.settings import integer, satisfies
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 16"
SUMMARY = "each sample's closest training images in representation space (does the model copy?)"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    first_image: int         # conditionings: input images first_image .. first_image + num_images - 1
    num_images: int          # conditioning images
    samples_per_image: int   # samples per conditioning (one row each); all conditionings share the same noise
    num_neighbors: int       # closest training images shown per sample; at most the training set size
    metric: str              # squared L2 (l2) | cosine (1 - cosine similarity) between representations

    def __post_init__(self) -> None:
        check_settings(self, [integer("first_image", minimum=0), integer("num_images"), integer("samples_per_image"),
                              integer("num_neighbors"), satisfies("metric", check_metric, " or ".join(METRICS))])


def training_neighbors(reps: Tensor, train_reps: Tensor, num_neighbors: int,
                       metric: str = "l2") -> tuple[Tensor, Tensor]:
    """(Q, n) distances (ascending) and indices of each representation's `num_neighbors` closest training items."""
    if not 1 <= num_neighbors <= len(train_reps):
        raise RCDMError(f"figure.num_neighbors={num_neighbors}, but the training set holds {len(train_reps)} "
                        f"representations: use 1 <= num_neighbors <= {len(train_reps)}")
    return nearest_neighbors(reps, train_reps, num_neighbors, metric)


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_images, settings.samples_per_image
    num_neighbors, metric = settings.num_neighbors, settings.metric
    train = ctx.run.representations("train")
    # Checked before sampling: a bad setting should fail in a second, not after the diffusion model ran.
    training_neighbors(train[:1], train, num_neighbors, metric)
    images, names = ctx.input_images(n, offset=settings.first_image)
    h = ctx.run.pipeline.encode(images).float().cpu()
    samples = ctx.sample(h, k)
    sample_reps = ctx.run.pipeline.encode(samples).float().cpu()
    distances, indices = training_neighbors(sample_reps, train, num_neighbors, metric)
    owner = torch.arange(n).repeat_interleave(k)                 # sample s was conditioned on image owner[s]
    to_conditioning = pairwise_distances(sample_reps, h, metric)[torch.arange(n * k), owner]
    cond_distance, _ = training_neighbors(h, train, 1, metric)

    neighbours = ctx.run.images("train", indices.flatten()).view(n * k, num_neighbors, *samples.shape[1:])
    rows = [[images[owner[s]], samples[s], *neighbours[s]] for s in range(n * k)]
    # Under the sample: its distance to its conditioning; under each neighbour: its distance to the sample.
    cell_labels = [["", f"d={float(to_conditioning[s]):.3g}", *[f"d={float(d):.3g}" for d in distances[s]]]
                   for s in range(n * k)]
    red_frames = [[True] + [False] * (num_neighbors + 1) for _ in range(n * k)]
    row_labels = [f"{names[owner[s]]} #{s % k}" for s in range(n * k)]
    png = ctx.save(labelled_rows(rows, row_labels, cell_labels, red_frames))

    closer = to_conditioning < distances[:, 0]
    return {
        "figure_png": png,
        "images": names,
        "metric": metric,
        # Fraction of samples closer to their conditioning than to any training image: 1.0 = nothing copied.
        "fraction_closer_to_conditioning": float(closer.double().mean()),
        "conditioning_nearest_train_distance": cond_distance[:, 0].tolist(),
        "samples": [{
            "image": names[owner[s]],
            "sample": s % k,
            "neighbor_indices": indices[s].tolist(),
            "neighbor_distances": distances[s].tolist(),
            "distance_to_conditioning": float(to_conditioning[s]),
            "distance_to_nearest_neighbor": float(distances[s, 0]),
            "closer_to_conditioning": bool(closer[s]),
        } for s in range(n * k)],
    }
