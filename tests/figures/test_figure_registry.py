"""Every figure name leads to its module, its config and (single-model figures) `make figures`."""

from __future__ import annotations

import re

import pytest
import yaml

from rcdm_lab.errors import RCDMError
from rcdm_lab.experiments import FIGURES, MULTI_MODEL_FIGURES, figure_module
from rcdm_testing import REPO


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_has_a_module_and_a_config_of_its_name(name):
    assert callable(figure_module(name).make)
    config = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
    assert config["figure"]["name"] == name


def test_make_figures_runs_exactly_the_single_model_figures():
    makefile = (REPO / "Makefile").read_text()
    listed = re.search(r"^SINGLE_MODEL_FIGURES := (.+)$", makefile, re.MULTILINE).group(1).split(",")
    assert listed == [name for name in FIGURES if name not in MULTI_MODEL_FIGURES]


def test_unknown_figure_lists_the_known_ones():
    with pytest.raises(RCDMError, match="interpolation"):
        figure_module("interpolate")
