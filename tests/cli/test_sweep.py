"""`rcdm-train -m encoder=a,b` runs one training per encoder (Hydra multirun)."""

from __future__ import annotations

import pytest

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_testing import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_multirun_over_encoders(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("rcdm-train", "-m", "encoder=mobilenet_v2,resnet18", "encoder.weights=random",
                     *tiny_overrides(tmp_path), "trainer.max_steps=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = sorted(sweep.glob("*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 2
    names = {read_checkpoint(c).record.encoder.spec["name"] for c in checkpoints}
    assert names == {"mobilenet_v2", "resnet18"}
