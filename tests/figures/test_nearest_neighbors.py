from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import nearest_neighbors


@pytest.fixture
def settings(settings_for):
    """The shipped config's settings (so a typo there fails here), with small counts for the tiny run."""
    small = {"num_images": 2, "samples_per_image": 2, "num_neighbors": 3}
    return lambda **overrides: settings_for("nearest_neighbors", **{**small, **overrides})


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbours_are_the_true_nearest_training_items_sorted(figure_ctx, monkeypatch, settings, metric):
    seen = {}
    original_sample = figure_ctx.sample

    def spy(h, k, run=None, noise=None):
        seen["samples"] = original_sample(h, k, run=run, noise=noise)
        return seen["samples"]

    monkeypatch.setattr(figure_ctx, "sample", spy)
    result = nearest_neighbors.make(figure_ctx, settings(metric=metric))
    assert [s["image"] for s in result["samples"]] == ["val 0", "val 0", "val 1", "val 1"]

    # Brute force, one sample and one training item at a time.
    reps = figure_ctx.run.pipeline.encode(seen["samples"]).double()
    train = figure_ctx.run.representations("train").double()
    images, _ = figure_ctx.input_images(2)
    h = figure_ctx.run.pipeline.encode(images).double()

    def distance(u, v):
        return float((u - v).pow(2).sum()) if metric == "l2" else float(1 - torch.nn.functional.cosine_similarity(
            u, v, dim=0))

    for s, row in enumerate(result["samples"]):
        brute = sorted((distance(reps[s], t), i) for i, t in enumerate(train))[:3]
        assert row["neighbor_indices"] == [i for _, i in brute]
        assert row["neighbor_distances"] == pytest.approx([d for d, _ in brute], rel=1e-6, abs=1e-9)
        assert row["neighbor_distances"] == sorted(row["neighbor_distances"])
        assert row["distance_to_conditioning"] == pytest.approx(distance(reps[s], h[s // 2]), rel=1e-6, abs=1e-9)
        assert row["closer_to_conditioning"] == (row["distance_to_conditioning"] < row["neighbor_distances"][0])


def test_more_neighbours_than_training_items_is_a_clear_error(figure_ctx, monkeypatch, settings):
    monkeypatch.setattr(figure_ctx, "sample", lambda *a, **k: pytest.fail("sampled before checking the settings"))
    with pytest.raises(RCDMError, match="num_neighbors=33.*32"):   # the tiny run has 32 training items
        nearest_neighbors.make(figure_ctx, settings(num_neighbors=33))
    with pytest.raises(RCDMError, match="unknown distance metric"):
        nearest_neighbors.make(figure_ctx, settings(metric="manhattan"))
