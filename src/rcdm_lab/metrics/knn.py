"""Nearest-neighbour search over representations: the one place every metric and figure gets neighbours from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rcdm_lab.errors import RCDMError

METRICS = ("l2", "cosine")


def check_metric(metric: str) -> None:
    """Refuse a metric pairwise_distances does not know, naming the known ones (also used to check settings early)."""
    if metric not in METRICS:
        raise RCDMError(f"unknown distance metric {metric!r}; use one of {METRICS}")


def pairwise_distances(queries: torch.Tensor, keys: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """(Q, K) distances: squared L2, or 1 - cosine similarity."""
    check_metric(metric)
    if metric == "l2":
        # Computed in float64: ||q||^2 + ||k||^2 - 2 q.k cancels badly in float32 for nearby points.
        q, k = queries.double(), keys.double()
        return (q.pow(2).sum(1, keepdim=True) + k.pow(2).sum(1) - 2 * q @ k.T).clamp_min(0)
    return 1 - F.normalize(queries.double(), dim=1) @ F.normalize(keys.double(), dim=1).T   # cosine


def nearest_neighbors(queries: torch.Tensor, keys: torch.Tensor, k: int = 1, metric: str = "l2",
                      batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices (Q, k) of the k nearest keys of each query, in batches of queries (CPU or GPU)."""
    if k > len(keys):
        raise RCDMError(f"asked for {k} neighbours among only {len(keys)} points")
    keys = keys.to(queries.device)
    distances, indices = [], []
    for start in range(0, len(queries), batch_size):
        d = pairwise_distances(queries[start:start + batch_size], keys, metric)
        top = d.topk(k, dim=1, largest=False)
        distances.append(top.values)
        indices.append(top.indices)
    return torch.cat(distances), torch.cat(indices)
