"""rcdm-figure end to end: one figure per override, a multirun over checkpoints, and the offline gallery."""

from __future__ import annotations

import json

import pytest

from rcdm_testing import run_cli, run_cli_in_process

FAST = ["sampling.steps=2", "sampling.progress=false"]


@pytest.mark.slow
def test_figure_writes_png_json_with_its_command_and_a_gallery(trained_checkpoint, tmp_path):
    out = tmp_path / "figures" / "samples"
    result = run_cli("rcdm-figure", "figure=samples", f"ckpt={trained_checkpoint}", f"hydra.run.dir={out}",
                     *FAST, "figure.num_images=2", "figure.samples_per_image=2")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "figure.json").read_text())
    assert record["figure"] == "samples" and record["ckpts"] == [str(trained_checkpoint)]
    assert record["command"].startswith("rcdm-figure figure=samples")
    assert (out / "figure.png").stat().st_size > 0
    index = (tmp_path / "figures" / "index.html").read_text()
    assert "figure.png" in index and "rcdm-figure figure=samples" in index


@pytest.mark.slow
def test_multirun_over_checkpoints(trained_checkpoint, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("rcdm-figure", "-m", "figure=augmentations", f"ckpt={trained_checkpoint},{trained_checkpoint}",
                     f"hydra.sweep.dir={sweep}", *FAST, "figure.samples_per_image=2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted(sweep.glob("*/figure.json"))
    assert len(records) == 2
    assert "augmentations" in (sweep / "index.html").read_text()


def test_no_figure_kind_or_no_checkpoint_is_refused(tmp_path):
    no_kind = run_cli("rcdm-figure", "~figure", f"ckpt={tmp_path / 'x.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert no_kind.returncode == 2 and "pass figure=<kind>, one of adversarial," in no_kind.stderr
    no_model = run_cli_in_process("rcdm-figure", "figure=samples", f"hydra.run.dir={tmp_path}")
    assert no_model.returncode == 2 and "ckpt=" in no_model.stderr


def test_a_bad_figure_setting_is_one_line_before_any_checkpoint_is_read(tmp_path):
    result = run_cli("rcdm-figure", "figure=samples", f"ckpt={tmp_path / 'absent.ckpt'}", "+figure.num_image=3",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: figure.num_image is not a setting of figure=samples (did you mean figure.num_images?); "
        "its settings: num_images, samples_per_image, first_image, factors")
