from __future__ import annotations

import json

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.distances import (
    SINGLE_AUGMENTATIONS,
    augmentation_views,
    multicrop_views,
    single_augmentations,
    squared_distances_to,
    summarize,
)
from rcdm_lab.metrics.knn import pairwise_distances


def _images(batch: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_flip_mirrors_and_is_an_involution():
    images = _images()
    flip = single_augmentations()["flip"]
    flipped = flip(images)
    assert torch.equal(flipped[..., 0], images[..., -1]) and torch.equal(flipped[..., 3], images[..., -4])
    assert torch.equal(flip(flipped), images)


def test_grayscale_keeps_three_equal_channels():
    gray = single_augmentations()["grayscale"](_images())
    assert gray.shape == (3, 3, 16, 16)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_center_crop_keeps_constants_and_enlarges_a_centred_square():
    crop = single_augmentations(crop_fraction=0.5)["center_crop"]
    constant = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(crop(constant), constant)
    square = torch.zeros(1, 3, 32, 32)
    square[..., 12:20, 12:20] = 1.0                     # 8 x 8 in the middle -> 16 x 16 after a 2x zoom
    zoomed = crop(square)
    assert zoomed.shape == square.shape
    bright = (zoomed[0, 0] > 0.5).sum().item()
    assert bright == pytest.approx(16 * 16, rel=0.15)
    assert zoomed[0, :, 16, 16].eq(1).all() and zoomed[0, :, 0, 0].eq(0).all()


def test_solarize_inverts_bright_pixels_only_and_jitter_is_seeded_per_image():
    augment = single_augmentations()
    pixels = torch.tensor([0.2, 0.49, 0.5, 0.9]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    torch.testing.assert_close(augment["solarize"](pixels)[0, 0, 0], torch.tensor([0.2, 0.49, 0.5, 0.1]))
    images = _images(batch=1).expand(2, 3, 16, 16)          # twice the same image
    state = torch.random.get_rng_state()
    jittered = augment["color_jitter"](images)
    assert torch.equal(torch.random.get_rng_state(), state)          # the caller's RNG is untouched
    assert torch.equal(jittered, augment["color_jitter"](images))    # a pure function of its input...
    assert not torch.equal(jittered[0], jittered[1])                  # ...with independent draws per image
    assert not torch.equal(jittered, single_augmentations(seed=1)["color_jitter"](images))
    assert jittered.min() >= 0 and jittered.max() <= 1


def test_multicrop_views_are_reproducible_independent_and_in_range():
    images = _images(batch=2, size=24)
    views = multicrop_views(images, num_views=4, generator_seed=3)
    assert views.shape == (2, 4, 3, 24, 24)
    assert views.min() >= 0 and views.max() <= 1
    assert torch.equal(views, multicrop_views(images, num_views=4, generator_seed=3))
    assert not torch.equal(views, multicrop_views(images, num_views=4, generator_seed=4))
    for b in range(2):
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.equal(views[b, i], views[b, j])
    # The same image twice in a batch still gets different views: parameters are drawn per image, not per batch.
    twins = multicrop_views(images[:1].expand(2, 3, 24, 24), num_views=1)
    assert not torch.equal(twins[0], twins[1])


def test_augmentation_views_groups_and_parameter_routing():
    images = _images(batch=2)
    views = augmentation_views(images, seed=0, num_multicrop=3, crop_fraction=0.5, scale=(0.14, 1.0))
    assert list(views) == [*SINGLE_AUGMENTATIONS, "multicrop"]
    for name, group in views.items():
        assert group.shape == (2, 3 if name == "multicrop" else 1, 3, 16, 16), name
    assert torch.equal(views["flip"][:, 0], images.flip(-1))
    assert "multicrop" not in augmentation_views(images, num_multicrop=0)
    with pytest.raises(RCDMError, match="crop_fraction"):
        augmentation_views(images, crop_fracton=0.5)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(3, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(2, 1, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(0, 3, 16, 16), "empty"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "255"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, r"\(x \+ 1\) / 2"),
    ],
)
def test_bad_images_are_explained(images, match):
    with pytest.raises(RCDMError, match=match):
        single_augmentations()["flip"](images)
    with pytest.raises(RCDMError, match=match):
        multicrop_views(images, num_views=2)


def test_squared_distances_by_hand_and_exact_for_identical_references():
    cond = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    refs = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 3.0]]])
    distances = squared_distances_to(cond, refs)
    assert distances.dtype == torch.float64
    assert distances.tolist() == [[25.0, 0.0], [0.0, 5.0]]
    # Agrees with the all-pairs implementation on its diagonal blocks, but gives an exact 0 for identical points.
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(4, 32, generator=generator) * 100
    refs = cond[:, None] + torch.randn(4, 3, 32, generator=generator)
    refs[:, 0] = cond
    blocks = pairwise_distances(cond, refs.reshape(-1, 32)).view(4, 4, 3)[torch.arange(4), torch.arange(4)]
    distances = squared_distances_to(cond, refs)
    torch.testing.assert_close(distances, blocks, rtol=1e-9, atol=1e-6)
    assert distances[:, 0].eq(0).all()


def test_squared_distances_reject_mismatched_shapes():
    with pytest.raises(RCDMError, match=r"\(M, n, D\)"):
        squared_distances_to(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(RCDMError, match="disagree"):
        squared_distances_to(torch.zeros(2, 4), torch.zeros(3, 1, 4))
    with pytest.raises(RCDMError, match="disagree"):
        squared_distances_to(torch.zeros(2, 4), torch.zeros(2, 1, 5))


def test_summarize_known_values_in_insertion_order():
    summary = summarize({"z": [1.0, 2.0, 3.0, 10.0], "a": torch.tensor([[4.0], [4.0], [1.0]]), "one": [7.0]})
    assert list(summary) == ["z", "a", "one"]
    assert summary["z"] == pytest.approx({"count": 4, "mean": 4.0, "median": 2.5, "std": (12.5) ** 0.5,
                                          "min": 1.0, "max": 10.0})
    assert summary["a"]["median"] == 4.0 and summary["a"]["count"] == 3
    assert summary["one"]["std"] == 0.0
    json.dumps(summary, allow_nan=False)                  # plain Python numbers only
    with pytest.raises(RCDMError, match="'empty'"):
        summarize({"empty": []})
    with pytest.raises(ValueError, match="non-finite"):
        summarize({"bad": [1.0, float("nan")]})
