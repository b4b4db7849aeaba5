"""Fig. 16: the closest training images of RCDM samples, in representation space -- does the model copy its data?

Each row: the conditioning image (red frame, as in the paper), one of its samples, then the sample's
`num_neighbors` nearest training images by the distance between representations. A sample that merely reproduced
a training image would sit next to it; the JSON puts each sample's distance to its conditioning next to its
distance to the nearest training image (and the conditioning's own nearest-training distance as a yardstick).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.experiments.context import FigureContext
from rcdm_lab.metrics.knn import METRICS, nearest_neighbors, pairwise_distances
from rcdm_lab.settings import Rule, integer, one_of
from rcdm_lab.viz.grid import labelled_rows


def training_neighbors(reps: Tensor, train_reps: Tensor, num_neighbors: int,
                       metric: str = "l2") -> tuple[Tensor, Tensor]:
    """(Q, n) distances (ascending) and indices of each representation's `num_neighbors` closest training items."""
    if not 1 <= num_neighbors <= len(train_reps):
        raise RCDMError(f"figure.num_neighbors={num_neighbors}, but the training set holds {len(train_reps)} "
                        f"representations: use 1 <= num_neighbors <= {len(train_reps)}")
    return nearest_neighbors(reps, train_reps, num_neighbors, metric)


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("first_image", minimum=0),
    integer("num_images"),
    integer("samples_per_image"),
    integer("num_neighbors"),
    one_of("metric", METRICS),
]


def make(ctx: FigureContext, settings: dict[str, Any]) -> dict[str, Any]:
    n, k = int(settings["num_images"]), int(settings["samples_per_image"])
    num_neighbors, metric = int(settings["num_neighbors"]), str(settings["metric"])
    train = ctx.run.representations("train")
    # Checked before sampling: a bad setting should fail in a second, not after the diffusion model ran.
    training_neighbors(train[:1], train, num_neighbors, metric)
    images, names = ctx.input_images(n, offset=int(settings["first_image"]))
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
