"""Are samples recognisably generated from their own conditioning? Paper Table 1b (mean rank, MRR) and Fig. 17.

For N conditionings with k samples each, every sample is encoded with the same frozen encoder and the N
conditioning representations are sorted by distance to it: the rank of its own conditioning is 1 when the sample's
nearest conditioning is its own, and (N + 1) / 2 on average for samples unrelated to their conditioning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rcdm_lab.metrics.knn import pairwise_distances

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun


def conditioning_ranks(sample_reps: Tensor, cond_reps: Tensor, samples_per_condition: int, metric: str = "l2",
                       batch_size: int = 1024) -> Tensor:
    """(N * k,) rank (1 = best) of each sample's own conditioning among all N conditionings, by distance.

    `sample_reps` is (N * k, D) grouped by conditioning, as `RCDMPipeline.sample` returns samples. A conditioning
    tied with the own one does not push it down (rank = 1 + number of strictly closer conditionings).
    """
    if len(sample_reps) != len(cond_reps) * samples_per_condition:
        raise ValueError(f"{len(sample_reps)} sample representations for {len(cond_reps)} conditionings x "
                         f"{samples_per_condition} samples")
    cond_reps = cond_reps.to(sample_reps.device)
    owners = torch.arange(len(cond_reps), device=sample_reps.device).repeat_interleave(samples_per_condition)
    ranks = []
    for start in range(0, len(sample_reps), batch_size):
        distances = pairwise_distances(sample_reps[start:start + batch_size], cond_reps, metric)
        own = distances.gather(1, owners[start:start + batch_size, None])
        ranks.append(1 + (distances < own).sum(dim=1))
    return torch.cat(ranks).cpu()


def rank_summary(ranks: Tensor, num_conditionings: int) -> dict[str, float]:
    """Mean rank, mean reciprocal rank, top-1 and median, with the values chance would give."""
    ranks = ranks.double()
    return {
        "mean_rank": float(ranks.mean()),
        "mrr": float((1 / ranks).mean()),
        "top1": float((ranks == 1).double().mean()),
        "median_rank": float(ranks.median()),
        "chance_mean_rank": (num_conditionings + 1) / 2,
        "chance_top1": 1 / num_conditionings,
    }


def nearest_conditioning_accuracy(sample_reps: Tensor, cond_reps: Tensor, samples_per_condition: int,
                                  metric: str = "l2") -> float:
    """Fraction of samples whose nearest conditioning is their own (top-1 of `conditioning_ranks`)."""
    ranks = conditioning_ranks(sample_reps, cond_reps, samples_per_condition, metric)
    return float((ranks == 1).double().mean())


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """rcdm-eval metric=faithfulness: ranks for N validation conditionings x k samples; histogram PNG (Fig. 17)."""
    from rcdm_lab.viz.grid import conditioning_grid, save_png
    from rcdm_lab.viz.plots import rank_histogram

    n, k = int(settings["num_conditionings"]), int(settings["samples_per_conditioning"])
    items = run.val_items(n, "faithfulness.num_conditionings")
    samples = run.sample(items["h"], k, sampling)
    sample_reps = run.pipeline.encode(samples)
    results: dict[str, Any] = {"num_conditionings": n, "samples_per_conditioning": k}
    ranks = {}
    for metric in settings["distances"]:
        ranks[metric] = conditioning_ranks(sample_reps, items["h"], k, metric)
        results[metric] = rank_summary(ranks[metric], n)
    title = f"rank of the conditioning among {n} (k={k}, guidance={sampling.get('guidance', 1.0):g})"
    results["rank_histogram_png"] = str(rank_histogram(ranks, out_dir / "faithfulness_ranks.png",
                                                       max_rank=int(settings["max_rank_plotted"]), title=title))
    shown = min(n, int(settings["rows_shown"]))
    grid = conditioning_grid(items["image"][:shown], samples[: shown * k], samples_range=(0.0, 1.0))
    results["samples_png"] = str(save_png(grid, out_dir / "faithfulness_samples.png",
                                          upscale=max(1, 96 // run.pipeline.resolution)))
    return results
