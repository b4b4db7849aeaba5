"""rcdm-pretrain as a Hydra app: every method x augment composes; tiny runs of every method; resume; errors.

Also the other end: `encoder=local encoder.weights=PATH` composing in rcdm-train and rcdm-probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rcdm_lab.cli.pretrain import pretrain, settings_of
from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.export import read_encoder_file
from rcdm_testing import REPO, compose_config, compose_train

METHODS = ("supervised", "simclr", "vicreg", "barlow")
AUGMENTS = ("simclr", "crop_only", "no_colour")


def tiny(tmp: Path, *extra: str) -> list[str]:
    """A run of a few steps: 32 shapes at 16 px, a 4/8/8-channel trunk, 2 epochs of 2 batches."""
    return ["data.dataset.num_train=32", "data.dataset.num_val=16", "image_size=16", "network.widths=[4,8,8]",
            "method.projector.hidden=16", "method.projector.dim=8", "epochs=2", "batch_size=16", "num_workers=0",
            "probe.steps=20", "probe.factors=[shape,object_colour]", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", f"output_dir={tmp}", *extra]


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_augment_composes(tmp_path, method, augment):
    cfg = compose_config("pretrain", f"method={method}", f"augment={augment}", f"output_dir={tmp_path}")
    settings = settings_of(cfg)
    assert settings.method.name == method and settings.augment.name == augment
    assert cfg.name == f"{method}-{augment}"
    assert settings.method.views == (1 if method == "supervised" else 2)
    head = settings.method.projector
    assert (head.kind, head.dim) == (("bn_mlp", 512) if method in ("vicreg", "barlow") else ("mlp", 128))
    assert cfg.trainer.max_epochs == cfg.epochs and cfg.trainer.max_steps == -1 and cfg.trainer.max_time is None
    assert cfg.trainer.accelerator == "cpu" and cfg.logger._target_.endswith("CSVLogger")
    assert cfg.data.dataset._target_ == "rcdm_lab.data.ShapesDataset"


def test_the_defaults():
    cfg = compose_config("pretrain")
    assert cfg.name == "simclr-simclr" and cfg.image_size == 32 and cfg.seed == 0
    assert list(cfg.network.widths) == [16, 32, 64] and cfg.network.blocks == 1
    assert cfg.data.dataset.num_train == 6000 and cfg.data.dataset.num_val == 1000
    assert cfg.method.temperature == 0.2 and cfg.epochs == 10 and cfg.batch_size == 128
    supervised = compose_config("pretrain", "method=supervised", "name_suffix=-w8")
    # The supervised method brings its own default augmentations (crop + flip), recorded in the run's name...
    assert supervised.method.target == "shape" and supervised.name == "supervised-crop_only-w8"
    assert supervised.augment.jitter_p == 0.0 and supervised.augment.grayscale_p == 0.0
    assert (supervised.epochs, supervised.batch_size) == (20, 128)  # one view per image: 2x the epochs
    # ... and an explicit augment= still wins over that default, in either order on the command line.
    for overrides in (("method=supervised", "augment=simclr"), ("augment=simclr", "method=supervised")):
        chosen = compose_config("pretrain", *overrides)
        assert chosen.name == "supervised-simclr" and chosen.augment.jitter_p == 0.8
    assert compose_config("pretrain", "method=vicreg").augment.name == "simclr"
    assert compose_config("pretrain", "method=supervised", "epochs=3").epochs == 3
    vicreg = compose_config("pretrain", "method=vicreg").method
    assert (vicreg.invariance, vicreg.variance, vicreg.covariance) == (25.0, 25.0, 1.0)


@pytest.mark.parametrize(("override", "message"), [
    ("save_epochs=[0]", "save_epochs=.0. is not allowed"),
    ("+network.depth=3", "network has no setting.s. depth"),
    ("+method.lambd=0.1", "method=simclr has no setting.s. lambd"),
    ("augment.crop_scale=[0.9,0.1]", "augment.crop_scale"),
    ("epochs=0", "epochs=0 is not allowed"),
    ("trainer=ddp", "rcdm-pretrain trains in one process"),
])
def test_bad_settings_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(RCDMError, match=message):
        pretrain(compose_config("pretrain", *tiny(tmp_path), override))
    assert not (tmp_path / "checkpoints").exists()


def test_an_unknown_target_names_the_datasets_class_factors(tmp_path):
    cfg = compose_config("pretrain", *tiny(tmp_path), "method=supervised", "method.target=colour")
    with pytest.raises(RCDMError, match="its class factors: shape, object_colour, background_colour, texture"):
        pretrain(cfg)


def _weights_equal(a: Path, b: Path) -> bool:
    first, second = read_encoder_file(a).payload, read_encoder_file(b).payload
    return all(torch.equal(first[part][key], second[part][key]) for part in ("trunk", "head") for key in first[part])


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_through_the_app(tmp_path, method):
    path = pretrain(compose_config("pretrain", *tiny(tmp_path), f"method={method}", "save_epochs=[1]"))
    assert path == tmp_path / "encoder.pt" and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    record = read_encoder_file(path)
    assert record.method == method and record.epoch == 2 and record.payload["step"] == 4
    assert read_encoder_file(tmp_path / "encoder-epoch1.pt").epoch == 1
    assert not _weights_equal(path, tmp_path / "encoder-epoch1.pt")
    target = record.payload["target"]
    assert (target["factor"], len(target["class_names"])) == ("shape", 8) if method == "supervised" else target is None
    report = json.loads((tmp_path / "probe.json").read_text())
    assert {(row["layer"], row["factor"]) for row in report["rows"]} == {
        (layer, factor) for layer in ("backbone", "head") for factor in ("shape", "object_colour")}
    assert report["method"]["name"] == method and report["epochs"] == 2
    assert all(0 <= row["val_acc"] <= 1 and 0 < row["chance"] < 1 for row in report["rows"])
    assert json.loads((tmp_path / "timing.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = pretrain(compose_config("pretrain", *tiny(tmp_path / "whole"), "probe.enabled=false"))
    pretrain(compose_config("pretrain", *tiny(tmp_path / "split"), "epochs=1", "probe.enabled=false"))
    with pytest.raises(RCDMError, match="already holds a run.*ckpt_path=last"):
        pretrain(compose_config("pretrain", *tiny(tmp_path / "split"), "probe.enabled=false"))
    resumed = pretrain(compose_config("pretrain", *tiny(tmp_path / "split"), "ckpt_path=last",
                                      "probe.enabled=false"))
    assert read_encoder_file(resumed).epoch == 2 and _weights_equal(whole, resumed)


@pytest.mark.slow
def test_the_console_script_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-m", "rcdm_lab.cli.pretrain", *tiny(tmp_path), f"hydra.run.dir={tmp_path}",
                           "method=vicreg", "epochs=1"], env=env, text=True, capture_output=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "backbone" in done.stdout and "object_colour" in done.stdout and (tmp_path / "encoder.pt").is_file()


def test_a_user_error_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    from rcdm_lab.cli.pretrain import main

    monkeypatch.setattr(sys, "argv", ["rcdm-pretrain", *tiny(tmp_path), f"hydra.run.dir={tmp_path}",
                                      "method=supervised", "method.target=colour"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: method.target='colour' is not a labelled class factor")


# ------------------------------------------------------------------------------------------ encoder=local elsewhere
def test_local_composes_in_train_and_probe_with_the_files_input_size():
    for config_name in ("train", "probe"):
        cfg = compose_config(config_name, "encoder=local", "layer=head", "encoder.weights=/x/encoder.pt")
        encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
        assert encoder == {"name": "local", "layer": "head", "weights": "/x/encoder.pt", "input_size": None,
                           "input_norm": "native", "standardize": False}
    assert compose_config("train", "encoder=resnet18").encoder.input_size == 224  # other encoders keep 224


def test_rcdm_train_without_weights_names_the_fix(tmp_path):
    from rcdm_lab.cli.train import build

    cfg = compose_train(tmp_path, "encoder=local", "encoder.input_size=null")
    with pytest.raises(RCDMError, match="encoder=local needs encoder.weights=PATH to an rcdm-pretrain encoder.pt"):
        build(cfg)


def test_rcdm_train_builds_on_a_local_encoder(tmp_path, tiny_encoder_file):
    from rcdm_lab.cli.train import build

    path, _ = tiny_encoder_file
    module, datamodule, _ = build(compose_train(tmp_path, "encoder=local", f"encoder.weights={path}", "layer=head",
                                                "encoder.input_size=null"))
    assert module.encoder.identity()["name"] == "local" and module.encoder.dim == 6
    assert module.encoder.input_size == 16


def _probe(tmp_path: Path, path: Path, *extra: str) -> dict:
    from rcdm_lab.cli.probe import probe

    return probe(compose_config("probe", "encoder=local", f"encoder.weights={path}", "data.dataset.num_train=24",
                                "data.dataset.num_val=8", f"data.cache_dir={tmp_path / 'cache'}", "probe.steps=20",
                                f"output_dir={tmp_path / 'probe'}", *extra))


def test_rcdm_probe_runs_on_a_local_encoder(tmp_path, tiny_encoder_file):
    report = _probe(tmp_path, tiny_encoder_file[0], "layer=head", "encoder.input_size=16")
    assert report["encoder"]["name"] == "local" and report["encoder"]["dim"] == 6
    assert {row["factor"] for row in report["factors"]} >= {"shape", "object_colour"}


def test_rcdm_probe_takes_the_files_input_size(tmp_path, tiny_encoder_file):
    assert _probe(tmp_path, tiny_encoder_file[0])["encoder"]["input_size"] == 16
