"""Every paper item (conf/experiment/fig*, table*) is one `experiment=` override that trains its runs and renders.

The end-to-end test runs each item exactly as `make <item> SCALE=cpu` does -- `rcdm-train -m experiment=<item>
scale=cpu`, then `rcdm-figure` or `rcdm-eval experiment=<item> scale=cpu` -- at the tiniest size (2 training
steps, 2 sampling steps), so a renamed key in any item, figure kind or metric breaks a test, not `make`.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rcdm_lab.cli.common import CONF_DIR, register_resolvers, renamed_figure_choice
from rcdm_lab.cli.experiment_runs import planned_runs, sweep_combinations
from rcdm_testing import REPO, compose_config, run_cli

PAPER_ITEMS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem.startswith(("fig", "table")))


def renders_a_metric(item: str) -> bool:
    return "override /metric" in (CONF_DIR / "experiment" / f"{item}.yaml").read_text()


@pytest.fixture
def hydra_conf():
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_there_is_an_item_per_paper_figure_and_table():
    assert len(PAPER_ITEMS) >= 14
    assert {"fig02_backbone_vs_head", "fig03_augmentations", "table1b_faithfulness"} <= set(PAPER_ITEMS)


@pytest.mark.parametrize("item", PAPER_ITEMS)
def test_every_item_composes_for_training_and_for_its_renderer(item):
    train = compose_config("train", f"experiment={item}", "scale=cpu")
    assert train.paper_item.startswith(("Fig.", "Table"))
    assert train.runs_root == "outputs/cpu" and train.trainer.max_steps == 650
    if renders_a_metric(item):
        assert list(compose_config("eval", f"experiment={item}", "scale=cpu").metric)
    else:
        assert compose_config("figure", f"experiment={item}", "scale=cpu").figure.kind


def test_sweep_combinations_follow_hydras_basic_sweeper_order():
    combinations = sweep_combinations({"encoder": "a,b", "layer": "backbone,head", "resolution": "32px"})
    assert combinations == [
        ["encoder=a", "layer=backbone", "resolution=32px"], ["encoder=a", "layer=head", "resolution=32px"],
        ["encoder=b", "layer=backbone", "resolution=32px"], ["encoder=b", "layer=head", "resolution=32px"],
    ]


def test_an_item_plans_one_deterministically_named_run_per_combination(hydra_conf):
    runs = planned_runs("fig02_backbone_vs_head")
    assert [run.name for run in runs] == [f"{encoder}_resnet50-{layer}-128px" for encoder in
                                          ("vicreg", "dino", "barlow", "simclr") for layer in ("backbone", "head")]
    assert all(str(run.directory) == f"outputs/{run.name}" for run in runs)
    cpu = planned_runs("fig02_backbone_vs_head", "cpu")
    assert [run.name for run in cpu] == [run.name.replace("128px", "32px") for run in runs]
    assert all(str(run.directory) == f"outputs/cpu/{run.name}" for run in cpu)
    assert all("encoder.weights=random" in run.overrides and "data=shapes" in run.overrides for run in cpu)


def test_the_documented_paper_scale_command_composes_for_every_run(hydra_conf):
    documented = ["experiment=fig02_backbone_vs_head", "data=folder", "data.dataset.root=/data/imagenet/train"]
    for run in planned_runs("fig02_backbone_vs_head", overrides=documented[1:]):
        job = compose("train", overrides=[*documented, *run.overrides])
        assert job.data.dataset.root == "/data/imagenet/train" and job.data.dataset._target_.endswith("FolderDataset")
        assert job.model.unet.model_channels == 256 and job.encoder.input_norm == "official"
        assert job.encoder.name == run.name.split("-")[0] and job.resolution == 128


def test_runs_of_different_items_with_the_same_encoder_are_one_run(hydra_conf):
    shared = {run.name for run in planned_runs("fig01a_samples")} & {run.name for run in
                                                                     planned_runs("fig03_augmentations")}
    assert shared == {"dino_resnet50-backbone-128px"}


def test_the_training_checkpoint_item_names_a_run_per_encoder_epoch(hydra_conf):
    assert [run.name for run in planned_runs("fig35_training_checkpoints")] == [
        f"vicreg_resnet50-backbone-128px-ep{epoch}" for epoch in (1, 5, 50)]


def test_the_readme_paper_table_lists_exactly_the_items_with_what_they_render(hydra_conf):
    section = (REPO / "README.md").read_text().split("## Paper items", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \| `(figure|metric)=(\w+)` \|[^|]+\| (\d+) \|$", section, re.MULTILINE)
    assert sorted(row[0] for row in rows) == PAPER_ITEMS
    for item, paper, group, choice, runs in rows:
        app = "figure" if group == "figure" else "eval"
        cfg = compose(app, overrides=[f"experiment={item}"])
        assert cfg.paper_item == paper
        assert (cfg.figure.kind if group == "figure" else list(cfg.metric)) == (choice if group == "figure"
                                                                               else [choice])
        assert len(planned_runs(item)) == int(runs)


def test_the_makefile_has_a_target_per_item():
    listed = subprocess.run(["make", "-s", "paper-items"], cwd=REPO, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == PAPER_ITEMS


def test_the_old_figure_spelling_names_the_new_one():
    hint = renamed_figure_choice(["experiment=augmentations", "ckpt=a.ckpt"])
    assert hint.startswith("experiment=augmentations is now figure=augmentations")
    assert "experiment=fig03_augmentations" in hint
    assert renamed_figure_choice(["experiment=fig03_augmentations"]) is None
    assert renamed_figure_choice(["experiment=demo"]) is None


def test_training_an_item_without_multirun_says_to_add_m(tmp_path):
    result = run_cli("rcdm-train", "experiment=fig03_augmentations", "scale=cpu", f"runs_root={tmp_path}")
    assert result.returncode == 2
    assert "add -m, i.e. rcdm-train -m experiment=fig03_augmentations" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_rendering_an_untrained_item_names_the_training_command(tmp_path):
    result = run_cli("rcdm-figure", "experiment=fig03_augmentations", "scale=cpu", f"runs_root={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'figure'}")
    assert result.returncode == 2
    assert "Train them with: rcdm-train -m experiment=fig03_augmentations scale=cpu" in result.stderr


def tiny(tmp_path) -> list[str]:
    """The tiniest paper item: 2 steps, 32 shapes, a 16-channel UNet; the runs and their caches under tmp_path.

    The resolution stays the scale's: it is part of the run names the renderer looks for.
    """
    return [f"runs_root={tmp_path / 'runs'}", "data.dataset.num_train=32",
            "data.dataset.num_val=8", "encoder.input_size=32", "model.unet.model_channels=16",
            "model.unet.num_heads=2", "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=2", "trainer.enable_progress_bar=false", "logger=csv"]


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("paper_items")


# Training and rendering all 15 items took ~14 min of `make test` on a 2-core CPU without native bf16
# (subprocess start-ups dominate), over the suite's 15-minute budget; every item's configs are still composed by the
# tests above. By default two items run end to end: a figure that needs a probe on top of its model, and a metric
# (about 20 s each on a 2-core AVX512-BF16 EPYC, a minute on the CPU above); `make test-paper-items`
# (RCDM_ALL_PAPER_ITEMS=1) runs every one.
REPRESENTATIVE_ITEMS = ["fig04_adversarial", "table1b_faithfulness"]
END_TO_END_ITEMS = PAPER_ITEMS if os.environ.get("RCDM_ALL_PAPER_ITEMS") else REPRESENTATIVE_ITEMS


def test_the_representative_items_are_paper_items():
    assert set(REPRESENTATIVE_ITEMS) <= set(PAPER_ITEMS)
    assert any(renders_a_metric(item) for item in REPRESENTATIVE_ITEMS)


@pytest.mark.slow
@pytest.mark.parametrize("item", END_TO_END_ITEMS)
def test_every_item_trains_and_renders_end_to_end(item, items_dir):
    trained = run_cli("rcdm-train", "-m", f"experiment={item}", "scale=cpu", *tiny(items_dir), timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = items_dir / "rendered" / item
    command = "rcdm-eval" if renders_a_metric(item) else "rcdm-figure"
    rendered = run_cli(command, f"experiment={item}", "scale=cpu", f"runs_root={items_dir / 'runs'}",
                       "sampling.steps=2", "sampling.progress=false", f"hydra.run.dir={out}", timeout=900)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (out / ("results.json" if command == "rcdm-eval" else "figure.json")).is_file()


def test_an_item_rendered_by_the_other_command_names_it(tmp_path):
    result = run_cli("rcdm-figure", "experiment=table1b_faithfulness", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "experiment=table1b_faithfulness is rendered by rcdm-eval, not rcdm-figure" in result.stderr
