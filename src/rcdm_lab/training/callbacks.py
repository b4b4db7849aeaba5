"""Training callbacks: look at samples while the model trains, and say how fast it trained."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from rcdm_lab.training.loop_cost import LoopCost
from rcdm_lab.viz.grid import conditioning_grid, save_png


class SampleGridCallback(L.Callback):
    """Every `every_n_steps` (and at the end), sample from the EMA model for a few fixed validation images.

    Writes `<output_dir>/samples/step_XXXXXXX.png` (first column: the conditioning image) and logs it to wandb when
    that is the logger. The conditionings and the noise are the same each time, so grids are comparable over steps.
    Only the sampling runs inside the training loop (it needs the model); assembling the grid, the PNG and the wandb
    upload happen on a background thread, joined before training ends. The first preview prints what it cost the
    loop against the training time of one interval, so a user sees when previews are too frequent.
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
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.cost = LoopCost("preview grid", every_n_steps)

    @property
    def blocked_seconds(self) -> list[float]:
        """Seconds each preview held the training loop."""
        return self.cost.blocked_seconds

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.cost.start(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.write_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.write_grid(trainer, pl_module)
        self.wait()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.wait()   # grids already sampled are still written

    def wait(self) -> list[Path]:
        """Block until every grid handed to the writer thread is on disk (and logged); their paths."""
        done, self._pending = self._pending, []
        try:
            return [future.result() for future in done]
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    @rank_zero_only
    def write_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Future:
        """Sample now; the grid's PNG (and wandb image) follow on the writer thread (`wait()` joins it)."""
        started = time.perf_counter()
        self._last_step = step = trainer.global_step
        if self._items is None:
            self._items = trainer.datamodule.val_items(self.num_conditionings)
        pipeline = pl_module.pipeline()
        sampling = dict(self.sampling)
        if not pipeline.supports_guidance:
            sampling["guidance"] = 1.0   # a model trained without condition dropout has no null representation
        was_training = pipeline.unet.training
        pipeline.unet.eval()  # Lightning keeps the whole module (the EMA copy too) in train mode: no dropout here
        samples = pipeline.sample(self._items["h"], self.samples_per_conditioning, **sampling).cpu()
        pipeline.unet.train(was_training)
        folder = Path(self.output_dir or trainer.default_root_dir) / "samples"
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-grid")
        future = self._writer.submit(_write_grid_png, self._items["image"], samples, folder / f"step_{step:07d}.png",
                                     wandb_loggers, step)
        self._pending.append(future)
        self.cost.record(time.perf_counter() - started, step)
        return future


def _write_grid_png(images, samples, path: Path, wandb_loggers: list, step: int) -> Path:
    written = save_png(conditioning_grid(images, samples), path, upscale=2)
    for logger in wandb_loggers:
        logger.log_image("samples/grid", [str(written)], step=step)   # wandb's "samples" section
    return written


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
