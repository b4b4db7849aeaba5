"""encoder=local: an rcdm-pretrain file round-trips to the very networks that were trained, and bad files say why."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from pretrain_testing import SIZE, TINY_NETWORK, export, hand_trained

from rcdm_lab.encoders import build_encoder
from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.export import FORMAT_TAG, FORMAT_VERSION, read_encoder_file


def _images(n: int = 6, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_backbone_and_head_give_exactly_the_trained_networks_outputs(tiny_encoder_file):
    path, module = tiny_encoder_file
    images = _images()
    with torch.no_grad():
        features, projections = module.features(images), module(images)
    backbone = build_encoder("local", layer="backbone", weights=str(path))
    head = build_encoder("local", layer="head", weights=str(path))
    assert backbone.dim == TINY_NETWORK.dim == features.shape[1] and head.dim == 6 == projections.shape[1]
    assert backbone.input_size == SIZE and backbone.input_norm == "native"
    assert torch.equal(backbone(images), features)
    assert torch.equal(head(images), projections)
    for key, value in module.trunk.state_dict().items():
        assert torch.equal(backbone.trunk.state_dict()[key], value), key
    for key, value in module.projector.state_dict().items():
        assert torch.equal(head.head.state_dict()[key], value), key
    assert torch.allclose(backbone.mean.flatten(), module.mean.flatten())


def test_the_file_records_what_the_run_was(tiny_encoder_file):
    path, module = tiny_encoder_file
    record = read_encoder_file(path)
    payload = record.payload
    assert payload["format"] == FORMAT_TAG and payload["version"] == FORMAT_VERSION
    assert payload["network"] == {"arch": "small_resnet", "widths": [4, 8, 8], "blocks": 1}
    assert payload["method"]["name"] == "simclr" and payload["method"]["temperature"] == 0.2
    assert payload["augment"]["name"] == "simclr" and payload["augment"]["jitter"] == [0.4, 0.4, 0.4, 0.1]
    assert payload["input_size"] == SIZE and payload["epoch"] == 2 and payload["head_dim"] == 6
    assert payload["mean"] == pytest.approx([0.4, 0.5, 0.6]) and payload["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert payload["dataset"]["fingerprint"] == "0" * 16 and payload["target"] is None
    assert payload["classifier"] is None


def test_a_supervised_file_keeps_its_classifier_and_class_names(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = hand_trained("supervised")
    payload = read_encoder_file(export(module, tmp_path / "encoder.pt")).payload
    assert payload["target"] == {"factor": "shape", "class_names": [str(i) for i in range(8)]}
    assert payload["classifier"]["weight"].shape == (8, 6)
    assert build_encoder("local", layer="head", weights=str(tmp_path / "encoder.pt")).dim == 6


def test_input_size_defaults_to_the_files_and_can_be_overridden(tiny_encoder_file):
    path, _ = tiny_encoder_file
    assert build_encoder("local", weights=str(path), input_size=None).input_size == SIZE
    larger = build_encoder("local", weights=str(path), input_size=24)
    assert larger.input_size == 24 and larger(_images(2, 40)).shape == (2, TINY_NETWORK.dim)


def test_identity_names_the_file_by_its_weights(tiny_encoder_file, tmp_path):
    path, module = tiny_encoder_file
    backbone = build_encoder("local", weights=str(path))
    assert backbone.identity() == build_encoder("local", weights=str(path)).identity()
    assert backbone.identity()["name"] == "local" and backbone.identity()["dim"] == 8
    assert build_encoder("local", layer="head", weights=str(path)).weights_digest != backbone.weights_digest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = export(hand_trained("simclr", seed=1), tmp_path / "other.pt")
    assert build_encoder("local", weights=str(other)).weights_digest != backbone.weights_digest


def test_building_leaves_the_global_rng_alone(tiny_encoder_file):
    state = torch.get_rng_state()
    build_encoder("local", layer="head", weights=str(tiny_encoder_file[0]))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("weights", [None, "default", "random"])
def test_no_file_names_the_fix(weights):
    with pytest.raises(RCDMError, match="encoder.weights=PATH to an rcdm-pretrain encoder.pt"):
        build_encoder("local", weights=weights)


@pytest.mark.parametrize("layer", ["layer1", "layer4"])
def test_resnet_stage_layers_are_refused(tiny_encoder_file, layer):
    with pytest.raises(RCDMError, match=f"layer=backbone or layer=head.*no torchvision stage {layer}"):
        build_encoder("local", layer=layer, weights=str(tiny_encoder_file[0]))


def test_a_missing_file_names_the_fix(tmp_path):
    with pytest.raises(RCDMError, match="does not exist; pass encoder.weights=PATH to an rcdm-pretrain encoder.pt"):
        build_encoder("local", weights=str(tmp_path / "nope.pt"))


def test_a_text_file_is_not_an_encoder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(RCDMError, match="is not an rcdm-pretrain encoder file: torch cannot read it"):
        build_encoder("local", weights=str(tmp_path / "notes.txt"))


def test_a_torchvision_state_dict_is_not_an_encoder(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(RCDMError, match=r"not an rcdm-pretrain encoder file \(it is a plain state dict: conv1.weight.*"
                                        r"encoder=resnet18 encoder.weights=PATH"):
        build_encoder("local", weights=str(tmp_path / "resnet18.pth"))


def test_a_newer_format_version_asks_for_an_upgrade(tiny_encoder_file, tmp_path):
    payload = dict(read_encoder_file(tiny_encoder_file[0]).payload, version=FORMAT_VERSION + 1)
    torch.save(payload, tmp_path / "future.pt")
    newer = f"format version {FORMAT_VERSION + 1}, newer than this rcdm_lab reads.*upgrade"
    with pytest.raises(RCDMError, match=newer):
        build_encoder("local", weights=str(tmp_path / "future.pt"))


def test_an_incomplete_or_mismatched_file_is_refused(tiny_encoder_file, tmp_path):
    payload = read_encoder_file(tiny_encoder_file[0]).payload
    torch.save({key: value for key, value in payload.items() if key != "head"}, tmp_path / "cut.pt")
    with pytest.raises(RCDMError, match=r"incomplete rcdm-pretrain encoder file \(missing head\)"):
        build_encoder("local", weights=str(tmp_path / "cut.pt"))
    torch.save(dict(payload, network={"arch": "small_resnet", "widths": [4, 8, 16], "blocks": 1}),
               tmp_path / "wrong.pt")
    with pytest.raises(RCDMError, match="do not fit the rcdm-pretrain trunk it records"):
        build_encoder("local", weights=str(tmp_path / "wrong.pt"))
