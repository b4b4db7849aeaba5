"""Adding a figure kind is one module plus one yaml: a toy kind written here runs through rcdm-figure's own entry."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import rcdm_lab.figures
from rcdm_lab.cli.figure import run
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import FIGURE_KINDS, discover
from rcdm_testing import compose_config

TOY_MODULE = '''
"""A toy figure: samples from the mean training representation, scaled."""

from dataclasses import dataclass

from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.settings import integer, number
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 0"
SUMMARY = "samples from the scaled mean representation"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    samples_per_row: int   # samples from the scaled mean
    scale: float           # factor on the mean representation

    def __post_init__(self):
        check_settings(self, [integer("samples_per_row"), number("scale", above=0)])


def make(ctx, settings):
    h = ctx.run.representations("train").mean(0, keepdim=True) * settings.scale
    samples = ctx.sample(h, settings.samples_per_row)
    images, names = ctx.input_images(1)
    png = ctx.save(labelled_rows(sample_rows(images, samples, settings.samples_per_row), names))
    return {"figure_png": png, "num_samples": len(samples)}
'''

TOY_CONFIG = "kind: toy_mean\nsamples_per_row: 2\nscale: 1.5\n"


@pytest.fixture
def toy_kind(tmp_path, monkeypatch) -> Path:
    """The toy module and its yaml, each in a folder of its own, registered as discovery registers the shipped ones.

    Returns the config folder to add to Hydra's search path (its figure/ group then holds toy_mean.yaml).
    """
    code, conf = tmp_path / "code", tmp_path / "conf" / "figure"
    code.mkdir()
    conf.mkdir(parents=True)
    (code / "toy_mean.py").write_text(textwrap.dedent(TOY_MODULE))
    (conf / "toy_mean.yaml").write_text(TOY_CONFIG)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(rcdm_lab.figures, "FIGURE_KINDS", {**FIGURE_KINDS, **discover([str(code)], "")})
    return conf.parent


def compose_toy(conf: Path, *overrides: str):
    return compose_config("figure", f"hydra.searchpath=[file://{conf}]", "figure=toy_mean", *overrides)


def test_a_toy_figure_kind_renders_through_rcdm_figure(toy_kind, trained_checkpoint, tmp_path):
    out = tmp_path / "figures" / "toy_mean"
    cfg = compose_toy(toy_kind, f"ckpt={trained_checkpoint}", "sampling.steps=2", "sampling.progress=false",
                      f"output_dir={out}")
    run(cfg)
    record = json.loads((out / "figure.json").read_text())
    assert record["figure"] == "toy_mean" and record["num_samples"] == 2
    assert record["settings"] == {"samples_per_row": 2, "scale": 1.5}   # the yaml's values, typed by the module
    assert (out / "figure.png").stat().st_size > 0
    assert "toy_mean" in (tmp_path / "figures" / "index.html").read_text()


def test_a_toy_kinds_bad_setting_stops_before_any_checkpoint_is_read(toy_kind, tmp_path):
    cfg = compose_toy(toy_kind, f"ckpt={tmp_path / 'absent.ckpt'}", "figure.scale=-1", f"output_dir={tmp_path}")
    with pytest.raises(RCDMError, match=r"^figure\.scale=-1\.0 is not allowed: use a number > 0$"):
        run(cfg)
