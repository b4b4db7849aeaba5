"""The EMA used for sampling: a warm-up, checked against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_lab.training.ema import make_ema


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _ema_after(weights: list[float], rate: float) -> float:
    model = _scalar_model(0.0)
    ema = make_ema(model, rate)
    for value in weights:
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
    return float(ema.module.weight)


def test_warm_up_by_hand():
    # Update 1 copies the weights; update n+1 uses decay min(rate, (1 + n) / (10 + n)): 2/11, then 3/12.
    assert _ema_after([1.0], 0.9999) == pytest.approx(1.0)
    assert _ema_after([1.0, 2.0], 0.9999) == pytest.approx(2 / 11 * 1 + 9 / 11 * 2)
    assert _ema_after([1.0, 2.0, 4.0], 0.9999) == pytest.approx(3 / 12 * (20 / 11) + 9 / 12 * 4)
    # A low rate caps the warm-up: 2/11 < 0.2 is used, then the rate itself (3/12 > 0.2).
    assert _ema_after([1.0, 2.0, 4.0], 0.2) == pytest.approx(0.2 * (2 / 11 * 1 + 9 / 11 * 2) + 0.8 * 4)


def test_the_first_weights_are_forgotten():
    # Without warm-up, 0.999 ** 2000 = 13.5 % of the EMA would still be step 1's weights after 2000 steps.
    share_of_first = _ema_after([1.0] + [0.0] * 1999, 0.999)
    assert 0 < share_of_first < 1e-3
    # Once warmed up (0.99 from the 891st update on), an update moves the EMA by (1 - rate) of the gap.
    assert _ema_after([0.0] * 1000 + [1.0], 0.99) == pytest.approx(0.01, rel=1e-6)


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_ema(_scalar_model(0.0), 1.0)
