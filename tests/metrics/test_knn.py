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


# ------------------------------------------------------------------------------------------------ backends at scale
import numpy as np  # noqa: E402

from rcdm_lab.metrics import knn  # noqa: E402
from rcdm_lab.metrics.knn import target_ranks  # noqa: E402


def _tied_data():
    """Integer vectors with duplicated keys: many exact ties in both metrics.

    Every key has three entries of +-1 and three 0 (norm^2 = 3), so cosine ties are equal integer dot products --
    ties in exact arithmetic *and* in float64 (a tie like 2 / sqrt(2) vs 4 / sqrt(8) is one only on paper).
    """
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (300, 6), generator=generator).float() * 2 - 1
    support = torch.rand(300, 6, generator=generator).argsort(1) < 3
    keys = signs * support
    keys = torch.cat([keys, keys[:50]])               # rows 300..349 duplicate rows 0..49
    queries = torch.randint(-1, 2, (200, 6), generator=generator).float()
    targets = torch.randint(0, len(keys), (200,), generator=generator)
    return queries, keys, targets


def _reference_distances(queries, keys, metric):
    # numpy, independently of the module; rounded so that mathematically equal distances compare equal.
    q, k = queries.numpy().astype(np.float64), keys.numpy().astype(np.float64)
    if metric == "l2":
        d = ((q[:, None] - k[None]) ** 2).sum(-1)
    else:
        d = 1 - (q @ k.T) / np.maximum(np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(k, axis=1), 1e-300)
    return np.round(d, 9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_both_backends_give_the_exact_ranks_with_ties_not_pushing_down(metric):
    queries, keys, targets = _tied_data()
    d = _reference_distances(queries, keys, metric)
    own = d[np.arange(len(targets)), targets.numpy()]
    expected = 1 + (d < own[:, None]).sum(1)
    exact = target_ranks(queries, keys, targets, metric, batch_size=37, backend="exact")
    # 8 candidates: most targets lie beyond them, so faiss's exact fallback is exercised as well as its own path.
    faiss = target_ranks(queries, keys, targets, metric, batch_size=37, backend="faiss", candidates=8)
    assert exact.tolist() == expected.tolist() and faiss.tolist() == expected.tolist()
    assert (expected > 8).any() and (expected <= 8).any()
    # A duplicate of the target ties with it: rank 1 for a query sitting on a duplicated key.
    assert target_ranks(keys[:1], keys, torch.tensor([300]), metric, backend="faiss").tolist() == [1]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_both_backends_order_tied_neighbours_by_index(metric):
    queries, keys, _ = _tied_data()
    d = _reference_distances(queries, keys, metric)
    expected = np.lexsort((np.broadcast_to(np.arange(len(keys)), d.shape), d), axis=1)[:, :5]
    for backend in ("exact", "faiss"):
        distances, indices = nearest_neighbors(queries, keys, 5, metric, batch_size=37, backend=backend)
        assert indices.tolist() == expected.tolist(), backend
        np.testing.assert_allclose(distances.numpy(), np.take_along_axis(d, expected, 1), atol=1e-9)


def test_faiss_and_exact_agree_on_continuous_features_with_a_large_common_offset():
    # Post-ReLU-like features: a large shared offset is where a float32 ||q||^2 + ||k||^2 - 2 q.k cancels.
    generator = torch.Generator().manual_seed(1)
    keys = 50 + torch.randn(2000, 64, generator=generator, dtype=torch.float64)
    queries = keys[:300] + 0.7 * torch.randn(300, 64, generator=generator, dtype=torch.float64)
    targets = torch.arange(300)
    expected = 1 + (pairwise_distances(queries, keys) < pairwise_distances(queries, keys)[targets, targets][:, None]
                    ).sum(1)
    for backend in ("exact", "faiss"):
        assert torch.equal(target_ranks(queries, keys, targets, backend=backend, batch_size=64), expected)


def test_ranking_holds_one_chunk_of_distances_at_a_time(monkeypatch):
    shapes = []
    bulk = knn._Space.bulk_distances

    def recording(self, prepared):
        out = bulk(self, prepared)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(knn._Space, "bulk_distances", recording)
    queries, keys, targets = _tied_data()
    target_ranks(queries, keys, targets, batch_size=16, backend="exact")
    assert shapes and max(rows for rows, _ in shapes) <= 16 and {cols for _, cols in shapes} == {len(keys)}


def test_backend_choice_without_faiss(monkeypatch):
    monkeypatch.setattr(knn, "faiss_available", lambda: False)
    assert knn.resolve_backend("auto", torch.device("cpu")) == "exact"
    with pytest.raises(RCDMError, match="pip install faiss-cpu"):
        target_ranks(torch.zeros(1, 2), torch.zeros(2, 2), torch.tensor([0]), backend="faiss")
    with pytest.raises(RCDMError, match="use one of"):
        nearest_neighbors(torch.zeros(1, 2), torch.zeros(2, 2), backend="annoy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_exact_search_on_a_gpu_matches_the_cpu():
    queries, keys, targets = _tied_data()
    gpu = target_ranks(queries.cuda(), keys.cuda(), targets, "cosine", backend="exact")
    assert torch.equal(gpu, target_ranks(queries, keys, targets, "cosine", backend="exact"))
    distances, indices = nearest_neighbors(queries.cuda(), keys.cuda(), 5, backend="auto")
    assert indices.is_cuda and torch.equal(indices.cpu(), nearest_neighbors(queries, keys, 5, backend="exact")[1])
