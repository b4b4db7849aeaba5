"""Are samples recognisably generated from their own conditioning? Paper Table 1b (mean rank, MRR) and Fig. 17.

For N conditionings with k samples each, every sample is encoded with the same frozen encoder and the whole
validation gallery (every validation representation, G >= N of them, as the paper ranks among the 50 000 ImageNet
validation images) is sorted by distance to it: the rank of its own conditioning is 1 when the sample's nearest
gallery item is its own conditioning, and (G + 1) / 2 on average for samples unrelated to their conditioning.
Ranking only among the N sampled conditionings would cap ranks at N and flatter the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rcdm_lab.metrics.intervals import mean_interval, per_conditioning_means
from rcdm_lab.metrics.knn import BACKENDS, METRICS, target_ranks
from rcdm_lab.settings import Rule, all_of, integer, one_of

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun


def grouped_owners(num_conditionings: int, samples_per_condition: int) -> Tensor:
    """Owners of samples grouped by conditioning (as `RCDMPipeline.sample` returns them) in a gallery of those."""
    return torch.arange(num_conditionings).repeat_interleave(samples_per_condition)


def conditioning_ranks(sample_reps: Tensor, gallery: Tensor, owners: Tensor, metric: str = "l2",
                       batch_size: int = 1024, backend: str = "auto", device: str | torch.device | None = None,
                       ) -> Tensor:
    """(S,) rank (1 = best) of each sample's own conditioning among all G gallery representations, by distance.

    `sample_reps` is (S, D); `gallery` (G, D); `owners` (S,) the gallery row of each sample's conditioning. A
    gallery item tied with the own one does not push it down (rank = 1 + number of strictly closer items, decided
    in float64 on either backend: see rcdm_lab.metrics.knn). In chunks of `batch_size` samples: memory
    O(batch_size x G), so the paper's 50 000 x 50 000 fits. `backend`: auto | exact | faiss (same ranks);
    `device`: where the exact search runs (default: the samples' device).
    """
    owners = torch.as_tensor(owners, dtype=torch.long)
    if owners.shape != (len(sample_reps),):
        raise ValueError(f"{len(sample_reps)} sample representations but {tuple(owners.shape)} owners")
    if len(owners) and not 0 <= int(owners.min()) <= int(owners.max()) < len(gallery):
        raise ValueError(f"owners must index the gallery of {len(gallery)} representations")
    return target_ranks(sample_reps, gallery, owners, metric, batch_size=batch_size, backend=backend, device=device)


def rank_summary(ranks: Tensor, gallery_size: int) -> dict[str, float]:
    """Mean rank, mean reciprocal rank, top-1 and median, with the values chance would give in that gallery."""
    ranks = ranks.double()
    return {
        "mean_rank": float(ranks.mean()),
        "mrr": float((1 / ranks).mean()),
        "top1": float((ranks == 1).double().mean()),
        "median_rank": float(ranks.median()),
        "chance_mean_rank": (gallery_size + 1) / 2,
        "chance_top1": 1 / gallery_size,
    }


def mrr_interval(ranks: Tensor, samples_per_conditioning: int, level: float = 0.95, seed: int = 0) -> list[float]:
    """Bootstrap `level` interval [low, high] of the MRR of ranks grouped by conditioning, resampling conditionings."""
    reciprocal = per_conditioning_means(1 / torch.as_tensor(ranks).double(), samples_per_conditioning)
    return list(mean_interval(reciprocal, level=level, seed=seed))


def nearest_conditioning_accuracy(sample_reps: Tensor, cond_reps: Tensor, samples_per_condition: int,
                                  metric: str = "l2") -> float:
    """Fraction of samples whose nearest among the N conditionings (the gallery here) is their own.

    The demo's figure (N = 16, chance 1/16); `evaluate` ranks against the whole validation gallery instead.
    """
    owners = grouped_owners(len(cond_reps), samples_per_condition)
    ranks = conditioning_ranks(sample_reps, cond_reps, owners, metric)
    return float((ranks == 1).double().mean())


def measure(run: TrainedRun, items: Mapping[str, Tensor], gallery: Tensor, k: int, sampling: Mapping[str, Any],
            distances: Sequence[str], batch_size: int = 1024, backend: str = "auto",
            ) -> tuple[Tensor, dict[str, Tensor]]:
    """k samples per conditioning of `items`, and the (N * k,) ranks of each one's own conditioning per distance.

    The one path from a model to faithfulness ranks -- sample with `sampling` (its seed fixes x_T), encode the
    samples with the run's frozen encoder, rank among `gallery` (every validation representation; `items["index"]`
    are their rows) -- shared by rcdm-eval and the training callback, so the curve logged during training and
    `rcdm-eval metric=faithfulness` on a checkpoint of it give the same numbers. Samples are in [0, 1], grouped by
    conditioning.
    """
    samples = run.sample(items["h"], k, sampling)
    sample_reps = run.pipeline.encode(samples)
    owners = items["index"].repeat_interleave(k)
    ranks = {metric: conditioning_ranks(sample_reps, gallery, owners, metric, batch_size=batch_size, backend=backend)
             for metric in distances}
    return samples, ranks


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_conditionings", optional=True),
    integer("samples_per_conditioning"),
    all_of("distances", METRICS),
    integer("max_rank_plotted"),
    integer("rows_shown", minimum=0),
    one_of("backend", BACKENDS),
    integer("batch_size", minimum=1),
]


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """rcdm-eval metric=faithfulness: ranks for N validation conditionings x k samples; histogram PNG (Fig. 17)."""
    from rcdm_lab.viz.grid import conditioning_grid, save_png
    from rcdm_lab.viz.plots import rank_histogram

    n = run.count("val", settings["num_conditionings"], "faithfulness.num_conditionings", default=256)
    k = int(settings["samples_per_conditioning"])
    items = run.val_items(n, "faithfulness.num_conditionings")
    gallery = run.representations("val")
    samples, ranks = measure(run, items, gallery, k, sampling, settings["distances"],
                             batch_size=int(settings["batch_size"]), backend=str(settings["backend"]))
    results: dict[str, Any] = {"num_conditionings": n, "samples_per_conditioning": k, "gallery_size": len(gallery)}
    for metric in settings["distances"]:
        results[metric] = {**rank_summary(ranks[metric], len(gallery)), "mrr_ci95": mrr_interval(ranks[metric], k)}
    title = (f"rank of the conditioning among {len(gallery)} validation images "
             f"({n} conditionings x {k}, guidance={sampling.get('guidance', 1.0):g})")
    results["rank_histogram_png"] = str(rank_histogram(ranks, out_dir / "faithfulness_ranks.png",
                                                       max_rank=int(settings["max_rank_plotted"]), title=title))
    shown = min(n, int(settings["rows_shown"]))
    grid = conditioning_grid(items["image"][:shown], samples[: shown * k], samples_range=(0.0, 1.0))
    results["samples_png"] = str(save_png(grid, out_dir / "faithfulness_samples.png",
                                          upscale=max(1, 96 // run.pipeline.resolution)))
    return results
