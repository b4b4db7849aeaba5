"""FGSM flip rates (claim iii of the backbone-vs-head study) and the verdict rule every claim is judged by."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_lab.encoders.frozen import FrozenEncoder
from rcdm_lab.metrics.intervals import verdict
from rcdm_lab.metrics.probe import LinearProbe
from rcdm_lab.metrics.robustness import attack


def _mean_colour_encoder() -> FrozenEncoder:
    """h = the image's mean red and mean green: a linear encoder whose FGSM effect is known in closed form."""

    class MeanColour(nn.Module):
        def forward(self, pixels):
            return pixels[:, :2].mean(dim=(2, 3))

    return FrozenEncoder(MeanColour(), name="mean", layer="backbone", dim=2, input_size=4, input_norm="native",
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights_digest="x")


def _red_vs_green_probe() -> LinearProbe:
    probe = LinearProbe(torch.zeros(2), torch.ones(2), num_classes=2)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        probe.linear.bias.zero_()
    return probe


def test_fgsm_flips_exactly_the_images_whose_margin_is_below_twice_eps():
    # Image i: red = 0.5 + m_i, green = 0.5 - m_i, so the probe says "red" with margin 2 m_i in (red - green);
    # FGSM moves red down and green up by eps everywhere, so the prediction flips exactly when eps > m_i.
    margins = torch.tensor([0.01, 0.03, 0.05, 0.2])
    images = torch.zeros(4, 3, 4, 4)
    images[:, 0] = (0.5 + margins)[:, None, None]
    images[:, 1] = (0.5 - margins)[:, None, None]
    result = attack(_mean_colour_encoder(), _red_vs_green_probe(), images, [0.0, 0.02, 0.04, 0.1], batch_size=3)
    assert torch.equal(result.clean, torch.zeros(4, dtype=torch.long))
    expected = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(result.flipped, expected)
    assert torch.equal(result.attacked[0], images)  # eps = 0 leaves every image as it was


@pytest.mark.parametrize(("interval", "sign", "expected"), [
    ((0.01, 0.2), 1, "reproduced"),
    ((-0.2, -0.01), 1, "not reproduced"),
    ((-0.01, 0.2), 1, "inconclusive"),
    ((-0.2, -0.01), -1, "reproduced"),
    ((0.0, 0.3), 1, "inconclusive"),   # an interval touching 0 does not exclude it
])
def test_verdict_reads_the_interval_of_the_claimed_difference(interval, sign, expected):
    assert verdict(interval, sign) == expected


def test_verdict_refuses_a_direction_that_is_not_a_sign():
    with pytest.raises(ValueError, match="expected_sign"):
        verdict((0.1, 0.2), 0)
