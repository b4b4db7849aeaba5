"""Shared fixtures: one tiny trained checkpoint for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may wait on the network: a missing hub file must fail in seconds, and wandb must never try to log in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """One tiny RCDM trained with condition dropout (so guidance works), shared by the tests that only read it."""
    from rcdm_lab.cli.train import train
    from rcdm_testing import compose_train

    tmp = tmp_path_factory.mktemp("trained")
    return train(compose_train(tmp, "model.cond_drop=0.2", "trainer.max_steps=4"))
