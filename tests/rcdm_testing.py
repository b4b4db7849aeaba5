"""Helpers for tests that train tiny models or run the command-line entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        "callbacks.preview.steps=2",
        "callbacks.preview.num_conditionings=2",
        "callbacks.preview.samples_per_conditioning=2",
        *extra,
    ]


def compose_train(tmp: Path, *extra: str, config_name: str = "train"):
    """The composed rcdm-train config, as the CLI would see it, with its run folder in `tmp / 'run'`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*tiny_overrides(tmp, *extra), f"output_dir={tmp / 'run'}"])


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an rcdm_lab command-line entry point in a fresh interpreter."""
    module = {"rcdm-train": "rcdm_lab.cli.train", "rcdm-sample": "rcdm_lab.cli.sample",
              "rcdm-probe": "rcdm_lab.cli.probe", "rcdm-eval": "rcdm_lab.cli.eval",
              "rcdm-figure": "rcdm_lab.cli.figure"}[args[0]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args[1:]], cwd=cwd or REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
