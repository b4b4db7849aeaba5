"""A FigureContext over the session's tiny trained checkpoint, with 2-step sampling so every figure runs in seconds."""

from __future__ import annotations

import pytest

from rcdm_lab.experiments.context import FigureContext
from rcdm_lab.trained_run import TrainedRun

FAST_SAMPLING = {"sampler": "ddim", "steps": 2, "guidance": 1.0, "eta": 0.0, "batch_size": 64, "precision": "auto",
                 "progress": False}


@pytest.fixture(scope="session")
def tiny_run(trained_checkpoint) -> TrainedRun:
    return TrainedRun.load(trained_checkpoint)


@pytest.fixture
def figure_ctx(tiny_run, tmp_path) -> FigureContext:
    return FigureContext(runs=[tiny_run], sampling=dict(FAST_SAMPLING), out_dir=tmp_path, seed=0,
                         labels=["tiny"])


@pytest.fixture
def sample_calls(figure_ctx, monkeypatch) -> list[dict]:
    """Every `figure_ctx.sample` call -- its h, noise and the samples it returned -- recorded on the way through."""
    calls: list[dict] = []
    original = figure_ctx.sample

    def recording(h, k, run=None, noise=None):
        samples = original(h, k, run=run, noise=noise)
        calls.append({"h": h.clone(), "noise": noise, "samples": samples})
        return samples

    monkeypatch.setattr(figure_ctx, "sample", recording)
    return calls
