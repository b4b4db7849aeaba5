"""Training callbacks: look at samples while the model trains, and say how fast it trained."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from rcdm_lab.viz.grid import conditioning_grid, save_png


class SampleGridCallback(L.Callback):
    """Every `every_n_steps` (and at the end), sample from the EMA model for a few fixed validation images.

    Writes `<output_dir>/samples/step_XXXXXXX.png` (first column: the conditioning image) and logs it to wandb when
    that is the logger. The conditionings and the noise are the same each time, so grids are comparable over steps.
    """

    def __init__(self, *, sampling: Mapping[str, Any], every_n_steps: int = 1000, num_conditionings: int = 8,
                 samples_per_conditioning: int = 4, output_dir: str | None = None) -> None:
        """`sampling`: RCDMPipeline.sample settings (conf/sampling/; train.yaml passes its `sampling:` block)."""
        self.every_n_steps = every_n_steps
        self.num_conditionings = num_conditionings
        self.samples_per_conditioning = samples_per_conditioning
        self.sampling = dict(sampling)
        self.output_dir = output_dir
        self._items: dict | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.write_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.write_grid(trainer, pl_module)

    @rank_zero_only
    def write_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        self._last_step = trainer.global_step
        if self._items is None:
            self._items = trainer.datamodule.val_items(self.num_conditionings)
        pipeline = pl_module.pipeline()
        sampling = dict(self.sampling)
        if not pipeline.supports_guidance:
            sampling["guidance"] = 1.0   # a model trained without condition dropout has no null representation
        was_training = pipeline.unet.training
        pipeline.unet.eval()  # Lightning keeps the whole module (the EMA copy too) in train mode: no dropout here
        samples = pipeline.sample(self._items["h"], self.samples_per_conditioning, **sampling)
        pipeline.unet.train(was_training)
        grid = conditioning_grid(self._items["image"], samples)
        folder = Path(self.output_dir or trainer.default_root_dir) / "samples"
        path = save_png(grid, folder / f"step_{trainer.global_step:07d}.png", upscale=2)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [str(path)], step=trainer.global_step)
        return path


class TrainingClock(L.Callback):
    """Times the optimisation steps of this process (not the cache build before them) and reports them.

    Prints `trained N steps in T s (X ms/step)` at the end and writes `<output_dir>/timing.json`, so a run says
    what its speed was on this machine (the demo quotes it).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self._start: float | None = None
        self._first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first_step = time.perf_counter(), trainer.global_step

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        seconds, steps = time.perf_counter() - self._start, trainer.global_step - self._first_step
        timing = {"steps": steps, "train_seconds": round(seconds, 1), "total_steps": trainer.global_step,
                  "ms_per_step": round(1000 * seconds / steps, 1) if steps else None,
                  "precision": str(trainer.precision)}
        folder = Path(self.output_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "timing.json").write_text(json.dumps(timing, indent=2))
        if steps:
            rank_zero_info(f"trained {steps} steps in {seconds:.0f} s ({timing['ms_per_step']:.0f} ms/step, "
                           f"precision {trainer.precision})")
