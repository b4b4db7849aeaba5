"""Bad settings stop a command before any work, with one line naming the setting and what it accepts."""

from __future__ import annotations

import pytest

from rcdm_lab.cli.figure import checked_settings
from rcdm_lab.cli.validation import validate_eval, validate_probe, validate_sample, validate_train
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import FIGURE_KINDS
from rcdm_lab.settings import Rule, check, integer, number, one_of
from rcdm_testing import compose_config, run_cli

VALIDATORS = {"train": validate_train, "demo": validate_train, "sample": validate_sample, "eval": validate_eval,
              "figure": checked_settings, "probe": validate_probe}


def test_rules_name_the_setting_and_what_it_accepts():
    cfg = compose_config("sample", "ckpt=a.ckpt", "images=b", "n=-3")
    with pytest.raises(RCDMError, match=r"^n=-3 is not allowed: use an integer >= 1$"):
        check(cfg, [integer("n")])
    with pytest.raises(RCDMError, match=r"^sampling\.guidance=1\.0 is not allowed: use a number > 2 \(e\.g\. 3\)$"):
        check(cfg, [number("sampling.guidance", above=2, example="3")])
    with pytest.raises(RCDMError, match=r"sampling\.sampler='ddpm' is not allowed: use one of ddim \(or null\)"):
        check(cfg, [one_of("sampling.sampler", ["ddim"], optional=True)])
    check(cfg, [integer("not.a.setting"), Rule("ckpt", lambda v: v == "a.ckpt", "a.ckpt")])   # absent: skipped


@pytest.mark.parametrize("config_name, overrides", [
    ("train", []),
    ("demo", []),
    ("train", ["data=folder", "data.dataset.root=/data", "model=adm_official", "resolution=128", "trainer=ddp"]),
    ("train", ["data=cifar10", "encoder=dino_resnet50", "layer=head"]),
    ("sample", ["ckpt=x.ckpt", "images=y"]),
    ("eval", ["ckpt=x.ckpt", "metric=[faithfulness,distances,fid,kde]"]),
    ("probe", ["layer=head", "encoder=simclr_resnet50"]),
    *[("figure", [f"figure={name}", "ckpt=x.ckpt"]) for name in FIGURE_KINDS],
])
def test_every_shipped_config_passes_its_own_checks(config_name, overrides):
    cfg = compose_config(config_name, *[o.replace("resolution=128", "resolution=128px") for o in overrides])
    VALIDATORS[config_name](cfg)


@pytest.mark.parametrize("config_name, overrides, message", [
    ("train", ["model.optimizer.lr=abc"], "model.optimizer.lr='abc' is not allowed: use a number > 0 (e.g. 1e-4)"),
    ("train", ["model.cond_drop=1.5"], "model.cond_drop=1.5 is not allowed: use a number >= 0 and < 1"),
    ("train", ["data.batch_size=0"], "data.batch_size=0 is not allowed: use an integer >= 1"),
    ("train", ["trainer.precision=fp8"], "trainer.precision='fp8': 'fp8' is not a precision; use one of: auto, 32"),
    ("train", ["trainer.max_steps=2.5"], "trainer.max_steps=2.5 is not allowed: use an integer >= 1"),
    ("train", ["encoder.input_norm=imagenet"], "encoder.input_norm='imagenet' is not allowed: use one of native, "
                                               "official"),
    ("train", ["sampling.sampler=euler"], "sampling.sampler='euler' is not allowed: use one of ddpm, ddim"),
    ("demo", ["sampling.steps=0"], "sampling.steps=0: timestep spacing 0 asks for 0 steps"),
    ("sample", ["ckpt=x", "images=y", "sampling.sampler=ddpm", "sampling.eta=0.5"],
     "eta=0.5 only applies to sampler='ddim'"),
    ("eval", ["ckpt=x", "sampling.sampler=ddim", "sampling.eta=2"], "sampling: DDIM eta must lie in [0, 1]"),
    ("figure", ["ckpt=x", "+sampling.etta=0.5"],
     "sampling: sampler 'dpmpp_2m_sde' has no option 'etta'; did you mean 'eta'?"),
    ("sample", ["ckpt=x", "images=y", "device=gpu0"], "device='gpu0' is not allowed: use auto, cpu, cuda"),
    ("eval", ["ckpt=x", "metric.faithfulness.samples_per_conditioning=0"],
     "metric.faithfulness.samples_per_conditioning=0 is not allowed: use an integer >= 1"),
    ("eval", ["ckpt=x", "metric=fid", "metric.fid.features=clip"], "metric.fid.features='clip' is not allowed"),
    ("eval", ["ckpt=x", "sampling.steps=ddimX"], "cannot read timestep spacing 'ddimX'"),
    ("probe", ["probe.continuous_bins=1"], "probe.continuous_bins=1 is not allowed: use an integer >= 2"),
    ("figure", ["figure=interpolation", "ckpt=x", "figure.num_steps=1"],
     "figure.num_steps=1 is not allowed: use an integer >= 2"),
    ("figure", ["figure=manipulation", "ckpt=x", "figure.mode=all"], "figure.mode='all' is not allowed: use one "
                                                                     "of most_common, least_common, both"),
    ("figure", ["figure=adversarial", "ckpt=x", "figure.eps=[1/0]"], "figure.eps entry '1/0' is not a number"),
    ("figure", ["figure=augmentations", "ckpt=x", "figure.transforms=[blur]"],
     "figure.transforms=['blur'] is not allowed: use a list of vertical_shift, zoom_out"),
])
def test_a_bad_setting_is_named_with_its_allowed_values(config_name, overrides, message):
    cfg = compose_config(config_name, *overrides)
    with pytest.raises(RCDMError) as raised:
        VALIDATORS[config_name](cfg)
    assert message in str(raised.value)


def test_sample_with_a_negative_count_fails_before_loading_anything(tmp_path):
    # The checkpoint does not even exist: the count is refused first, in one line, exit status 2.
    result = run_cli("rcdm-sample", f"ckpt={tmp_path / 'none.ckpt'}", f"images={tmp_path}", "n=-3",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: n=-3 is not allowed: use an integer >= 1"


def test_train_with_an_unreadable_learning_rate_renders_and_caches_nothing(tmp_path):
    result = run_cli("rcdm-train", "model.optimizer.lr=abc", f"data.cache_dir={tmp_path / 'cache'}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.optimizer.lr='abc' is not allowed" in result.stderr
    assert "caching" not in result.stderr + result.stdout and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("command, old, new", [
    ("sample", "steps=100", "sampling.steps=100"),
    ("sample", "+eta=0.5", "sampling.eta=0.5"),
    ("train", "callbacks.preview.sampler=ddpm", "sampling.sampler=ddpm"),
    ("demo", "demo.guidance=4", "sampling.guidance=4"),
])
def test_an_old_sampling_spelling_fails_in_one_line_naming_the_new_one(command, old, new, monkeypatch, capsys):
    import importlib
    import sys

    main = importlib.import_module(f"rcdm_lab.cli.{command}").main
    monkeypatch.setattr(sys, "argv", [f"rcdm-{command}", "ckpt=x", old])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    key = old.lstrip("+").partition("=")[0]
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {key}= has moved: use {new}"]
