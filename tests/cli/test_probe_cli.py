"""rcdm-probe end to end on tiny shapes: one linear probe per factor, written to probe.json and probe.pt."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rcdm_lab.data.shapes import ShapesDataset
from rcdm_lab.metrics.probe import LinearProbe
from rcdm_testing import REPO

TINY = ["resolution=16px", "encoder.input_size=32", "data.dataset.num_train=64", "data.dataset.num_val=32",
        "probe.steps=30"]


def _run_probe(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rcdm_lab.cli.probe", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.slow
def test_probe_cli_writes_every_shapes_factor(tmp_path):
    result = _run_probe(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "probe.json").read_text())
    factors = {row["factor"]: row for row in report["factors"]}
    assert set(factors) == set(ShapesDataset.factor_names)
    assert factors["shape"]["classes"] == 8 and factors["scale"]["classes"] == 4
    assert factors["scale"]["kind"] == "continuous"
    for row in factors.values():
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["chance"] <= 1.0
    assert report["num_train"] == 64 and report["num_val"] == 32
    assert "quantile classes" in result.stdout and "val acc" in result.stdout

    probe = LinearProbe.load(tmp_path / "run" / "probe.pt", factor="shape")
    assert probe.class_names[0] == "circle"
    assert probe.encoder_identity == report["encoder"]
    assert probe(torch.zeros(2, probe.dim)).shape == (2, 8)


def test_probe_cli_reports_user_errors_in_one_line(tmp_path):
    result = _run_probe(tmp_path, "layer=head")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "layer=backbone" in result.stderr
