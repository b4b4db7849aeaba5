from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import training_checkpoints
from rcdm_lab.figures.blocks import ModelBlock

SETTINGS = {"num_images": 2, "first_image": 0, "samples_per_image": 2}


@pytest.fixture
def settings(settings_for):
    """settings(**overrides): SETTINGS over conf/figure/training_checkpoints.yaml, as rcdm-figure builds them."""
    return lambda **overrides: settings_for("training_checkpoints", **{**SETTINGS, **overrides})


@pytest.fixture
def epochs_ctx(figure_ctx, tiny_run):
    # Labels deliberately out of numeric order: the figure must keep the order the checkpoints were given in.
    return replace(figure_ctx, runs=[tiny_run, tiny_run], labels=["5", "1"])


def test_training_checkpoints_keeps_the_given_order_and_groups_rows_by_image(epochs_ctx, monkeypatch, settings):
    seen = {}
    original = training_checkpoints.labelled_rows

    def spy(rows, row_labels=None, *args, **kwargs):
        seen["row_labels"] = row_labels
        return original(rows, row_labels, *args, **kwargs)

    monkeypatch.setattr(training_checkpoints, "labelled_rows", spy)
    result = training_checkpoints.make(epochs_ctx, settings())
    assert list(result["models"]) == ["5", "1"]   # as given, not sorted
    assert seen["row_labels"] == ["val 0: 5", "val 0: 1", "val 1: 5", "val 1: 1"]
    five, one = result["models"]["5"], result["models"]["1"]
    assert five["sq_l2_to_conditioning"] == one["sq_l2_to_conditioning"] > 0   # same model, same noise
    assert five["relative_to_between_inputs"] > 0 and five["encoder_dim"] == epochs_ctx.run.pipeline.encoder.dim


def test_closeness_by_hand():
    # Two inputs at (0, 0) and (3, 4) (squared distance 25), two samples each, at squared distances 1, 0 and 0, 4.
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    samples = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 6.0]])
    block = ModelBlock(label="x", run=None, names=["a", "b"], rows=[], h=h, samples=torch.zeros(4, 3, 2, 2),
                       sample_reps=samples, k=2)
    assert training_checkpoints.closeness(block) == pytest.approx(
        {"sq_l2_to_conditioning": 1.25, "relative_to_between_inputs": 1.25 / 25})


def test_training_checkpoints_needs_two_checkpoints(figure_ctx, settings):
    with pytest.raises(RCDMError, match="ckpts="):
        training_checkpoints.make(figure_ctx, settings())
