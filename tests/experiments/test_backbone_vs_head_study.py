"""The backbone-vs-head study driver (experiments/backbone_vs_head/study.py): its command line."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from rcdm_testing import REPO


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO / "experiments" / "backbone_vs_head" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_settings_come_from_the_command_line_with_their_types():
    study = _study()
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(work=Path("w"), out=Path("o"), set=["num_conditionings=128", "guidances=1,8",
                                                                   "eps=0,4/255", "sampler=ddpm"],
                              pretrain_args="epochs=10 'network.widths=[8,16,32]'", train_args="")
    settings = study.parse_settings(args, parser)
    assert settings.num_conditionings == 128 and settings.guidances == (1.0, 8.0)
    assert settings.eps == ("0", "4/255") and settings.sampler == "ddpm"
    assert settings.pretrain_overrides == ("epochs=10", "network.widths=[8,16,32]")


def test_a_bad_setting_is_refused_naming_the_fields(capsys):
    with pytest.raises(SystemExit):
        _study().main(["--set", "num_conditionigs=3"])
    assert "num_conditionings" in capsys.readouterr().err
