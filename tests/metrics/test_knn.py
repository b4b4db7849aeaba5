from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.faithfulness import nearest_conditioning_accuracy
from rcdm_lab.metrics.knn import nearest_neighbors, pairwise_distances


def test_neighbours_match_brute_force_in_batches():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(50, 8, generator=generator), torch.randn(30, 8, generator=generator)
    for metric in ("l2", "cosine"):
        distances, indices = nearest_neighbors(queries, keys, k=3, metric=metric, batch_size=7)
        if metric == "l2":
            brute = torch.cdist(queries.double(), keys.double()).pow(2)
        else:
            brute = 1 - torch.nn.functional.cosine_similarity(queries[:, None].double(), keys[None].double(), dim=2)
        expected = brute.topk(3, dim=1, largest=False)
        assert torch.equal(indices, expected.indices)
        torch.testing.assert_close(distances, expected.values)


def test_bad_metric_and_k():
    with pytest.raises(RCDMError, match="cosine"):
        pairwise_distances(torch.zeros(1, 2), torch.zeros(1, 2), metric="manhattan")
    with pytest.raises(RCDMError, match="neighbours"):
        nearest_neighbors(torch.zeros(1, 2), torch.zeros(1, 2), k=2)


def test_faithfulness_is_one_for_perfect_samples_and_counts_a_hand_checked_case():
    conds = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    perfect = conds.repeat_interleave(2, dim=0)
    assert nearest_conditioning_accuracy(perfect, conds, 2) == 1.0
    # Condition 0's second sample drifts next to condition 1; condition 2's first lands on condition 0.
    samples = torch.tensor([[0.5, 0], [9, 0], [10, 1], [9, 0], [1, 1], [0, 9]])
    assert nearest_conditioning_accuracy(samples, conds, 2) == pytest.approx(4 / 6)
