"""Shared fixtures: one tiny trained checkpoint for the whole session; `slow` marks every test that trains."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest

# No test may wait on the network: a missing hub file must fail in seconds, and wandb must never try to log in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Tests using these fixtures train a model (once per session) and so are `slow`, wherever they live.
TRAINING_FIXTURES = {"trained_checkpoint"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_training_outside_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test-fast` (-m "not slow") trains nothing: a test that calls Trainer.fit must be marked slow."""
    if request.node.get_closest_marker("slow") is None:
        def refuse(*args, **kwargs):
            raise AssertionError("this test trains a model: mark it @pytest.mark.slow")

        monkeypatch.setattr(L.Trainer, "fit", refuse)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """One tiny RCDM trained with condition dropout (so guidance works), shared by the tests that only read it."""
    from rcdm_lab.cli.train import train
    from rcdm_testing import compose_train

    tmp = tmp_path_factory.mktemp("trained")
    return train(compose_train(tmp, "model.cond_drop=0.2", "trainer.max_steps=4"))
