"""The augment= options: what each pipeline changes, validated settings, per-image and reproducible draws."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.augment import AugmentSettings, TwoViews
from rcdm_testing import compose_config

AUGMENTS = ("simclr", "crop_only", "no_colour")


def _settings(name: str) -> AugmentSettings:
    return AugmentSettings.from_config(compose_config("pretrain", f"augment={name}").augment)


def test_the_options_compose_to_their_pipelines():
    simclr, crop_only, no_colour = (_settings(name) for name in AUGMENTS)
    assert simclr == AugmentSettings()  # the documented SimCLR defaults
    assert simclr.jitter == (0.4, 0.4, 0.4, 0.1) and simclr.jitter_p == 0.8 and simclr.grayscale_p == 0.2
    assert simclr.crop_scale == (0.2, 1.0) and simclr.flip_p == 0.5
    for colourless in (crop_only, no_colour):
        assert colourless.jitter_p == 0 and colourless.grayscale_p == 0 and colourless.crop_scale == (0.2, 1.0)
        names = [type(step).__name__ for step in colourless.pipeline(16).transforms]
        assert names == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert [type(step).__name__ for step in simclr.pipeline(16).transforms] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale"]


def test_colourless_options_keep_a_flat_colour_and_simclr_changes_it():
    flat = torch.empty(3, 16, 16)
    flat[0], flat[1], flat[2] = 0.8, 0.3, 0.1
    for name in ("crop_only", "no_colour"):
        views = TwoViews(_settings(name), 16, views=2, seed=0)
        for index in range(10):
            assert torch.allclose(views(flat, 0, index), flat.expand(2, -1, -1, -1), atol=1e-5)
    simclr = TwoViews(_settings("simclr"), 16, views=2, seed=0)
    changed = sum(not torch.allclose(simclr(flat, 0, i), flat.expand(2, -1, -1, -1), atol=1e-3) for i in range(10))
    assert changed >= 8  # jitter (p 0.8) or grayscale (p 0.2) in nearly every pair


def test_views_are_drawn_per_image_and_reproducibly():
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = TwoViews(AugmentSettings(), 16, views=2, seed=3)
    state = torch.get_rng_state()
    first = views(image, epoch=1, index=5)
    assert torch.equal(torch.get_rng_state(), state), "augmenting must not move the global RNG"
    assert first.shape == (2, 3, 16, 16) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, TwoViews(AugmentSettings(), 16, views=2, seed=3)(image, epoch=1, index=5))
    assert not torch.equal(first[0], first[1]), "the two views of an image differ"
    for other in (views(image, epoch=2, index=5), views(image, epoch=1, index=6),
                  TwoViews(AugmentSettings(), 16, views=2, seed=4)(image, epoch=1, index=5)):
        assert not torch.equal(first, other)


@pytest.mark.parametrize(("override", "message"), [
    ({"crop_scale": [0.8, 0.2]}, "augment.crop_scale"),
    ({"crop_scale": [0.0, 1.0]}, "augment.crop_scale"),
    ({"jitter": [0.4, 0.4, 0.4]}, "augment.jitter"),
    ({"jitter": [0.4, 0.4, 0.4, 0.7]}, "hue <= 0.5"),
    ({"jitter_p": 1.5}, "augment.jitter_p"),
    ({"grayscale_p": "often"}, "augment.grayscale_p"),
    ({"blur": 0.5}, "unknown augment setting(s) blur"),
])
def test_bad_settings_name_the_setting(override, message):
    with pytest.raises(RCDMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AugmentSettings.from_config({**AugmentSettings().record(), **override})


def test_the_record_round_trips():
    settings = _settings("no_colour")
    assert AugmentSettings.from_config(settings.record()) == settings
