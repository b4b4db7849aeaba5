"""The preview callback samples inside the loop but writes its PNG (and wandb image) off the loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rcdm_lab.training import callbacks
from rcdm_lab.training.callbacks import SampleGridCallback


class _Pipeline:
    supports_guidance = True

    def __init__(self) -> None:
        self.unet = torch.nn.Linear(1, 1)

    def sample(self, h: torch.Tensor, k: int, **settings) -> torch.Tensor:
        return torch.zeros(len(h) * k, 3, 8, 8)


def _trainer(tmp_path: Path, step: int) -> SimpleNamespace:
    items = {"h": torch.zeros(2, 4), "image": torch.rand(2, 3, 8, 8)}
    datamodule = SimpleNamespace(val_items=lambda n: items)
    return SimpleNamespace(global_step=step, datamodule=datamodule, loggers=[], default_root_dir=str(tmp_path))


def test_a_slow_png_write_does_not_hold_the_training_loop(tmp_path, monkeypatch):
    release = threading.Event()
    real_save = callbacks.save_png

    def slow_save(*args, **kwargs):
        release.wait(10)   # the write cannot finish before the test lets it
        return real_save(*args, **kwargs)

    monkeypatch.setattr(callbacks, "save_png", slow_save)
    callback = SampleGridCallback(sampling={}, every_n_steps=5, num_conditionings=2, samples_per_conditioning=3)
    module = SimpleNamespace(pipeline=_Pipeline)
    start = time.perf_counter()
    callback.on_train_batch_end(_trainer(tmp_path, 5), module, None, None, 0)
    assert time.perf_counter() - start < 5   # returned while the writer is still blocked
    assert not (tmp_path / "samples" / "step_0000005.png").exists()
    release.set()
    callback.on_train_end(_trainer(tmp_path, 5), module)   # same step: no second grid, joins the writer
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000005.png"]
    assert len(callback.blocked_seconds) == 1


def test_a_failed_write_surfaces_when_training_ends(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(callbacks, "save_png", broken_save)
    callback = SampleGridCallback(sampling={}, every_n_steps=5, num_conditionings=2, samples_per_conditioning=1)
    callback.on_train_batch_end(_trainer(tmp_path, 5), SimpleNamespace(pipeline=_Pipeline), None, None, 0)
    with pytest.raises(OSError, match="disk full"):
        callback.wait()


def test_grids_go_to_the_samples_section_of_wandb(tmp_path):
    logged = []
    wandb = SimpleNamespace(log_image=lambda key, images, step: logged.append((key, step)))
    callbacks._write_grid_png(torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), tmp_path / "grid.png", [wandb], 7)
    assert logged == [("samples/grid", 7)]   # wandb groups charts by the prefix: a "samples" section
