"""Every figure kind is found, has its config, builds its Settings from it, and reports bad settings in one line."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import FIGURE_KINDS, figure_kind
from rcdm_testing import REPO, compose_config

SHIPPED = sorted(path.stem for path in (REPO / "conf" / "figure").glob("*.yaml"))


def test_discovery_finds_exactly_the_figure_kinds_of_the_shipped_configs():
    # A yaml without a module, or a module (with Settings and make) without a yaml, fails here; helper modules
    # (context, blocks, probe_source, kind) are not kinds.
    assert sorted(FIGURE_KINDS) == SHIPPED
    assert {"compare_models", "training_checkpoints"} == {n for n, kind in FIGURE_KINDS.items() if kind.several_models}
    # Each kind names its paper figure, or says it goes beyond the paper (figure=factors).
    assert all(re.fullmatch(r"Fig\. \d.*|beyond the paper", kind.paper) and kind.summary
               for kind in FIGURE_KINDS.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_kind_builds_its_settings_from_its_shipped_config(name):
    # Composed as rcdm-figure does: a key renamed in the yaml or in the dataclass fails here, not in `make figures`.
    cfg = compose_config("figure", f"figure={name}")
    assert cfg.figure.kind == name and cfg.name.startswith(f"{name}-")
    settings = figure_kind(name).settings(cfg.figure)
    assert isinstance(settings, figure_kind(name).settings_type)
    shipped = OmegaConf.to_container(cfg.figure)
    shipped.pop("kind")
    assert {key: getattr(settings, key) for key in shipped} == shipped


def test_unknown_kind_suggests_the_close_one_and_lists_the_known_ones():
    with pytest.raises(RCDMError, match=r"^unknown figure kind 'interpolate' \(did you mean figure=interpolation\?\); "
                                        r"figure kinds: adversarial, .*unconditional$"):
        figure_kind("interpolate")


@pytest.mark.parametrize("kind, overrides, message", [
    ("samples", {"num_image": 3}, "figure.num_image is not a setting of figure=samples (did you mean "
                                  "figure.num_images?); its settings: num_images, samples_per_image, "
                                  "first_image, factors"),
    ("samples", {"num_images": "abc"}, "figure.num_images='abc' is not allowed: use an integer"),
    ("samples", {"num_images": 2.5}, "figure.num_images=2.5 is not allowed: use an integer"),
    ("algebra", {"triples": 3}, "figure.triples=3 is not allowed: use a list of lists of integers"),
    ("class_mean", {"classes": "circle"}, "figure.classes='circle' is not allowed: use a list of strings or integers "
                                          "or null"),
    ("samples", {"num_images": 0}, "figure.num_images=0 is not allowed: use an integer >= 1"),
    ("unconditional", {"sigma": 0}, "figure.sigma=0.0 is not allowed: use a number > 0"),
    ("samples", {"num_images": "???"}, "figure.num_images has no value: set it in conf/figure/samples.yaml or pass "
                                       "figure.num_images=..."),
    ("samples", {"kind": "interpolation"}, "figure.kind='interpolation' given to the settings of figure kind "
                                           "'samples'"),
])
def test_a_bad_setting_is_one_line_naming_it(kind, overrides, message):
    shipped = OmegaConf.to_container(compose_config("figure", f"figure={kind}").figure)
    with pytest.raises(RCDMError) as raised:
        figure_kind(kind).settings({**shipped, **overrides})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_readme_figure_table_is_the_kinds_own_paper_and_summary():
    section = (REPO / "README.md").read_text().split("## Figures:", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (.+) \|$", section, re.MULTILINE)
    assert {name: (paper, shows) for name, paper, shows in rows} == {
        name: (kind.paper, kind.summary) for name, kind in FIGURE_KINDS.items()}
