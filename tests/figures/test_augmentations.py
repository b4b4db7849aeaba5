from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import augmentations

SETTINGS = {"image_index": 1, "samples_per_image": 2, "transforms": list(augmentations.TRANSFORMS),
            "shift": 0.25, "shift_padding": "edge", "zoom_out": 0.5, "zoom_out_padding": "zero", "zoom_in": 0.5,
            "brightness": 1.2, "contrast": 0.8, "saturation": 1.6, "hue": 0.1}


@pytest.fixture
def settings(settings_for):
    """settings(**overrides): SETTINGS over the shipped conf/figure/augmentations.yaml, as rcdm-figure builds them."""
    return lambda **overrides: settings_for("augmentations", **{**SETTINGS, **overrides})


def square(side: int, size: int = 16) -> torch.Tensor:
    """A (1, 3, size, size) black image with a white centred square."""
    image = torch.zeros(1, 3, size, size)
    start = (size - side) // 2
    image[..., start:start + side, start:start + side] = 1
    return image


def test_vertical_shift_moves_content_down_by_the_fraction_of_the_height():
    image = torch.zeros(1, 3, 16, 16)
    image[..., 0, :] = 0.5   # top edge row
    image[..., 2, :] = 1.0
    shifted = augmentations.vertical_shift(image, 0.25, padding="zero")
    assert shifted.shape == image.shape
    assert torch.equal(shifted[..., 6, :], image[..., 2, :]) and shifted[..., :4, :].eq(0).all()
    edge = augmentations.vertical_shift(image, 0.25, padding="edge")
    assert edge[..., :5, :].eq(0.5).all() and torch.equal(edge[..., 6, :], image[..., 2, :])
    assert torch.equal(augmentations.vertical_shift(image, -0.125, padding="zero")[..., 0, :], image[..., 2, :])


def test_zooms_keep_the_size_and_rescale_a_centred_square():
    image = square(8)
    bigger = augmentations.zoom_in(image, 0.5)
    smaller = augmentations.zoom_out(image, 0.5, padding="zero")
    assert bigger.shape == smaller.shape == image.shape
    assert (bigger[0, 0] > 0.5).sum() > 4 * (image[0, 0] > 0.5).sum() * 0.9   # twice the side
    assert (smaller[0, 0] > 0.5).sum() < (image[0, 0] > 0.5).sum() / 2
    assert smaller[..., 0, :].eq(0).all() and smaller[..., 8, 8].gt(0.5).all()   # padded border, centred content
    assert augmentations.zoom_out(image, 0.5, padding="edge")[..., 0, :].eq(0).all()   # the edge is black here
    assert torch.equal(augmentations.zoom_out(image, 1.0), image)


def test_grayscale_and_fixed_colour_jitter():
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gray = augmentations.grayscale(image)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    jittered = augmentations.color_jitter(image, 1.2, 0.8, 1.6, 0.1)
    assert torch.equal(jittered, augmentations.color_jitter(image, 1.2, 0.8, 1.6, 0.1))   # not random
    assert not torch.allclose(jittered, image) and jittered.min() >= 0 and jittered.max() <= 1
    torch.testing.assert_close(augmentations.color_jitter(image), image, atol=1e-5, rtol=0)


def test_augmentations_figure_distances_and_shared_noise(figure_ctx, tiny_run, monkeypatch, settings):
    ctx = replace(figure_ctx, runs=[tiny_run, tiny_run], labels=["a", "b"])
    noises = []
    original = ctx.sample

    def spy(h, k, run=None, noise=None):
        noises.append(noise)
        return original(h, k, run=run, noise=noise)

    monkeypatch.setattr(ctx, "sample", spy)
    result = augmentations.make(ctx, settings())
    rows = ["original", *augmentations.TRANSFORMS]
    assert result["transforms"] == rows and list(result["models"]) == ["a", "b"]
    per_row = result["models"]["a"]["transforms"]
    assert list(per_row) == rows and per_row["original"]["sq_l2_to_original"] == 0.0
    assert all(per_row[name]["sq_l2_to_original"] > 0 for name in augmentations.TRANSFORMS)
    assert result["models"]["a"] == result["models"]["b"]
    # Every row of every model starts from the same k = 2 noise images.
    assert len(noises) == 2 and torch.equal(noises[0], noises[1])
    rows_noise = noises[0].view(len(rows), 2, *noises[0].shape[1:])
    assert all(torch.equal(rows_noise[0], rows_noise[i]) for i in range(len(rows)))


def test_augmentations_settings_are_checked(figure_ctx, settings):
    with pytest.raises(RCDMError, match="figure.transforms"):
        augmentations.make(figure_ctx, settings(transforms=["rotate"]))
    with pytest.raises(RCDMError, match="padding"):
        augmentations.make(figure_ctx, settings(zoom_out_padding="mirror"))
    with pytest.raises(RCDMError, match="zoom_out"):
        augmentations.make(figure_ctx, settings(zoom_out=1.5))
    result = augmentations.make(figure_ctx, settings(transforms=["grayscale"]))   # one model works too
    assert list(result["models"]["tiny"]["transforms"]) == ["original", "grayscale"]
