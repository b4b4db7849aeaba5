"""rcdm-figure end to end: one figure per override, a multirun over checkpoints, and the offline gallery."""

from __future__ import annotations

import json

import pytest

from rcdm_testing import run_cli

FAST = ["sampling.steps=2", "sampling.progress=false"]


@pytest.mark.slow
def test_figure_writes_png_json_with_its_command_and_a_gallery(trained_checkpoint, tmp_path):
    out = tmp_path / "figures" / "samples"
    result = run_cli("rcdm-figure", "experiment=samples", f"ckpt={trained_checkpoint}", f"hydra.run.dir={out}",
                     *FAST, "figure.num_images=2", "figure.samples_per_image=2")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "figure.json").read_text())
    assert record["figure"] == "samples" and record["ckpts"] == [str(trained_checkpoint)]
    assert record["command"].startswith("rcdm-figure experiment=samples")
    assert (out / "figure.png").stat().st_size > 0
    index = (tmp_path / "figures" / "index.html").read_text()
    assert "figure.png" in index and "rcdm-figure experiment=samples" in index


@pytest.mark.slow
def test_multirun_over_checkpoints(trained_checkpoint, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("rcdm-figure", "-m", "experiment=augmentations", f"ckpt={trained_checkpoint},{trained_checkpoint}",
                     f"hydra.sweep.dir={sweep}", *FAST, "figure.samples_per_image=2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted(sweep.glob("*/figure.json"))
    assert len(records) == 2
    assert "augmentations" in (sweep / "index.html").read_text()


def test_a_training_experiment_or_no_checkpoint_is_refused(tmp_path):
    training = run_cli("rcdm-figure", "experiment=demo", f"ckpt={tmp_path / 'x.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert training.returncode == 2 and "not a figure" in training.stderr
    no_model = run_cli("rcdm-figure", "experiment=samples", f"hydra.run.dir={tmp_path}")
    assert no_model.returncode == 2 and "ckpt=" in no_model.stderr


def test_training_refuses_a_figure_experiment(tmp_path):
    from rcdm_lab.cli.train import build
    from rcdm_lab.errors import RCDMError
    from rcdm_testing import compose_train

    with pytest.raises(RCDMError, match="rcdm-figure experiment=samples"):
        build(compose_train(tmp_path, "experiment=samples"))
