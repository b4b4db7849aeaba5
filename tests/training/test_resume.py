"""Resuming: exact continuation, surviving SIGKILL, and refusing to mix runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.cli.train import train
from rcdm_lab.errors import RCDMError
from rcdm_lab.training.randomness import RandomStatePersistence
from rcdm_testing import REPO, compose_train, tiny_overrides

pytestmark = pytest.mark.slow

# One batch per epoch, so a resume lands on an epoch boundary and the data order can be reproduced exactly.
EXACT = ("data.dataset.num_train=8", "model.cond_drop=0.2")


def _weights(path):
    state = read_checkpoint(path).state_dict
    return {k: v for k, v in state.items() if k.startswith(("unet.", "ema."))}


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    straight = train(compose_train(tmp_path / "a", *EXACT, "trainer.max_steps=4"))
    train(compose_train(tmp_path / "b", *EXACT, "trainer.max_steps=2"))
    resumed = train(compose_train(tmp_path / "b", *EXACT, "trainer.max_steps=4", "ckpt_path=last"))
    assert read_checkpoint(resumed).contents["global_step"] == 4
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs after resume")


def test_a_fresh_run_refuses_to_overwrite_an_existing_one(tmp_path):
    train(compose_train(tmp_path, "trainer.max_steps=1"))
    with pytest.raises(RCDMError, match="ckpt_path=last"):
        train(compose_train(tmp_path, "trainer.max_steps=1"))


def test_resuming_with_another_encoder_is_refused(tmp_path):
    train(compose_train(tmp_path, "trainer.max_steps=1"))
    with pytest.raises(RCDMError, match="different representation.*weights_digest"):
        train(compose_train(tmp_path, "trainer.max_steps=2", "ckpt_path=last", "encoder.weights=random"))


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "rcdm_lab.cli.train", *tiny_overrides(tmp_path), f"hydra.run.dir={run_dir}",
            "trainer.max_steps=100000"]
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (last.exists() and read_checkpoint(last).contents["global_step"] >= 3):
            time.sleep(0.5)
            assert process.poll() is None, "training exited before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved_step = read_checkpoint(last).contents["global_step"]  # loads: the kill left no torn checkpoint behind
    assert saved_step >= 3
    resumed = subprocess.run([*args[:-1], f"trainer.max_steps={saved_step + 2}", "ckpt_path=last"], cwd=REPO,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(last).contents["global_step"] == saved_step + 2


def test_every_cuda_devices_rng_state_is_saved_and_restored(tmp_path, monkeypatch):
    # No GPU here: stand-in CUDA RNG functions check that the checkpoint hooks carry every device's state.
    from rcdm_lab.cli.train import build

    module, _, trainer = build(compose_train(tmp_path, "trainer.max_steps=1"))
    persistence = next(c for c in trainer.callbacks if isinstance(c, RandomStatePersistence))
    device_states = [torch.full((16,), 3, dtype=torch.uint8), torch.full((16,), 7, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in device_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    checkpoint: dict = {}
    persistence.on_save_checkpoint(trainer, module, checkpoint)
    persistence.on_load_checkpoint(trainer, module, checkpoint)
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, device_states, strict=True))

