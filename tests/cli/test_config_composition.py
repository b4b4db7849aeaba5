"""Each config group does what its name says, whatever else is selected."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from rcdm_lab.cli.common import CONF_DIR, spell_resolution_choices
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


# Resolved values the configs gave before they were rewritten as deltas of base files (captured from that tree, with
# `_target_` dropped from encoder and diffusion, where nothing instantiated it): users' overrides must keep meaning
# exactly this.
_ENCODER = {"name": "mobilenet_v2", "layer": "backbone", "weights": "default", "input_size": 224,
            "input_norm": "native", "standardize": False}
_TRAINER = {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1, "precision": "auto",
            "max_steps": 20000, "max_time": None, "gradient_clip_val": 1.0, "log_every_n_steps": 10,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_model_summary": False,
            "enable_progress_bar": True}
_DIFFUSION = {"schedule": "linear", "num_timesteps": 1000, "learn_sigma": True}
_DATA = {"_target_": "rcdm_lab.data.RCDMDataModule", "resolution": 32, "batch_size": 32, "num_workers": 0,
         "flip": True, "cache": True, "cache_dir": ".cache/rcdm_lab", "cache_dtype": "float32", "source_size": None,
         "dataset": {"_target_": "rcdm_lab.data.ShapesDataset", "_partial_": True, "num_train": 10000,
                     "num_val": 1000, "seed": 0}}
_UNET_64PX = {"_target_": "rcdm_lab.models.UNetModel", "model_channels": 64, "num_res_blocks": 2,
              "channel_mult": [1, 2, 3, 4], "attention_resolutions": [32, 16, 8], "dropout": 0.1, "num_heads": 4,
              "num_head_channels": -1, "use_scale_shift_norm": True, "resblock_updown": True,
              "use_new_attention_order": False, "cond_mode": "emb"}


def _resolved(cfg, group: str):
    return OmegaConf.to_container(cfg[group], resolve=True)


@pytest.mark.parametrize(("overrides", "group", "expected"), [
    ([], "encoder", _ENCODER),
    (["encoder=resnet18"], "encoder", {**_ENCODER, "name": "resnet18"}),
    (["encoder=resnet50", "encoder.weights=random", "layer=head"], "encoder",
     {**_ENCODER, "name": "resnet50", "weights": "random", "layer": "head"}),
    (["encoder=timm"], "encoder", {**_ENCODER, "name": "timm:resnet18"}),
    ([], "trainer", _TRAINER),
    (["trainer=cpu"], "trainer", _TRAINER),
    (["trainer=gpu"], "trainer", {**_TRAINER, "accelerator": "gpu"}),
    (["trainer=ddp", "trainer.devices=2"], "trainer",
     {**_TRAINER, "accelerator": "auto", "devices": 2, "num_nodes": 1, "strategy": "ddp", "sync_batchnorm": False}),
    ([], "diffusion", _DIFFUSION),
    (["diffusion=cosine"], "diffusion", {**_DIFFUSION, "schedule": "cosine"}),
    ([], "data", _DATA),
    (["data=folder", "data.dataset.root=/images"], "data",
     {**_DATA, "num_workers": 2, "dataset": {"_target_": "rcdm_lab.data.FolderDataset", "_partial_": True,
                                             "root": "/images", "val_fraction": 0.05,
                                             "index_dir": ".cache/rcdm_lab/folder_index"}}),
    (["data=cifar10", "resolution=64px"], "data",
     {**_DATA, "num_workers": 2, "resolution": 64, "dataset": {"_target_": "rcdm_lab.data.Cifar10Dataset",
                                                               "_partial_": True, "root": "data/cifar10",
                                                               "download": True}}),
    (["resolution=64px"], "model", {"unet": _UNET_64PX}),
    (["resolution=64px", "model=adm_official"], "model",
     {"unet": {**_UNET_64PX, "model_channels": 256, "dropout": 0.0}}),
    (["resolution=64px", "model.unet.channel_mult=[1,2]"], "model", {"unet": {**_UNET_64PX, "channel_mult": [1, 2]}}),
])
def test_users_overrides_compose_to_the_values_they_always_gave(overrides, group, expected):
    resolved = _resolved(_compose(*overrides), group)
    if group == "model":
        resolved = {"unet": resolved["unet"]}  # optimizer, EMA, ... are not what these overrides touch
    assert resolved == expected


def test_plain_resolution_spelling_composes_like_the_option_name():
    (spelled,) = spell_resolution_choices(["resolution=64"])
    assert _resolved(_compose(spelled), "model") == _resolved(_compose("resolution=64px"), "model")


@pytest.mark.parametrize("order", [("model", "resolution"), ("resolution", "model")])
def test_the_unet_layout_does_not_depend_on_the_order_of_model_and_resolution(tmp_path, order):
    # A primary config of our own, so the defaults list can put the two groups in either order.
    choices = {"model": "adm", "resolution": "64px"}
    defaults = "\n".join(f"  - {group}: {choices[group]}" for group in order)
    (tmp_path / "ordered.yaml").write_text(f"defaults:\n  - _self_\n{defaults}\n"
                                           f"hydra:\n  searchpath:\n    - file://{CONF_DIR}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("ordered")
    assert _resolved(cfg, "model")["unet"] == _UNET_64PX

