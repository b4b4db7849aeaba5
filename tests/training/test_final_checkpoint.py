"""The run's last.ckpt holds its final step even when max_steps is not a multiple of the checkpoint interval."""

from __future__ import annotations

import json

import pytest
import torch

from rcdm_lab.cli.train import train
from rcdm_testing import compose_train


@pytest.mark.slow
def test_last_checkpoint_is_the_final_step_and_a_rerun_trains_nothing(tmp_path):
    cfg = compose_train(tmp_path, "trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=2",
                        "callbacks.preview=null", "ckpt_path=last")
    last = train(cfg)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3   # not 2
    weights = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    (tmp_path / "run" / "timing.json").unlink()
    train(cfg)   # `make demo` again: resumes at the end, so no step runs (it ran one before the fix)
    timing_file = tmp_path / "run" / "timing.json"
    assert not timing_file.exists() or json.loads(timing_file.read_text())["steps"] == 0, timing_file.read_text()
    after = torch.load(last, map_location="cpu", weights_only=False)
    assert after["global_step"] == 3
    assert all(torch.equal(weights[key], after["state_dict"][key]) for key in weights)
