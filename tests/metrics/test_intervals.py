import numpy as np
import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.intervals import mean_interval, per_conditioning_means


def test_per_conditioning_means_groups_row_major():
    values = torch.tensor([1.0, 3.0, 10.0, 20.0, 0.0, 0.0])
    assert per_conditioning_means(values, 2).tolist() == [2.0, 15.0, 0.0]
    with pytest.raises(RCDMError, match="groups of 4"):
        per_conditioning_means(values, 4)


def test_interval_covers_the_true_mean_at_about_its_level():
    # 200 repetitions of a 64-conditioning evaluation of a skewed quantity (like reciprocal ranks): a 90 % interval
    # must contain the true mean roughly 90 % of the time (binomial sd ~2 %), not 50 % and not always.
    rng = np.random.default_rng(0)
    true_mean, hits = 0.5, 0
    for repeat in range(200):
        values = rng.exponential(true_mean, size=64)
        low, high = mean_interval(torch.from_numpy(values), level=0.9, resamples=500, seed=repeat)
        assert low < values.mean() < high
        hits += low <= true_mean <= high
    assert 0.82 <= hits / 200 <= 0.97


def test_interval_shrinks_like_one_over_root_n_and_is_reproducible():
    rng = np.random.default_rng(1)
    small = torch.from_numpy(rng.normal(size=100))
    large = torch.from_numpy(rng.normal(size=1600))
    width = [high - low for low, high in (mean_interval(small), mean_interval(large))]
    assert width[0] / width[1] == pytest.approx(4.0, rel=0.25)
    assert mean_interval(small, seed=3) == mean_interval(small, seed=3)


def test_constant_values_and_bad_inputs():
    assert mean_interval(torch.full((8,), 0.25)) == (0.25, 0.25)
    # Equal up to rounding (a mean over factors in SIMD lanes): a point, not BCa's NaN.
    rounded = torch.full((40,), -0.26975, dtype=torch.float64)
    rounded[:10] = float(np.nextafter(-0.26975, -1.0))  # one unit in the last place apart
    low, high = mean_interval(rounded)
    assert low == pytest.approx(-0.26975) and high == pytest.approx(-0.26975)
    with pytest.raises(RCDMError, match="at least 2"):
        mean_interval(torch.tensor([1.0]))
    with pytest.raises(RCDMError, match="NaN"):
        mean_interval(torch.tensor([1.0, float("nan")]))
