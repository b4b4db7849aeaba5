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


# A dimension whose samples spread less than this fraction of the data's variance is "held" by the conditioning.
HELD_FRACTION = 0.1


def representation_spread(h: Tensor, sample_reps: Tensor, samples_per_condition: int,
                          data_variance: Tensor | None) -> dict[str, object]:
    """How close each sample stays to its conditioning, and which dimensions the samples hold.

    `h` is (N, D), `sample_reps` (N * k, D) grouped by conditioning, `data_variance` (D,) the per-dimension variance
    of the representation over the data (the validation gallery). Distances are also given relative to the mean
    squared distance between two data points, 2 * sum(data_variance): 0 is the conditioning itself, about 1 a
    random other image. Per dimension that varies over the data: the variance of the k samples (mean over
    conditionings) over the data's; `held_fraction` is the share of those below HELD_FRACTION (what h fixes),
    `dim_variance_ratio` the ratios (k >= 2). Without `data_variance` (no data to compare with): the distances.
    """
    n, k = len(h), samples_per_condition
    if sample_reps.shape != (n * k, h.shape[1]) or data_variance is not None and data_variance.shape != h.shape[1:]:
        raise ValueError(f"h {tuple(h.shape)}, {tuple(sample_reps.shape)} sample representations and data variance "
                         f"{tuple(data_variance.shape)} do not match {n} conditionings x {k} samples")
    h, reps = h.double().cpu(), sample_reps.double().cpu().view(n, k, -1)
    sq_l2 = (reps - h[:, None]).pow(2).sum(-1)                    # (N, k)
    if data_variance is None:
        return {"sq_l2_to_conditioning": sq_l2.tolist()}
    data_variance = data_variance.double().cpu()
    random_pair = 2 * float(data_variance.sum())
    result: dict[str, object] = {
        "sq_l2_to_conditioning": sq_l2.tolist(),
        "relative_sq_l2_to_conditioning": (sq_l2 / random_pair).tolist() if random_pair > 0 else None,
        "mean_relative_sq_l2": float(sq_l2.mean() / random_pair) if random_pair > 0 else None,
    }
    # Dimensions constant over the data (a ReLU unit no image turns on) say nothing about what h keeps.
    varying = data_variance > 1e-12
    if k >= 2 and varying.any():
        ratio = reps.var(1).mean(0)[varying] / data_variance[varying]   # (D',)
        result.update(held_fraction=float((ratio < HELD_FRACTION).double().mean()), varying_dims=int(varying.sum()),
                      median_dim_variance_ratio=float(ratio.median()), dim_variance_ratio=ratio.float())
    return result
