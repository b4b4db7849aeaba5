"""Streamed feature statistics: what FID and KID keep of 50 000 features without holding them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.feature_stats import FeatureReservoir, FeatureStats


def _features(n: int = 301, dim: int = 7, seed: int = 0) -> torch.Tensor:
    # A large common offset, like post-ReLU Inception features: where raw sums of x x^T lose digits.
    generator = torch.Generator().manual_seed(seed)
    return 1e4 + torch.randn(n, dim, generator=generator, dtype=torch.float64) * torch.arange(1, dim + 1)


def test_streamed_mean_and_covariance_equal_numpy_on_the_whole_set():
    features = _features()
    stats = FeatureStats(7)
    for batch in (features[:1], features[1:40], features[40:40], features[40:]):   # uneven, one empty, one single
        stats.update(batch)
    assert stats.count == 301
    np.testing.assert_allclose(stats.mean.numpy(), features.numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(features.numpy(), rowvar=False), rtol=1e-9,
                               atol=1e-9)


def test_merging_two_accumulators_equals_one_over_both_streams():
    features = _features(200)
    one = FeatureStats(7).update(features[:50]).update(features[50:])
    left, right = FeatureStats(7).update(features[:130]), FeatureStats(7).update(features[130:])
    merged = left.merge(right).merge(FeatureStats(7))   # merging an empty one changes nothing
    assert merged.count == 200
    torch.testing.assert_close(merged.mean, one.mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(merged.covariance, one.covariance, rtol=1e-10, atol=1e-10)


def test_feature_stats_refuse_mismatched_batches():
    with pytest.raises(RCDMError, match="same D"):
        FeatureStats(7).update(torch.zeros(3, 5))
    with pytest.raises(RCDMError, match="merge"):
        FeatureStats(7).merge(FeatureStats(5))
    with pytest.raises(RCDMError, match="at least 2"):
        _ = FeatureStats(7).update(torch.zeros(1, 7)).covariance


def test_reservoir_keeps_a_small_stream_whole_and_in_order():
    features = _features(30)
    reservoir = FeatureReservoir(30).update(features[:10]).update(features[10:])
    assert reservoir.complete and torch.equal(reservoir.features, features)


def test_reservoir_is_bounded_seeded_and_uniform():
    rows = torch.arange(1000, dtype=torch.float64)[:, None]

    def draw(seed):
        reservoir = FeatureReservoir(100, seed)
        for start in range(0, 1000, 64):
            reservoir.update(rows[start:start + 64])
        return reservoir

    first = draw(0)
    assert not first.complete and first.features.shape == (100, 1)
    assert len(first.features.unique()) == 100                 # a subset: no row twice
    assert torch.equal(draw(0).features, first.features)     # seeded
    # Each row is kept with probability 100 / 1000: over 200 seeds, early and late rows alike (no stream-order bias).
    counts = torch.zeros(1000)
    for seed in range(200):
        counts[draw(seed).features.long().squeeze(1)] += 1
    for part in counts.view(4, 250):
        assert part.mean() == pytest.approx(20, rel=0.1)      # 200 x 0.1; the mean of 250 rows, sd ~ 0.27
