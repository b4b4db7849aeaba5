"""Two-process DDP on CPU (gloo): the same config that scales to GPUs and nodes."""

from __future__ import annotations

import pytest

from rcdm_lab.pipeline import load_checkpoint_file
from rcdm_testing import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_two_process_ddp_smoke_run(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("rcdm-train", *tiny_overrides(tmp_path), "trainer=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=2", "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert "Starting with 2 processes" in result.stdout + result.stderr
