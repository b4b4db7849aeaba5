"""Linear probes: they learn what is linearly there, nothing more, and work as differentiable modules on raw h."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.probe import (
    LinearProbe,
    bin_values,
    load_probes,
    quantile_bins,
    save_probes,
    train_linear_probe,
)


def _separable(n: int, dim: int = 64, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated class clusters (linearly separable with a margin), on wildly different per-dim scales and
    an offset, so the probe's own standardisation matters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=g)
    z = centres[y] + 0.3 * torch.randn(n, dim, generator=g)
    return z * torch.linspace(0.01, 50, dim) + 7.0, y


def test_probe_separates_linearly_separable_data():
    h_train, y_train = _separable(2000, seed=0)
    h_val, y_val = _separable(500, seed=1)
    probe, metrics = train_linear_probe(h_train, y_train, h_val, y_val, num_classes=5, steps=300)
    assert metrics["train_acc"] == 1.0
    assert metrics["val_acc"] > 0.99
    assert metrics["chance"] < 0.5


def test_probe_stays_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    h_train, h_val = torch.randn(1000, 32, generator=g), torch.randn(2000, 32, generator=g)
    y_train, y_val = torch.randint(0, 4, (1000,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    _, metrics = train_linear_probe(h_train, y_train, h_val, y_val, num_classes=4, steps=200)
    assert abs(metrics["val_acc"] - 0.25) < 0.05


def test_probe_on_raw_h_is_standardise_then_linear():
    h, y = _separable(300)
    probe, _ = train_linear_probe(h, y, num_classes=5, steps=50)
    mean, std = h.double().mean(0), h.double().std(0)
    manual = F.linear(((h.double() - mean) / std).float(), probe.linear.weight, probe.linear.bias)
    torch.testing.assert_close(probe(h), manual, rtol=1e-4, atol=1e-4)


def test_constant_dimensions_pass_through_unscaled():
    h, y = _separable(200, dim=8)
    h[:, 3] = 0.0  # e.g. a dead ReLU feature
    probe, _ = train_linear_probe(h, y, num_classes=5, steps=20)
    assert probe.std[3] == 1.0
    assert torch.isfinite(probe(h)).all()


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    h, y = _separable(300)
    identity = {"name": "toy", "dim": 64}
    probe, _ = train_linear_probe(h, y, num_classes=5, class_names=list("abcde"), factor="shape", steps=30,
                                  encoder_identity=identity)
    probe.save(tmp_path / "one.pt")
    loaded = LinearProbe.load(tmp_path / "one.pt")
    assert torch.equal(loaded(h), probe(h))
    assert loaded.class_names == list("abcde") and loaded.factor == "shape" and loaded.encoder_identity == identity

    other, _ = train_linear_probe(h, (y + 1) % 5, num_classes=5, factor="texture", steps=10)
    save_probes(tmp_path / "two.pt", {"shape": probe, "texture": other}, identity)
    assert sorted(load_probes(tmp_path / "two.pt")) == ["shape", "texture"]
    assert torch.equal(LinearProbe.load(tmp_path / "two.pt", factor="texture")(h), other(h))
    with pytest.raises(RCDMError, match="factor="):
        LinearProbe.load(tmp_path / "two.pt")
    with pytest.raises(RCDMError, match="rcdm-probe"):
        LinearProbe.load(tmp_path / "missing.pt")


def test_gradient_flows_to_raw_h():
    h, y = _separable(100)
    probe, _ = train_linear_probe(h, y, num_classes=5, steps=10)
    h = h[:4].clone().requires_grad_(True)
    F.cross_entropy(probe(h), y[:4]).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_quantile_bins_are_balanced_and_cover_new_values():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    edges = quantile_bins(values, 4)
    counts = torch.bincount(bin_values(values, edges), minlength=4)
    assert counts.min() >= 240 and counts.max() <= 260
    assert bin_values(torch.tensor([-5.0, 5.0]), edges).tolist() == [0, 3]


def test_tiny_scale_representations_are_still_standardised():
    """Random-init MobileNetV2 gives h ~1e-9: informative variation must not be mistaken for constants."""
    h, y = _separable(500)
    _, metrics = train_linear_probe(h * 1e-11, y, num_classes=5, steps=100)
    assert metrics["train_acc"] == 1.0
