"""The checkpoint schema: what rcdm-train records reads back typed, and every unusable file is one clear error."""

from __future__ import annotations

import io

import pytest
import torch

from rcdm_lab.checkpoint import (
    FORMAT_VERSION,
    CheckpointRecord,
    EncoderRecord,
    check_resumable,
    read_checkpoint,
    write_record,
)
from rcdm_lab.errors import RCDMError

IDENTITY = {"name": "mobilenet_v2", "layer": "backbone", "weights_digest": "abcd1234", "input_norm": "imagenet",
            "input_size": 32, "dim": 1280}
UNET = {"image_size": 16, "in_channels": 3, "out_channels": 6, "model_channels": 16, "ssl_dim": 1280}


def _record(**changes) -> CheckpointRecord:
    fields = dict(unet=UNET, diffusion={"schedule": "linear", "num_timesteps": 1000, "learn_sigma": True},
                  encoder=EncoderRecord(spec={"name": "mobilenet_v2", "layer": "backbone", "weights": "default"},
                                        identity=IDENTITY),
                  standardize=False, cond_drop=0.2, resolution=16, data={"batch_size": 8})
    return CheckpointRecord(**{**fields, **changes})


def _saved_checkpoint(tmp_path, record: CheckpointRecord, name: str = "model.ckpt"):
    contents = {"state_dict": {"rep_mean": torch.zeros(3)}, "global_step": 7}
    write_record(contents, record)
    path = tmp_path / name
    torch.save(contents, path)
    return path


def _one_line_error(path) -> str:
    with pytest.raises(RCDMError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_written_record_reads_back_equal_with_the_rest_of_the_file(tmp_path):
    record = _record()
    checkpoint = read_checkpoint(_saved_checkpoint(tmp_path, record))
    assert checkpoint.record == record
    assert checkpoint.contents["global_step"] == 7
    assert checkpoint.representation_stats() is None   # trained on raw h: nothing to standardise with


def test_a_newer_format_is_refused_naming_the_upgrade(tmp_path):
    path = _saved_checkpoint(tmp_path, _record(format_version=FORMAT_VERSION + 1))
    message = _one_line_error(path)
    assert f"format {FORMAT_VERSION + 1}" in message and "upgrade rcdm_lab" in message


def test_a_foreign_pt_file_points_to_the_official_loader(tmp_path):
    path = tmp_path / "released.pt"
    torch.save({"out.2.weight": torch.zeros(6, 3, 3, 3)}, path)
    assert f"ckpt=official:{path}" in _one_line_error(path)


def test_a_truncated_file_says_it_may_be_incomplete(tmp_path):
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "rcdm": _record().to_saved()}, buffer)
    path = tmp_path / "torn.ckpt"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = _one_line_error(path)
    assert "could not read checkpoint" in message and "is it complete?" in message


def test_a_missing_file_is_named(tmp_path):
    assert _one_line_error(tmp_path / "nowhere.ckpt") == f"checkpoint not found: {tmp_path / 'nowhere.ckpt'}"


def test_an_incomplete_record_names_what_is_missing(tmp_path):
    path = tmp_path / "edited.ckpt"
    saved = _record().to_saved()
    del saved["resolution"], saved["encoder"]["identity"]
    torch.save({"state_dict": {}, "rcdm": saved}, path)
    assert "missing resolution, encoder.identity" in _one_line_error(path)


def test_sampling_with_another_encoder_is_refused_naming_what_differs(tmp_path):
    checkpoint = read_checkpoint(_saved_checkpoint(tmp_path, _record()))
    checkpoint.check_encoder(dict(IDENTITY))
    with pytest.raises(RCDMError, match="weights_digest: checkpoint 'abcd1234' vs now 'ffff'.*encoder_weights=PATH"):
        checkpoint.check_encoder({**IDENTITY, "weights_digest": "ffff"})


def test_resuming_with_another_unet_names_the_changed_keys():
    saved: dict = {}
    write_record(saved, _record())
    check_resumable(saved, IDENTITY, UNET)
    with pytest.raises(RCDMError, match=r"differs from the checkpoint's in \['model_channels', 'ssl_dim'\]"):
        check_resumable(saved, IDENTITY, {**UNET, "model_channels": 32, "ssl_dim": 512})
    with pytest.raises(RCDMError, match="different representation .*layer: checkpoint 'backbone' vs now 'head'"):
        check_resumable(saved, {**IDENTITY, "layer": "head"}, UNET)
    with pytest.raises(RCDMError, match="not written by rcdm-train"):
        check_resumable({"state_dict": {}}, IDENTITY, UNET)


@pytest.mark.slow
def test_a_trained_checkpoint_records_what_was_configured(trained_checkpoint):
    # trained_checkpoint is compose_train(..., "model.cond_drop=0.2", "trainer.max_steps=4").
    record = read_checkpoint(trained_checkpoint).record
    assert record.format_version == FORMAT_VERSION
    assert record.encoder.spec == {"name": "mobilenet_v2", "layer": "backbone", "weights": "default",
                                   "input_size": 32, "input_norm": "native"}
    assert record.encoder.identity["name"] == "mobilenet_v2" and record.encoder.identity["dim"] == 1280
    assert record.diffusion == {"schedule": "linear", "num_timesteps": 1000, "learn_sigma": True}
    assert record.unet["image_size"] == record.resolution == 16
    assert record.unet["model_channels"] == 16 and record.unet["num_res_blocks"] == 1
    assert record.unet["out_channels"] == 6 and record.unet["learn_null_cond"]
    assert record.cond_drop == 0.2 and record.standardize is False
    assert record.data["batch_size"] == 8 and record.data["dataset"]["num_train"] == 32


@pytest.mark.slow
def test_loading_a_trained_run_reads_its_checkpoint_once(trained_checkpoint, monkeypatch):
    from rcdm_lab.trained_run import TrainedRun

    real_load, reads = torch.load, []

    def counting_load(source, *args, **kwargs):
        if str(source) == str(trained_checkpoint):
            reads.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    run = TrainedRun.load(trained_checkpoint)
    assert len(reads) == 1
    assert run.datamodule.batch_size == 8   # the recorded data config, from that same read
