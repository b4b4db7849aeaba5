"""What FID and KID keep of a stream of features: running mean and covariance, and a bounded random subset.

FID needs only the mean and covariance of each side, KID only a few thousand features (its subsets are of 1000 at
most in common use): so 50 000 generated images can be sampled, embedded and dropped batch by batch, holding
D + D^2 float64 numbers (34 MB at D = 2048) and at most ``capacity`` features per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError


class FeatureStats:
    """Running count, mean and covariance of (N, D) features, in float64; batches combine exactly (Chan et al.).

    ``update(batch)`` folds in a batch; ``merge(other)`` combines two accumulators (e.g. two ranks' or two runs')
    into what one accumulator over both streams would hold. Pairwise combination of centred sums instead of raw
    sums of x and x x^T: post-ReLU Inception features share a large mean, and sum(x x^T) - N mu mu^T cancels it
    away in the last digits.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.count = 0
        self._mean = torch.zeros(self.dim, dtype=torch.float64)
        self._scatter = torch.zeros(self.dim, self.dim, dtype=torch.float64)   # sum of (x - mean)(x - mean)^T

    def update(self, batch: Tensor) -> FeatureStats:
        batch = batch.detach().to("cpu", torch.float64)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise RCDMError(f"FeatureStats of {self.dim}-d features got a batch of shape {tuple(batch.shape)}; "
                            "flatten features to (N, D) with the same D on every update")
        if len(batch):
            mean = batch.mean(0)
            centred = batch - mean
            self._combine(len(batch), mean, centred.T @ centred)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.dim != self.dim:
            raise RCDMError(f"cannot merge {other.dim}-d feature statistics into {self.dim}-d ones")
        if other.count:
            self._combine(other.count, other._mean, other._scatter)
        return self

    def _combine(self, count: int, mean: Tensor, scatter: Tensor) -> None:
        total = self.count + count
        delta = mean - self._mean
        self._scatter += scatter + torch.outer(delta, delta) * (self.count * count / total)
        self._mean += delta * (count / total)
        self.count = total

    @property
    def mean(self) -> Tensor:
        return self._mean.clone()

    @property
    def covariance(self) -> Tensor:
        """Unbiased (N - 1) covariance, as np.cov and torch.cov give."""
        if self.count < 2:
            raise RCDMError(f"a covariance needs at least 2 features, got {self.count}")
        return self._scatter / (self.count - 1)


class FeatureReservoir:
    """A uniform random subset of at most ``capacity`` rows of a stream (reservoir sampling), seeded.

    While the stream is no longer than ``capacity`` it keeps every row, in order (``complete`` is then True), so
    small evaluations compute KID on exactly the features the in-memory path would.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 2:
            raise RCDMError(f"a KID subset needs capacity >= 2, got {capacity}")
        self.capacity = int(capacity)
        self.seen = 0
        self._rows: Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, batch: Tensor) -> FeatureReservoir:
        batch = batch.detach().to("cpu", torch.float64)
        if self._rows is None:
            self._rows = batch[:0].clone()
        room = self.capacity - len(self._rows)
        if room > 0:
            self._rows = torch.cat([self._rows, batch[:room]])
        rest = batch[max(room, 0):]
        if len(rest):
            # Algorithm R, vectorised: row number t (1-based) replaces a random slot with probability capacity / t.
            positions = self.seen + max(room, 0) + torch.arange(1, len(rest) + 1, dtype=torch.float64)
            slots = (torch.rand(len(rest), generator=self._generator, dtype=torch.float64) * positions).long()
            keep = slots < self.capacity
            chosen, slots = rest[keep], slots[keep]
            # A later row landing on the same slot wins, as in the sequential algorithm: the last one per slot.
            last = torch.full((self.capacity,), -1, dtype=torch.long).scatter_reduce(
                0, slots, torch.arange(len(slots)), reduce="amax")
            filled = last >= 0
            self._rows[filled] = chosen[last[filled]]
        self.seen += len(batch)
        return self

    @property
    def complete(self) -> bool:
        return self.seen <= self.capacity

    @property
    def features(self) -> Tensor:
        if self._rows is None:
            raise RCDMError("the feature reservoir is empty: update it with at least one batch")
        return self._rows.clone()


@dataclass
class FeatureSummary:
    """One side of FID/KID: mean (D,), covariance (D, D) float64, a KID subset (M, D) or None, and provenance.

    ``complete``: ``kid_features`` holds every feature of the set, so FID can use them exactly (the closed form of
    :func:`rcdm_lab.metrics.fid.frechet_distance`, free of the eigenvalue noise of rank-deficient covariances).
    """

    mean: Tensor
    covariance: Tensor
    kid_features: Tensor | None = None
    count: int | None = None
    complete: bool = False
    source: str = ""

    @classmethod
    def from_stream(cls, stats: FeatureStats, reservoir: FeatureReservoir | None, source: str = "",
                    ) -> FeatureSummary:
        features = reservoir.features if reservoir is not None else None
        return cls(stats.mean, stats.covariance, features, stats.count,
                   reservoir is not None and reservoir.complete, source)
