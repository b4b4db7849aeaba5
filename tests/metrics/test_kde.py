from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.kde import kde_sample


@pytest.mark.parametrize("sigma", [0.01, 0.5])
def test_kernel_noise_has_the_requested_std(sigma):
    reps = torch.randn(50, 16, generator=torch.Generator().manual_seed(1)) * 3
    h, indices = kde_sample(reps, 4000, sigma=sigma, generator=torch.Generator().manual_seed(0))
    assert h.shape == (4000, 16) and h.dtype == torch.float32 and indices.shape == (4000,)
    assert indices.min() >= 0 and indices.max() < len(reps)
    noise = (h - reps[indices]).double()
    # 64 000 draws: the sample std is within ~0.3% of sigma; 5% leaves room without hiding a wrong scale.
    assert noise.std().item() == pytest.approx(sigma, rel=0.05)
    assert noise.mean().abs().item() < 0.05 * sigma
    # Every training point gets picked about equally often (uniform mixture weights 1/N).
    counts = torch.bincount(indices, minlength=len(reps))
    assert counts.min() > 0 and counts.max() < 2 * 4000 / len(reps)


def test_seeded_generator_is_deterministic_and_sigma_zero_returns_the_chosen_points():
    reps = torch.randn(20, 8, dtype=torch.float64)
    first = kde_sample(reps, 30, generator=torch.Generator().manual_seed(7))
    second = kde_sample(reps, 30, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].dtype == torch.float64
    third = kde_sample(reps, 30, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(first[0], third[0])

    exact, indices = kde_sample(reps, 30, sigma=0.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(exact, reps[indices])
    # The same seed picks the same points whatever sigma is: sigma only scales the kernel noise.
    assert torch.equal(indices, first[1])


def test_integer_reps_give_float_samples_and_unseeded_draws_work():
    h, indices = kde_sample(torch.arange(6).view(3, 2), 5)
    assert h.dtype == torch.float32 and h.shape == (5, 2) and indices.max() < 3


@pytest.mark.parametrize(
    ("reps", "num_samples", "sigma", "match"),
    [
        (torch.zeros(0, 4), 1, 0.01, "non-empty"),
        (torch.zeros(4), 1, 0.01, r"\(N, D\)"),
        (torch.zeros(3, 4), 0, 0.01, "positive integer"),
        (torch.zeros(3, 4), 2.5, 0.01, "positive integer"),
        (torch.zeros(3, 4), 1, -0.1, "sigma"),
        (torch.zeros(3, 4), 1, float("nan"), "sigma"),
    ],
)
def test_bad_arguments_raise(reps, num_samples, sigma, match):
    with pytest.raises(RCDMError, match=match):
        kde_sample(reps, num_samples, sigma=sigma)
