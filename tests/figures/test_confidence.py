from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import confidence
from rcdm_lab.figures.probe_source import probe_for

SETTINGS = {"num_candidates": 8, "num_images": 2, "samples_per_image": 2, "factor": None}


@pytest.fixture
def settings(settings_for):
    """settings(**overrides): SETTINGS over the shipped conf/figure/confidence.yaml, as rcdm-figure builds them."""
    return lambda **overrides: settings_for("confidence", **{**SETTINGS, **overrides})


def test_extremes_are_the_highest_and_lowest_and_never_overlap():
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.9])
    most, least = confidence.confidence_extremes(scores, 2)
    assert most.tolist() == [1, 5] and least.tolist() == [2, 4]
    most, least = confidence.confidence_extremes(torch.full((4,), 0.5), 2)   # all tied: still disjoint
    assert not set(most.tolist()) & set(least.tolist())
    with pytest.raises(RCDMError, match="num_candidates"):
        confidence.confidence_extremes(scores, 4)


def test_figure_shows_the_true_confidence_extremes(figure_ctx, tiny_run, settings):
    result = confidence.make(figure_ctx, settings())
    most, least = result["most_confident"], result["least_confident"]
    # Recompute the probe's softmax confidence over the same candidates independently.
    probe = probe_for(figure_ctx, tiny_run)
    with torch.no_grad():
        scores = torch.softmax(probe(tiny_run.representations("val")[:8]), dim=1).max(dim=1).values
    ranked = scores.sort(descending=True).values
    assert most["confidences"] == pytest.approx(ranked[:2].tolist(), abs=1e-6)
    assert least["confidences"] == pytest.approx(ranked[-2:].flip(0).tolist(), abs=1e-6)
    assert min(most["confidences"]) >= max(least["confidences"])
    assert most["confidences"] == sorted(most["confidences"], reverse=True)
    assert least["confidences"] == sorted(least["confidences"])
    assert not set(most["indices"]) & set(least["indices"])
    assert len(most["labels"]) == 2 and len(least["true_labels"]) == 2
    assert 0 <= result["probe_accuracy_on_candidates"] <= 1
    assert result["figure_png"].endswith(".png")


def test_more_candidates_than_validation_items_is_an_error(figure_ctx, settings):
    with pytest.raises(RCDMError, match="num_candidates"):
        confidence.make(figure_ctx, settings(num_candidates=9))


def test_candidates_can_come_from_an_image_folder(figure_ctx, tmp_path, settings):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 100, 200 - 40 * i)).save(folder / f"p{i}.png")
    figure_ctx.images = str(folder)
    result = confidence.make(figure_ctx, settings(num_candidates=100))
    assert result["num_candidates"] == 4   # capped by the folder
    assert set(result["most_confident"]["names"]) | set(result["least_confident"]["names"]) == {"p0", "p1", "p2", "p3"}
    assert "true_labels" not in result["most_confident"]
