"""Every bad input gets one clear message naming the fix -- and no traceback wall on the command line."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab.cli.train import train
from rcdm_lab.errors import RCDMError
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_testing import compose_train, run_cli, run_cli_in_process, tiny_overrides


def _assert_clean_error(result, *fragments: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-2000:]


def test_unknown_encoder_name_cli(tmp_path):
    result = run_cli_in_process("rcdm-train", *tiny_overrides(tmp_path), "encoder.name=mobilenet_v3",
                     f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, "error:", "mobilenet_v2")


def test_unknown_encoder_config_cli(tmp_path):
    result = run_cli_in_process("rcdm-train", "encoder=nope", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, "encoder", "mobilenet_v2", code=1)   # Hydra lists the available options


def test_unsupported_resolution_cli(tmp_path):
    result = run_cli_in_process("rcdm-train", "resolution=48", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, "resolution", "32", code=1)


def test_missing_weights_file(tmp_path):
    with pytest.raises(RCDMError, match="not found|does not exist|no such"):
        train(compose_train(tmp_path, f"encoder.weights={tmp_path / 'missing.pth'}"))


def test_weights_with_wrong_keys_are_listed(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "bogus.weight": torch.zeros(1)}, bad)
    with pytest.raises(RCDMError, match="(?s)missing.*unexpected.*bogus"):
        train(compose_train(tmp_path, f"encoder.weights={bad}"))


def test_empty_image_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RCDMError, match="empty"):
        train(compose_train(tmp_path, "data=folder", f"data.dataset.root={empty}", "data.num_workers=0"))


def test_folder_without_root_names_the_override(tmp_path):
    result = run_cli_in_process("rcdm-train", *tiny_overrides(tmp_path, "data=folder"),
                                f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, "data.dataset.root")


def test_sampling_a_file_that_is_not_an_rcdm_checkpoint(tmp_path):
    bogus = tmp_path / "model.ckpt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(RCDMError, match="official:"):
        RCDMPipeline.from_checkpoint(bogus)
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(RCDMError, match="could not read"):
        RCDMPipeline.from_checkpoint(bogus)


@pytest.mark.slow
def test_checkpoint_from_another_encoder_is_refused(trained_checkpoint):
    with pytest.raises(RCDMError, match="weights_digest"):
        RCDMPipeline.from_checkpoint(trained_checkpoint, encoder_weights="random")


@pytest.mark.slow
def test_sampling_an_empty_folder_cli(trained_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("rcdm-sample", f"ckpt={trained_checkpoint}", f"images={empty}", f"out={tmp_path / 'o'}",
                     f"hydra.run.dir={tmp_path / 'h'}")
    _assert_clean_error(result, "error:", str(empty))


@pytest.mark.slow
def test_guidance_needs_condition_dropout(tmp_path):
    checkpoint = train(compose_train(tmp_path, "trainer.max_steps=1"))
    pipeline = RCDMPipeline.from_checkpoint(checkpoint)
    with pytest.raises(RCDMError, match="cond_drop"):
        pipeline.sample(torch.zeros(1, 1280), 1, steps=2, guidance=3.0)
