"""Is a sample's representation closest to the representation it was generated from? (paper Table 1b, Fig. 17)"""

from __future__ import annotations

import torch

from rcdm_lab.metrics.knn import nearest_neighbors


def nearest_conditioning_accuracy(sample_reps: torch.Tensor, cond_reps: torch.Tensor, samples_per_condition: int,
                                  metric: str = "l2") -> float:
    """Fraction of samples whose nearest conditioning (among all of `cond_reps`) is their own.

    `sample_reps` is (N * k, D) grouped by conditioning, as `RCDMPipeline.sample` returns samples. Chance level is
    1 / N; 1.0 means every sample is recognisably generated from its own conditioning.
    """
    owners = torch.arange(len(cond_reps), device=sample_reps.device).repeat_interleave(samples_per_condition)
    _, nearest = nearest_neighbors(sample_reps, cond_reps.to(sample_reps.device), k=1, metric=metric)
    return (nearest[:, 0] == owners).float().mean().item()
