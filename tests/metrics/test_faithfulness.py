from __future__ import annotations

import pytest
import torch

from rcdm_lab.metrics.faithfulness import conditioning_ranks, grouped_owners, rank_summary


def test_ranks_are_exactly_one_when_samples_are_their_conditionings():
    conds = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    for metric in ("l2", "cosine"):
        ranks = conditioning_ranks(conds.repeat_interleave(3, dim=0), conds, grouped_owners(20, 3), metric=metric)
        summary = rank_summary(ranks, 20)
        assert summary["mean_rank"] == 1.0 and summary["mrr"] == 1.0 and summary["top1"] == 1.0


def test_ranks_of_a_hand_checked_toy_case():
    # Conditionings on a line at 0, 1, 2, 3 (1-D); one sample each.
    conds = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    samples = torch.tensor([
        [0.9],   # own 0 at 0.81; closer: 1 (0.01), 2 (1.21? no) -> only 1 closer -> rank 2
        [1.0],   # on its own conditioning -> rank 1
        [3.4],   # own 2 at 1.96; closer: 3 (0.16) -> rank 2
        [0.0],   # own 3 at 9; closer: 0, 1, 2 -> rank 4 (the worst possible)
    ])
    # batch_size=3 also checks the batching
    ranks = conditioning_ranks(samples, conds, grouped_owners(4, 1), batch_size=3)
    assert ranks.tolist() == [2, 1, 2, 4]
    summary = rank_summary(ranks, 4)
    assert summary["mean_rank"] == pytest.approx(9 / 4)
    assert summary["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 2 + 1 / 4) / 4)
    assert summary["top1"] == pytest.approx(1 / 4)
    assert summary["chance_mean_rank"] == pytest.approx(2.5)


def test_cosine_ranks_ignore_the_norm_and_ties_do_not_push_down():
    conds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])   # 0 and 2 point the same way
    samples = torch.tensor([[5.0, 0.1], [0.1, 3.0], [0.0, 1.0]])
    ranks = conditioning_ranks(samples, conds, torch.arange(3), metric="cosine")
    # Sample 0 is tied with conditioning 2 in angle (not strictly closer) -> rank 1; sample 2 (own: [2, 0]) is
    # orthogonal to it while conditioning 1 matches exactly -> rank 2 (conditioning 0 ties, so it does not count).
    assert ranks.tolist() == [1, 1, 2]
    assert conditioning_ranks(samples, conds, torch.arange(3), metric="l2").tolist() == [2, 1, 3]


def test_ranks_count_every_gallery_item_not_only_the_sampled_conditionings():
    # Gallery of 6 validation representations on a line; only items 0 and 1 were sampled from.
    gallery = torch.tensor([[0.0], [10.0], [20.0], [30.0], [1.0], [11.0]])
    samples = torch.tensor([[0.9], [10.2], [-0.1]])   # of 0 (nearer to item 4), of 1 (its own), of 0 (its own)
    ranks = conditioning_ranks(samples, gallery, torch.tensor([0, 1, 0]))
    # Among the sampled conditionings alone, all three would rank 1; item 4 is closer to the first sample.
    assert ranks.tolist() == [2, 1, 1]
    assert rank_summary(ranks, len(gallery))["chance_mean_rank"] == pytest.approx(3.5)


def test_owner_mismatch_is_refused():
    with pytest.raises(ValueError, match="owners"):
        conditioning_ranks(torch.zeros(5, 2), torch.zeros(2, 2), grouped_owners(2, 2))
    with pytest.raises(ValueError, match="index the gallery"):
        conditioning_ranks(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0, 2]))
