"""Helpers for tests that train tiny models or run the command-line entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    """A model, dataset and schedule small enough that a training step takes well under a second on 2 cores."""
    other_dataset = any(arg.startswith("data=") for arg in extra)
    shapes_sizes = [] if other_dataset else ["data.dataset.num_train=32", "data.dataset.num_val=8"]
    return [
        *shapes_sizes,
        "resolution=16px",
        "encoder.input_size=32",
        "model.unet.model_channels=16",
        "model.unet.num_res_blocks=1",
        "model.unet.num_heads=2",
        "data.batch_size=8",
        f"data.cache_dir={tmp / 'cache'}",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.preview.every_n_steps=2",
        "sampling.steps=2",   # the preview grids sample in 2 steps
        "callbacks.preview.num_conditionings=2",
        "callbacks.preview.samples_per_conditioning=2",
        *extra,
    ]


def compose_config(config_name: str, *overrides: str):
    """conf/<config_name>.yaml composed with `overrides`, as the command-line entry point would see it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def compose_train(tmp: Path, *extra: str, config_name: str = "train"):
    """The composed rcdm-train config with the tiny overrides, and its run folder in `tmp / 'run'`."""
    return compose_config(config_name, *tiny_overrides(tmp, *extra), f"output_dir={tmp / 'run'}")


# The console scripts the tests run, and the module whose `main` each one is.
COMMAND_MODULES = {"rcdm-train": "rcdm_lab.cli.train", "rcdm-sample": "rcdm_lab.cli.sample",
                   "rcdm-probe": "rcdm_lab.cli.probe", "rcdm-eval": "rcdm_lab.cli.eval",
                   "rcdm-figure": "rcdm_lab.cli.figure"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an rcdm_lab command-line entry point in a fresh interpreter."""
    module = COMMAND_MODULES[args[0]]
    # tests/ on the path, so a subprocess can instantiate test helpers such as RecordDraws from an override.
    paths = [str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", module, *args[1:]], cwd=cwd or REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)



class RecordDraws(L.Callback):
    """Records what each training step drew, saved per rank as `out_dir`/draws_rank<r>.pt.

    It observes the real calls: t and noise where the diffusion noises x0 (q_sample), the condition-dropout mask
    where the UNet is called, and the items and flips of the batch. From a subprocess (`run_cli`, which puts tests/
    on PYTHONPATH): `+callbacks.record._target_=rcdm_testing.RecordDraws +callbacks.record.out_dir=DIR`.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.steps, self.current = Path(out_dir), [], {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        diffusion, original = pl_module.diffusion, pl_module.diffusion.q_sample

        def q_sample(x0, t, noise):
            self.current.update(t=t.detach().cpu().clone(), noise=noise.detach().cpu().clone())
            return original(x0, t, noise)

        diffusion.q_sample = q_sample

        def record_drop(module, args, kwargs):
            drop = kwargs.get("drop_cond")
            self.current["drop"] = None if drop is None else drop.detach().cpu().clone()

        pl_module.unet.register_forward_pre_hook(record_drop, with_kwargs=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.current = {"index": batch["index"].cpu().clone(), "flipped": batch["flipped"].cpu().clone()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(self.current)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.steps, self.out_dir / f"draws_rank{trainer.global_rank}.pt")


def run_cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """Run an entry point's `main` in this interpreter (seconds faster than `run_cli`: no fresh imports).

    For tests of what a bad command line gets -- its exit status and its stderr -- which need the command's own
    argument handling, not a fresh process. stdout is not captured (Hydra's logging writes there).
    """
    import contextlib
    import importlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    module = COMMAND_MODULES[args[0]]
    main = importlib.import_module(module).main
    stderr, code, argv = io.StringIO(), 0, sys.argv
    GlobalHydra.instance().clear()
    sys.argv = [args[0], *args[1:]]
    try:
        with contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(list(args), code, "", stderr.getvalue())
