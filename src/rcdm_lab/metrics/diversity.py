"""How much do the samples of one conditioning differ from each other? (the per-model numbers of Fig. 2/24/36)

High pixel diversity with low representation diversity is the paper's picture of a representation that keeps
little: the samples look different but the encoder cannot tell them apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcdm_lab.metrics.knn import pairwise_distances


def mean_pairwise_distance(points: Tensor, group_size: int) -> float:
    """Mean squared L2 between distinct points of the same group ((N * k, D) grouped by k), over all groups."""
    if group_size < 2:
        return 0.0
    groups = points.flatten(1).reshape(-1, group_size, points[0].numel())
    off_diagonal = ~torch.eye(group_size, dtype=torch.bool)
    per_group = [pairwise_distances(g, g)[off_diagonal].mean() for g in groups]
    return float(torch.stack(per_group).mean())


def sample_diversity(samples01: Tensor, sample_reps: Tensor, samples_per_condition: int) -> dict[str, float]:
    """Pixel-space (per-pixel mean squared difference, images in [0, 1]) and representation-space diversity."""
    pixels = samples01[0].numel()
    return {
        "pixel_mean_sq_diff": mean_pairwise_distance(samples01.cpu(), samples_per_condition) / pixels,
        "representation_mean_pairwise_sq_l2": mean_pairwise_distance(sample_reps.cpu(), samples_per_condition),
    }
