"""rcdm-eval end to end on the session's tiny checkpoint: every metric group runs offline and writes its JSON + PNGs."""

from __future__ import annotations

import json

import pytest

from rcdm_testing import run_cli, run_cli_in_process

FAST = ["sampling.steps=2", "sampling.progress=false", "logger=csv"]


@pytest.mark.slow
def test_every_metric_runs_offline_and_results_accumulate(trained_checkpoint, tmp_path):
    out = tmp_path / "eval"
    common = [f"ckpt={trained_checkpoint}", f"hydra.run.dir={out}", *FAST]
    # faithfulness.num_conditionings left at its default (256): the 8-item validation split is used whole.
    first = run_cli("rcdm-eval", *common, "metric=[faithfulness,distances]",
                    "metric.faithfulness.samples_per_conditioning=2", "metric.distances.num_conditionings=2",
                    "metric.distances.per_reference=3", "metric.distances.num_multicrop=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "faithfulness.num_conditionings: the val split has 8 items, fewer than the default 256" in first.stdout
    second = run_cli("rcdm-eval", *common, "metric=[fid,kde]", "metric.fid.num_samples=8",
                     "metric.fid.kid_subset_size=4", "metric.fid.is_splits=2", "metric.kde.num_samples=4",
                     "metric.kde.columns=2")
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"faithfulness", "distances", "fid", "kde"}   # the second run kept the first's numbers
    faith = results["faithfulness"]
    assert faith["num_conditionings"] == 8 and faith["gallery_size"] == 8
    for metric in ("l2", "cosine"):
        summary = faith[metric]
        assert summary["chance_mean_rank"] == 4.5
        # Identities of any set of ranks 1..8 (Jensen: mean rank >= 1 / MRR; every rank-1 sample adds 1 to MRR).
        assert summary["top1"] <= summary["mrr"] <= 1 and summary["mean_rank"] >= 1 / summary["mrr"] - 1e-9
        assert summary["mean_rank"] <= 8 and summary["median_rank"] == int(summary["median_rank"])
    assert (out / "faithfulness_ranks.png").stat().st_size > 0
    table = results["distances"]["table"]
    assert {"random val", "train neighbours", "flip", "multicrop", "RCDM samples"} <= set(table)
    assert table["train neighbours"]["count"] == 2 * 3
    # A 4-step model draws noise, not shapes: far from the real images (a real-vs-real mix-up would give ~0).
    assert results["fid"]["num_fake"] == results["fid"]["num_real"] == 8 and results["fid"]["fid"] > 50
    # The KDE's noise as actually drawn (4 samples x 1280 dims), not the setting echoed back.
    assert results["kde"]["measured_sigma"] == pytest.approx(0.01, rel=0.1)
    assert (out / "logs" / "metrics.csv").is_file()
    assert "faithfulness" in first.stdout and "l2/mean_rank=" in first.stdout


def test_too_many_conditionings_names_the_fix(trained_checkpoint, tmp_path):
    result = run_cli("rcdm-eval", f"ckpt={trained_checkpoint}", f"hydra.run.dir={tmp_path}", *FAST,
                     "metric.faithfulness.num_conditionings=1000")
    assert result.returncode == 2
    assert "validation split has 8" in result.stderr and "num_val" in result.stderr


def test_missing_checkpoint_and_unknown_metric_are_one_line_errors(tmp_path):
    missing = run_cli("rcdm-eval", f"ckpt={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    unknown = run_cli_in_process("rcdm-eval", f"ckpt={tmp_path / 'nope.ckpt'}", "metric=[sharpness]",
                                 f"hydra.run.dir={tmp_path / 'unknown'}")
    assert unknown.returncode != 0 and "sharpness" in unknown.stderr
