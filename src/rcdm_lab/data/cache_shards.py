"""How the ranks of a job share one representation-cache build: who builds which rows, and the collectives.

The rows still to encode are cut on the one-process batch grid (rows [k * batch, (k + 1) * batch)) and dealt out as
consecutive runs of batches, one run per rank, so every rank calls the encoder on exactly the batches a single
process would and the cache is the same bit for bit (rcdm_lab/data/cache.py writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Intervals = list[tuple[int, int]]   # sorted, disjoint [start, stop) row ranges


# ------------------------------------------------------------------------------------------- ranks of one build
def _all_true_here(flag: bool) -> bool:
    return bool(flag)


def _same_object(obj: Any) -> Any:
    return obj


@dataclass(frozen=True)
class RankGroup:
    """The processes building one cache together: who this one is, and the two collectives the build needs.

    `broadcast(obj)` returns rank 0's obj on every rank; `all_true(flag)` is True on every rank when every rank's
    flag is (a collective, so also a barrier). The default is one process, which needs neither.
    """

    rank: int = 0
    world_size: int = 1
    broadcast: Callable[[Any], Any] = field(default=_same_object, repr=False)
    all_true: Callable[[bool], bool] = field(default=_all_true_here, repr=False)

    @classmethod
    def of_strategy(cls, strategy: Any) -> RankGroup:
        """The ranks of a Lightning strategy (DDP and friends), through its own collectives."""
        return cls(int(strategy.global_rank), int(strategy.world_size), lambda obj: strategy.broadcast(obj, src=0),
                   lambda flag: bool(strategy.reduce_boolean_decision(bool(flag), all=True)))

    @classmethod
    def of_torch_distributed(cls) -> RankGroup:
        """The default torch.distributed process group when it is initialised; one process otherwise."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        # NCCL only reduces CUDA tensors; gloo (and the rest) CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"

        def broadcast(obj: Any) -> Any:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        def all_true(flag: bool) -> bool:
            value = torch.tensor(int(bool(flag)), device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
            return bool(value.item())

        return cls(dist.get_rank(), dist.get_world_size(), broadcast, all_true)


def merged_intervals(intervals: Sequence[Sequence[int]]) -> Intervals:
    out: Intervals = []
    for start, stop in sorted((int(a), int(b)) for a, b in intervals if int(b) > int(a)):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def missing_rows(done: Intervals, num_items: int) -> Intervals:
    gaps, cursor = [], 0
    for start, stop in done:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, stop)
    return gaps + ([(cursor, num_items)] if cursor < num_items else [])


def batch_grid(todo: Intervals, batch_size: int) -> Intervals:
    """`todo` cut at multiples of batch_size: the batches a one-process build from row 0 would encode."""
    pieces = []
    for start, stop in todo:
        cut = start
        while cut < stop:
            end = min(stop, (cut // batch_size + 1) * batch_size)
            pieces.append((cut, end))
            cut = end
    return pieces


def rank_shards(batches: Intervals, world_size: int) -> list[Intervals]:
    """Consecutive runs of batches, one per rank, each with ~1/world_size of the rows (within one batch)."""
    total, before, shards = sum(b - a for a, b in batches), 0, [[] for _ in range(world_size)]
    for start, stop in batches:
        shards[min(world_size - 1, before * world_size // max(total, 1))].append((start, stop))
        before += stop - start
    return shards


def done_prefix(done: Intervals) -> int:
    return done[0][1] if done and done[0][0] == 0 else 0
