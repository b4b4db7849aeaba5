"""Shared fixtures: tiny configs and one tiny trained checkpoint for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# No test may wait on the network: a missing hub file must fail in seconds, and wandb must never try to log in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    """A model, dataset and schedule small enough that a training step takes well under a second on 2 cores."""
    return [
        "resolution=16",
        "encoder.input_size=32",
        "model.unet.model_channels=16",
        "model.unet.num_res_blocks=1",
        "model.unet.num_heads=2",
        "data.dataset.num_train=32",
        "data.dataset.num_val=8",
        "data.batch_size=8",
        f"data.cache_dir={tmp / 'cache'}",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=false",
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
    module = {"rcdm-train": "rcdm_lab.cli.train", "rcdm-sample": "rcdm_lab.cli.sample"}[args[0]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args[1:]], cwd=cwd or REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """One tiny RCDM trained with condition dropout (so guidance works), shared by the tests that only read it."""
    from rcdm_lab.cli.train import train

    tmp = tmp_path_factory.mktemp("trained")
    return train(compose_train(tmp, "model.cond_drop=0.2", "trainer.max_steps=4"))
