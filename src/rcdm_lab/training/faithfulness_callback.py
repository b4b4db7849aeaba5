"""Faithfulness while training: the curve that says when a model has learned to use its conditioning.

The loss falls long before samples resemble their conditioning, and it does not say when they start to; the
faithfulness ranks of rcdm-eval do (rcdm_lab.metrics.faithfulness). This callback measures them every N steps on a
fixed small validation set and logs them at the global step, so a CSV or wandb dashboard shows them converge.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from rcdm_lab.metrics import faithfulness
from rcdm_lab.metrics.knn import BACKENDS, METRICS
from rcdm_lab.settings import Rule, flag, integer, one_of
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.training.loop_cost import LoopCost

# Where conf/train.yaml puts this callback's settings: its errors name them as a user overrides them.
PREFIX = "callbacks.faithfulness."

# Checked by the constructor and, before any data is rendered, by rcdm-train (rcdm_lab.cli.validation).
RULES: list[Rule] = [
    integer("every_n_steps", minimum=0),
    integer("num_conditionings"),
    integer("samples_per_conditioning"),
    integer("steps", optional=True),
    flag("guided"),
    one_of("distance", METRICS),
    integer("batch_size"),
    one_of("backend", BACKENDS),
]

# What each measurement logs per scale: the paper's two numbers (Table 1b) and the one a dashboard reads first.
LOGGED = ("top1", "mrr", "mean_rank")


def live_run(trainer: L.Trainer, pl_module: L.LightningModule) -> TrainedRun:
    """The model being trained as a TrainedRun: its EMA pipeline (sharing the live weights) and the datamodule.

    What `TrainedRun.load` would rebuild from a checkpoint written now, without writing one, so the metrics'
    `evaluate`/`measure` code runs unchanged on it. `ckpt` names the run's last.ckpt, where that checkpoint goes.
    """
    saver = trainer.checkpoint_callback
    folder = Path(getattr(saver, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints")
    return TrainedRun(folder / "last.ckpt", pl_module.pipeline(), trainer.datamodule)


class FaithfulnessCallback(L.Callback):
    """Every `every_n_steps`, rank the EMA model's samples of fixed validation conditionings; log it to every logger.

    Logs `faithfulness/top1`, `faithfulness/mrr` and `faithfulness/mean_rank` (plain conditional sampling, guidance
    1) and, with `guided`, `faithfulness/guided_*` at the preview guidance `sampling.guidance` when that is not 1
    and the model was trained with condition dropout -- each through `logger.log_metrics(..., step=global_step)`, so
    CSVLogger rows and wandb charts (a "faithfulness" section) both get them. Only on steps of the interval: not
    again at the end of training.

    The numbers are rcdm-eval's: the same `faithfulness.measure` on the first `num_conditionings` validation items,
    ranked among the whole validation gallery, with the `sampling` settings (and their seed) except `steps`, so
    `rcdm-eval metric=faithfulness` on a checkpoint of that step, with those settings, gives the same values. The
    EMA weights are the ones a checkpoint of the step holds: the module updates them in `optimizer_step`, before
    any callback's `on_train_batch_end` (ModelCheckpoint's included), so the order of the callbacks does not matter.

    Measuring holds the training loop; the first measurement prints its share of training time (`LoopCost`), and
    `cost.blocked_seconds` keeps each call's seconds. Under DDP only rank zero measures and logs (the other ranks
    go on and wait for it at the next gradient all-reduce). `every_n_steps=0` turns it off at no cost.
    """

    def __init__(self, *, sampling: Mapping[str, Any], every_n_steps: int = 0, num_conditionings: int = 64,
                 samples_per_conditioning: int = 1, steps: int | None = None, guided: bool = True,
                 distance: str = "l2", batch_size: int = 1024, backend: str = "auto") -> None:
        """`sampling`: RCDMPipeline.sample settings (train.yaml passes its `sampling:` block); `steps`, if set,
        replaces their step count (a few-step sampler keeps the measurement cheap); `batch_size` and `backend` are
        the ranking's (rcdm_lab.metrics.faithfulness.conditioning_ranks)."""
        settings = {"every_n_steps": every_n_steps, "num_conditionings": num_conditionings,
                    "samples_per_conditioning": samples_per_conditioning, "steps": steps, "guided": guided,
                    "distance": distance, "batch_size": batch_size, "backend": backend}
        for rule in RULES:
            rule.under(PREFIX).check(settings[rule.key])
        self.every_n_steps = every_n_steps
        self.num_conditionings = num_conditionings
        self.samples_per_conditioning = samples_per_conditioning
        self.guided = guided
        self.distance = distance
        self.batch_size = batch_size
        self.backend = backend
        plain = OmegaConf.to_container(sampling, resolve=True) if isinstance(sampling, DictConfig) else dict(sampling)
        plain["progress"] = False   # inside training, whose progress bar owns the terminal
        if steps is not None:
            plain["steps"] = steps
        self.guidance = float(plain.get("guidance", 1.0))
        self.sampling = {**plain, "guidance": 1.0}
        self.cost = LoopCost("faithfulness", every_n_steps)
        self._scales: dict[str, dict[str, Any]] = {}   # metric-name prefix -> sampling settings, set at train start
        self._items: dict[str, Tensor] | None = None
        self._gallery: Tensor | None = None
        self._last_step = -1

    @property
    def blocked_seconds(self) -> list[float]:
        """Seconds each measurement held the training loop."""
        return self.cost.blocked_seconds

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here rather than at the first measurement: a too-small validation split fails before training, and the
        # cost reported by the first measurement is that of every later one.
        if self.every_n_steps > 0:
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fix the conditionings, the gallery and the guidance scales measured, and start the loop's clock."""
        run = live_run(trainer, pl_module)
        self._items = run.val_items(self.num_conditionings, f"{PREFIX}num_conditionings")
        self._gallery = run.representations("val")
        self._scales = {"": self.sampling}
        if self.guided and self.guidance != 1.0:
            if run.pipeline.supports_guidance:
                self._scales["guided_"] = {**self.sampling, "guidance": self.guidance}
            else:
                rank_zero_info(f"faithfulness: measured at guidance 1 only; guidance={self.guidance:g} needs a model "
                               "trained with condition dropout (model.cond_drop > 0)")
        self.cost.start(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # Once per step: under gradient accumulation several batches end on the same global step.
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.measure(trainer, pl_module)

    @rank_zero_only
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float] | None:
        """Measure now and log it at the global step; the logged numbers (None on ranks other than zero)."""
        started = time.perf_counter()
        if self._items is None:
            self._prepare(trainer, pl_module)   # called outside a fit (a benchmark, a test)
        run = live_run(trainer, pl_module)
        unet = run.pipeline.unet
        was_training = unet.training
        unet.eval()   # Lightning keeps the whole module (the EMA copy too) in train mode: no dropout here
        try:
            metrics = {}
            for prefix, sampling in self._scales.items():
                _, ranks = faithfulness.measure(run, self._items, self._gallery, self.samples_per_conditioning,
                                                sampling, [self.distance], batch_size=self.batch_size,
                                                backend=self.backend)
                summary = faithfulness.rank_summary(ranks[self.distance], len(self._gallery))
                metrics.update({f"faithfulness/{prefix}{name}": summary[name] for name in LOGGED})
        finally:
            unet.train(was_training)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.cost.record(time.perf_counter() - started, trainer.global_step)
        return metrics
