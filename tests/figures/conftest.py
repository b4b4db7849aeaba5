"""A FigureContext over the session's tiny trained checkpoint, with 2-step sampling so every figure runs in seconds,
and each figure kind's Settings built from its shipped config the way rcdm-figure builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from omegaconf import OmegaConf

from rcdm_lab.figures import figure_kind
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.trained_run import TrainedRun
from rcdm_testing import compose_config

FAST_SAMPLING = {"sampler": "ddim", "steps": 2, "guidance": 1.0, "eta": 0.0, "batch_size": 64, "precision": "auto",
                 "progress": False}


def settings_of(kind: str, **overrides: Any) -> Any:
    """conf/figure/<kind>.yaml as rcdm-figure composes it, with `overrides`, as that kind's Settings."""
    shipped = OmegaConf.to_container(compose_config("figure", f"figure={kind}").figure, resolve=True)
    return figure_kind(kind).settings({**shipped, **overrides})


@pytest.fixture
def settings_for() -> Callable[..., Any]:
    """settings_for(kind, **overrides): the kind's shipped settings (so a typo there fails here), overridden."""
    return settings_of


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
