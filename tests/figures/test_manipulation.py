from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import manipulation
from rcdm_lab.figures.manipulation import apply_mask, common_dims_mask, nonzero_counts, rare_dims_mask
from rcdm_lab.metrics.knn import nearest_neighbors


@pytest.fixture
def settings(settings_for):
    """The shipped config's settings (so a typo there fails here), with small counts for the tiny run."""
    small = {"k": 8, "n_common": 4, "n_rare": 2, "samples_per_row": 2}
    return lambda **overrides: settings_for("manipulation", **{**small, **overrides})


def test_nonzero_counts_and_masks_on_a_hand_checked_example():
    neighbours = torch.tensor([[0.0, 1.0, 0.0, -2.0],
                               [0.0, 0.5, 0.0, 0.0],
                               [3.0, 0.05, 0.0, 1.0]])
    counts = nonzero_counts(neighbours)
    assert counts.tolist() == [1, 3, 0, 2]            # negative values count as non-zero too
    assert nonzero_counts(neighbours, threshold=0.1).tolist() == [1, 2, 0, 2]
    assert common_dims_mask(counts, 1).tolist() == [False, True, False, True]
    # Dimension 2 is zero in every neighbour: not "least common", just unused.
    assert rare_dims_mask(counts, 1).tolist() == [True, False, False, False]
    with pytest.raises(RCDMError, match="zero_threshold"):
        nonzero_counts(neighbours, threshold=-1)


def test_apply_mask_zeroes_or_replaces_exactly_the_masked_dims():
    h, target = torch.randn(2, 3, 10)                 # a batch of 3 representations of 10 dims, and 3 targets
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    zeroed = apply_mask(h, mask)
    assert torch.all(zeroed[:, mask] == 0)
    assert torch.equal(zeroed[:, ~mask], h[:, ~mask])
    replaced = apply_mask(h, mask, target)
    assert torch.equal(replaced[:, mask], target[:, mask])
    assert torch.equal(replaced[:, ~mask], h[:, ~mask])
    with pytest.raises(RCDMError, match="bool"):
        apply_mask(h, mask.float())


def test_manipulation_rows_are_the_original_zeroed_and_replaced_representations(figure_ctx, sample_calls, settings):
    result = manipulation.make(figure_ctx, settings(mode="both", target_offset=[1]))

    # The protocol by brute force: the query's 8 training neighbours by cosine similarity (the shipped default, as
    # the official script's normalised faiss index orders them) and their non-zero counts.
    images, _ = figure_ctx.input_images(2)
    h_query, h_target = figure_ctx.run.pipeline.encode(images).float()
    train = figure_ctx.run.representations("train")
    similarity = torch.nn.functional.cosine_similarity(train.double(), h_query.double()[None], dim=1)
    indices = similarity.argsort(descending=True, stable=True)[None, :8]
    assert not torch.equal(indices, nearest_neighbors(h_query[None], train, 8, "l2")[1])  # the metric matters here
    counts = (train[indices[0]] != 0).sum(0)
    most, least = counts > 4, (counts >= 1) & (counts <= 2)
    assert most.any() and least.any()

    rows = sample_calls[0]["h"]
    assert [row["label"] for row in result["rows"]] == ["original", "most = 0", "most <- val 1", "least = 0",
                                                        "least <- val 1"]
    assert torch.equal(rows[0], h_query)
    for mask, zeroed, replaced in [(most, rows[1], rows[2]), (least, rows[3], rows[4])]:
        assert torch.all(zeroed[mask] == 0) and torch.equal(zeroed[~mask], h_query[~mask])
        assert torch.equal(replaced[mask], h_target[mask]) and torch.equal(replaced[~mask], h_query[~mask])
    assert sample_calls[0]["noise"] is None                      # ctx.sample's default: the same noise for every row
    assert result["masks"]["most_common"]["size"] == int(most.sum())
    assert result["masks"]["least_common"]["dims"] == least.nonzero().flatten().tolist()[:64]
    assert result["metric"] == "cosine" and result["neighbors"]["indices"] == indices[0].tolist()
    assert result["rows"][0]["sq_l2_to_original"] == 0.0
    assert result["rows"][1]["sq_l2_to_original"] == pytest.approx(float(h_query[most].double().pow(2).sum()))
    picture = Image.open(result["figure_png"])
    assert picture.height > picture.width / 3         # five rows of three cells


def test_manipulation_refuses_settings_that_cannot_make_a_mask(figure_ctx, settings):
    with pytest.raises(RCDMError, match="32 representations"):      # the tiny run has 32 training items
        manipulation.make(figure_ctx, settings(k=33))
    with pytest.raises(RCDMError, match="n_common"):
        manipulation.make(figure_ctx, settings(k=8, n_common=8))
    with pytest.raises(RCDMError, match="nothing to mask"):          # nothing is non-zero above a huge threshold
        manipulation.make(figure_ctx, settings(zero_threshold=1e9, mode="most_common"))
    with pytest.raises(RCDMError, match="differ"):
        manipulation.make(figure_ctx, settings(target_offset=0))
