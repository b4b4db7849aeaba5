"""Every rank encodes its own shard of one cache: the files equal a one-process build, bit for bit, also after a
crash on one rank and a resume; a cache folder the ranks do not share is an error, never a hang."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from rcdm_lab.data.cache import RepresentationCache
from rcdm_lab.data.cache_shards import RankGroup
from rcdm_lab.data.shapes import ShapesDataset
from rcdm_lab.errors import UnreadableImageError

ITEMS, BATCH, RESOLUTION, WORLD = 22, 4, 16, 2   # 6 batches, the last of 2 rows: rank 0 gets 3, rank 1 gets 3
UNREADABLE = {3, 17}
FILES = ("reps.npy", "images.npy", "meta.json", "progress.json")


class TinyEncoder(nn.Module):
    """A fixed linear map of the 4x4-pooled image; raises after `fail_after` calls (a crash halfway)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(3 * 4 * 4, 5, generator=torch.Generator().manual_seed(7)))
        self.dim, self.input_size, self.fail_after, self.calls = 5, 24, fail_after, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.weight

    def identity(self) -> dict:
        return {"name": "tiny", "dim": self.dim}


class PartlyUnreadable(ShapesDataset):
    def __getitem__(self, index: int) -> dict:
        if index in UNREADABLE:
            raise UnreadableImageError(f"shape_{index}.png", "truncated file")
        return super().__getitem__(index)


def _dataset(unreadable: bool = False) -> ShapesDataset:
    return (PartlyUnreadable if unreadable else ShapesDataset)(image_size=24, num_train=ITEMS)


def _build(root: Path, encoder: nn.Module, unreadable: bool = False, ranks: RankGroup | None = None):
    return RepresentationCache.build(root, "k", _dataset(unreadable), encoder, batch_size=BATCH, progress=False,
                                     meta={"split": "train"}, resolution=RESOLUTION, ranks=ranks)


def _attempt(record: dict, name: str, action) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
            record[name] = "ok"
        except Exception as error:  # noqa: BLE001 - the parent asserts on the message
            record[name] = f"{type(error).__name__}: {error}"
    record[name + "_warnings"] = [str(w.message) for w in caught if "unreadable" in str(w.message)]


def _rank_main(rank: int, out: str) -> None:
    """Every scenario in one process group (one spawn): each rank records what happened to it."""
    out_dir = Path(out)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank, world_size=WORLD)
    ranks, record = RankGroup.of_torch_distributed(), {}
    try:
        _attempt(record, "full", lambda: _build(out_dir / "full", TinyEncoder(), ranks=ranks))
        # A node-local cache_dir: each rank sees only its own folder.
        _attempt(record, "unshared", lambda: _build(out_dir / f"local{rank}", TinyEncoder(), ranks=ranks))
        # Rank 1 dies after one of its three batches; rank 0 finishes its shard and is told.
        crashing = TinyEncoder(fail_after=1 if rank == 1 else None)
        _attempt(record, "crash", lambda: _build(out_dir / "resumed", crashing, ranks=ranks))
        resuming = TinyEncoder()
        _attempt(record, "resume", lambda: _build(out_dir / "resumed", resuming, ranks=ranks))
        record["resume_calls"] = resuming.calls
        _attempt(record, "unreadable", lambda: _build(out_dir / "unreadable", TinyEncoder(), True, ranks=ranks))
    finally:
        dist.destroy_process_group()
        (out_dir / f"rank{rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_main, args=(str(out),), nprocs=WORLD, join=True)
    return out, [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """One-process builds, on one thread like the ranks (so the encoder's arithmetic is the same)."""
    root, threads = tmp_path_factory.mktemp("single"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build(root / "clean", TinyEncoder())
        with pytest.warns(UserWarning, match="2 unreadable"):
            _build(root / "unreadable", TinyEncoder(), unreadable=True)
    finally:
        torch.set_num_threads(threads)
    return root


def _same_files(built: Path, reference: Path, names=FILES) -> None:
    for name in names:
        assert (built / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(built.glob("progress.rank*.json"))   # the per-rank progress is gone once complete


def test_two_ranks_build_the_same_files_as_one_process(two_ranks, single):
    out, records = two_ranks
    assert [r["full"] for r in records] == ["ok", "ok"]
    _same_files(out / "full" / "k", single / "clean" / "k")


def test_a_crash_on_one_rank_stops_both_and_the_rebuild_resumes_its_rows(two_ranks, single):
    out, (rank0, rank1) = two_ranks
    assert rank1["crash"] == "RuntimeError: simulated crash"
    assert rank0["crash"].startswith("RuntimeError: another rank failed while encoding")
    # 6 batches: rank 0 had done its 3 and rank 1 one of its 3, so only 2 are left for the resumed build.
    assert [rank0["resume"], rank1["resume"]] == ["ok", "ok"]
    assert rank0["resume_calls"] + rank1["resume_calls"] == 2
    _same_files(out / "resumed" / "k", single / "clean" / "k")


def test_a_cache_dir_the_ranks_do_not_share_is_an_error_on_every_rank(two_ranks):
    _, records = two_ranks
    for record in records:
        assert record["unshared"].startswith("RCDMError: ") and "not one folder shared by every rank" in \
            record["unshared"] and "data.cache_dir" in record["unshared"]


def test_unreadable_rows_are_skipped_recorded_and_warned_about_once(two_ranks, single):
    out, (rank0, rank1) = two_ranks
    assert [rank0["unreadable"], rank1["unreadable"]] == ["ok", "ok"]
    assert len(rank0["unreadable_warnings"]) == 1 and rank1["unreadable_warnings"] == []
    assert "2 unreadable" in rank0["unreadable_warnings"][0] and "shape_3.png (truncated file)" in \
        rank0["unreadable_warnings"][0]
    _same_files(out / "unreadable" / "k", single / "unreadable" / "k", (*FILES, "unreadable.json"))
    cache = RepresentationCache.open(out / "unreadable", "k")
    assert set(cache.unreadable) == UNREADABLE and cache.unreadable[17] == ("shape_17.png", "truncated file")
    assert sorted(set(range(ITEMS)) - set(cache.readable_indices().tolist())) == sorted(UNREADABLE)


def test_one_process_resumes_what_two_ranks_left(tmp_path, single):
    """A job requeued with another number of ranks continues from every rank's progress file."""
    crashed = tmp_path / "again"
    # The state a 2-rank crash leaves: rows [0, 12) in progress.json (rank 0), [12, 16) in rank 1's file.
    with pytest.raises(RuntimeError):
        _build(crashed, TinyEncoder(fail_after=3))
    assert json.loads((crashed / "k" / "progress.json").read_text()) == {"rows_done": 12, "complete": False}
    (crashed / "k" / "progress.rank1.json").write_text(json.dumps({"build": "x", "assigned": [[12, 16], [16, 20],
                                                                   [20, 22]], "done": [[12, 16]]}))
    encoder = TinyEncoder()
    _build(crashed, encoder)
    assert encoder.calls == 2   # batches [16, 20) and [20, 22): the rest was done by "rank 0" or "rank 1"
    resumed, reference = RepresentationCache.open(crashed, "k"), RepresentationCache.open(single / "clean", "k")
    assert torch.equal(resumed.get(20, True), reference.get(20, True))
    assert torch.equal(resumed.get(5, False), reference.get(5, False))
    # Rows 12..16 were claimed by the (fabricated) rank file, so this build trusted it and left them as they were.
    assert not resumed.get(13, False).any()
