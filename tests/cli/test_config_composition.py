"""Each config group does what its name says, whatever else is selected."""

from __future__ import annotations

import pytest

from rcdm_lab.cli.common import spell_resolution_choices
from rcdm_testing import compose_config


def _compose(*overrides: str, config_name: str = "train"):
    return compose_config(config_name, *overrides)


@pytest.mark.parametrize(("resolution", "channel_mult", "attention"), [
    ("16px", [1, 2], [8]),
    ("32px", [1, 2, 2], [8]),
    ("64px", [1, 2, 3, 4], [32, 16, 8]),
    ("128px", [1, 1, 2, 3, 4], [32, 16, 8]),
    ("256px", [1, 1, 2, 2, 4, 4], [32, 16, 8]),
])
@pytest.mark.parametrize("model", ["adm", "adm_official"])
def test_resolution_sets_the_unet_layout_for_any_model(resolution, channel_mult, attention, model):
    cfg = _compose(f"resolution={resolution}", f"model={model}")
    assert cfg.resolution == int(resolution.removesuffix("px"))
    assert list(cfg.model.unet.channel_mult) == channel_mult
    assert list(cfg.model.unet.attention_resolutions) == attention


def test_layer_and_experiment_override_the_defaults():
    cfg = _compose("layer=head")
    assert cfg.encoder.layer == "head" and cfg.name == "mobilenet_v2-head-32px"
    demo = _compose(config_name="demo")
    assert demo.name == "demo" and demo.ckpt_path == "last" and demo.model.cond_drop == 0.15


def test_plain_resolution_numbers_are_spelled_as_group_options():
    assert spell_resolution_choices(["resolution=64", "-m", "resolution=32,64", "model=adm", "resolution=64px"]) == [
        "resolution=64px", "-m", "resolution=32px,64px", "model=adm", "resolution=64px"]
