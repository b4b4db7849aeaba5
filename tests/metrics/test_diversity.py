from __future__ import annotations

import pytest
import torch

from rcdm_lab.metrics.diversity import mean_pairwise_distance, sample_diversity


def test_mean_pairwise_distance_by_hand():
    # Group 1 on a line at 0, 1, 3: squared distances 1, 9, 4 -> mean 14/3; group 2 all at 5 -> 0.
    points = torch.tensor([[0.0], [1.0], [3.0], [5.0], [5.0], [5.0]])
    assert mean_pairwise_distance(points, 3) == pytest.approx((14 / 3 + 0) / 2)
    assert mean_pairwise_distance(points, 1) == 0.0   # one sample per conditioning: nothing to compare


def test_sample_diversity_is_per_pixel_in_image_space_and_raw_in_representation_space():
    samples = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 0.5)])   # one conditioning, two samples
    reps = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert sample_diversity(samples, reps, 2) == pytest.approx(
        {"pixel_mean_sq_diff": 0.25, "representation_mean_pairwise_sq_l2": 25.0})
