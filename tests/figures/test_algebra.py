from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import algebra
from rcdm_lab.metrics.knn import pairwise_distances


@pytest.fixture
def settings(settings_for):
    """The shipped config's settings (so a typo there fails here), with small counts for the tiny run."""
    return lambda **overrides: settings_for("algebra", **{"samples_per_row": 2, **overrides})


def test_combine_is_a_minus_b_plus_c_and_gives_a_back_when_b_equals_c():
    # Integer-valued floats: every order of operations is exact, so a - b + c can be compared bit for bit.
    a, b, c = torch.randint(-50, 50, (3, 4, 16)).float()
    assert torch.equal(algebra.combine(a, b, c), a - b + c)
    a, b = torch.randn(2, 4, 16) * 10
    assert torch.equal(algebra.combine(a, b, b), a)     # exact, although (a - b) + b would round


def test_algebra_rows_decode_the_combined_representation(figure_ctx, sample_calls, settings):
    result = algebra.make(figure_ctx, settings(triples=[[0, 1, 2], [3, 4, 4]]))
    images, _ = figure_ctx.input_images(5)
    h = figure_ctx.run.pipeline.encode(images).float()
    torch.testing.assert_close(sample_calls[0]["h"][0], h[0] - h[1] + h[2])
    assert torch.equal(sample_calls[0]["h"][1], h[3])               # b == c: the conditioning is h(a) itself
    first, second = result["triples"]
    assert (first["a"], first["b"], first["c"]) == ("val 0", "val 1", "val 2")
    assert first["sq_l2_to_a"] == pytest.approx(float((h[2] - h[1]).double().pow(2).sum()), rel=1e-5)
    assert second["sq_l2_to_a"] == 0.0
    train = figure_ctx.run.representations("train")
    distances = pairwise_distances(sample_calls[0]["h"], train)
    assert [t["nearest_train_index"] for t in result["triples"]] == distances.argmin(1).tolist()
    assert first["nearest_train_distance"] == pytest.approx(float(distances[0].min()))


def test_algebra_refuses_malformed_triples(figure_ctx, settings):
    for bad in ([[0, 1]], [], [[0, 1, -2]], 3):
        with pytest.raises(RCDMError, match="triples"):
            algebra.make(figure_ctx, settings(triples=bad))
