"""Two-process DDP on CPU (gloo): the same config that scales to GPUs and nodes, each rank drawing its own noise."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_testing import run_cli, tiny_overrides

pytestmark = pytest.mark.slow

STEPS = 3


def _ddp_run(tmp_path, name: str) -> tuple[list[dict], list[dict], dict]:
    run_dir, draws = tmp_path / name, tmp_path / name / "draws"
    result = run_cli("rcdm-train", *tiny_overrides(tmp_path, "model.cond_drop=0.5"), "trainer=ddp",
                     "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.max_steps={STEPS}",
                     "+callbacks.record._target_=rcdm_testing.RecordDraws", f"+callbacks.record.out_dir={draws}",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert result.stderr.count("precision: ") == 1   # chosen from the hardware, said once (by rank 0)
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt").contents
    return torch.load(draws / "draws_rank0.pt"), torch.load(draws / "draws_rank1.pt"), checkpoint


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[key], b[key]) for key in ("t", "noise", "drop", "flipped", "index"))


def _shared_fraction(ours: list[dict], theirs: list[dict], key: str) -> float:
    """Fraction of one rank's drawn values that the other rank drew too, anywhere in its run.

    ~0 for independent streams; ~1 for one stream read twice, even when the ranks read it a few draws apart
    (with one seed for every rank, rank 1's t were rank 0's shifted by four).
    """
    mine = torch.cat([step[key].flatten() for step in ours]).tolist()
    other = set(torch.cat([step[key].flatten() for step in theirs]).tolist())
    return sum(value in other for value in mine) / len(mine)


def test_each_rank_draws_its_own_noise_and_a_rerun_draws_the_same(tmp_path):
    rank0, rank1, checkpoint = _ddp_run(tmp_path, "first")
    assert checkpoint["global_step"] == STEPS and len(rank0) == len(rank1) == STEPS
    # 2 ranks x batch 8 must train on 16 distinct (t, eps) pairs per step, not the same 8 twice.
    assert _shared_fraction(rank0, rank1, "noise") < 0.01
    assert _shared_fraction(rank0, rank1, "t") < 0.3   # t in 0..999: 24 draws per rank collide now and then
    for step0, step1 in zip(rank0, rank1, strict=True):
        assert not set(step0["index"].tolist()) & set(step1["index"].tolist())   # the sampler splits the data
    masks = torch.stack([step["drop"] for step in rank0 + rank1])
    assert not torch.equal(masks[:STEPS], masks[STEPS:])
    # Every rank's RNG states are saved, for an exact resume on each of them.
    assert len(checkpoint["rng_states"]["ranks"]) == 2
    again0, again1, _ = _ddp_run(tmp_path, "second")
    assert all(_same(a, b) for a, b in zip(rank0 + rank1, again0 + again1, strict=True))
