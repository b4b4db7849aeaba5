"""Publishers' checkpoint layouts: synthetic files with the official key names give exactly the right features.

Every checkpoint here is built from random values with the publisher's key names and prefixes, saved, and loaded
through build_encoder; the reference is an independently written torchvision ResNet-50 / nn.Sequential head /
timm ViT holding the same tensors. No test touches the network: downloads are monkeypatched.
"""

from __future__ import annotations

import argparse
import functools
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from rcdm_lab.encoders import build_encoder, load_encoder
from rcdm_lab.encoders.registry import PUBLISHER_URLS
from rcdm_lab.errors import RCDMError

SIZE = 32
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------------------------- references
def _reference_heads() -> dict[str, Callable[[], nn.Sequential]]:
    """The projectors as the publishers define them (written out here, independently of rcdm_lab.heads)."""
    def lin(i: int, o: int, bias: bool = True) -> nn.Linear:
        return nn.Linear(i, o, bias=bias)

    return {
        "dino": lambda: nn.Sequential(lin(2048, 4096), nn.BatchNorm1d(4096), nn.GELU(), lin(4096, 256)),
        "simclr": lambda: nn.Sequential(lin(2048, 2048), nn.ReLU(), lin(2048, 128)),
        "barlow": lambda: nn.Sequential(lin(2048, 8192, False), nn.BatchNorm1d(8192), nn.ReLU(),
                                        lin(8192, 8192, False), nn.BatchNorm1d(8192), nn.ReLU(),
                                        lin(8192, 8192, False)),
        "vicreg": lambda: nn.Sequential(lin(2048, 8192), nn.BatchNorm1d(8192), nn.ReLU(),
                                        lin(8192, 8192), nn.BatchNorm1d(8192), nn.ReLU(),
                                        lin(8192, 8192, False)),
        "swav": lambda: nn.Sequential(lin(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(), lin(2048, 128)),
    }


def _compact_random_state(module: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Random values for every entry; matrices are one random column expanded, so 8192x8192 files stay tiny."""
    state = {}
    for key, tensor in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif tensor.ndim == 2:
            column = torch.randn(tensor.shape[0], 1, generator=generator) / tensor.shape[1] ** 0.5
            state[key] = column.expand(tensor.shape)
        elif key.endswith(("running_var", "weight")):
            state[key] = torch.rand(tensor.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(tensor.shape, generator=generator) * 0.1
    return state


@pytest.fixture(scope="module")
def trunk_state() -> dict[str, Tensor]:
    """A torchvision ResNet-50 state dict (no fc) with random weights and random BatchNorm statistics."""
    generator = torch.Generator().manual_seed(1)
    state = {key: value for key, value in torchvision.models.resnet50().state_dict().items()
             if not key.startswith("fc.")}
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
    return state


@pytest.fixture(scope="module")
def reference_trunk(trunk_state) -> nn.Module:
    network = torchvision.models.resnet50()
    network.fc = nn.Identity()
    network.load_state_dict(trunk_state)
    # Same memory format as the encoder, so the same convolution kernels run and features match bit for bit.
    return network.eval().to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _reference_features(network: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return network(((images - MEAN) / STD).contiguous(memory_format=torch.channels_last))


def _head_with_state(kind: str, seed: int = 3) -> tuple[nn.Module, dict[str, Tensor]]:
    with torch.device("meta"):
        head = _reference_heads()[kind]()
    state = _compact_random_state(head, torch.Generator().manual_seed(seed))
    head.load_state_dict(state, assign=True)
    return head.eval(), state


# ----------------------------------------------------------------------------------------------- publishers' layouts
def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + key: value for key, value in state.items()}


def dino_checkpoint(trunk: dict, head: dict) -> dict:
    teacher = {**_prefixed(trunk, "module.backbone."), **_prefixed(head, "module.head.mlp."),
               "module.head.last_layer.weight_g": torch.ones(60, 1),
               "module.head.last_layer.weight_v": torch.randn(60, 256)}
    return {"student": teacher, "teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="resnet50")}


# The published VISSL files hold a *list* of MLP heads, each an nn.Sequential named clf ("<head>.clf.<layer>.*"):
# SimCLR (model_final_checkpoint_phase799.torch): 0.clf.0 Linear 2048->2048, ReLU, 1.clf.0 Linear 2048->128.
# Barlow Twins (barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch): 0.clf.0 Linear 2048->8192 (no bias),
# 0.clf.1 BatchNorm1d, ReLU; 1.clf.0, 1.clf.1, ReLU; 2.clf.0 Linear 8192->8192 (no bias).
# Renames from the reference nn.Sequential's layer indices to those names:
VISSL_HEAD_KEYS = {
    "simclr": {"0": "0.clf.0", "2": "1.clf.0"},
    "barlow": {"0": "0.clf.0", "1": "0.clf.1", "3": "1.clf.0", "4": "1.clf.1", "6": "2.clf.0"},
}


def vissl_checkpoint(trunk: dict, head: dict, kind: str = "simclr") -> dict:
    renames = VISSL_HEAD_KEYS[kind]
    heads = {}
    for key, value in head.items():
        layer, _, entry = key.partition(".")
        heads[f"{renames[layer]}.{entry}"] = value
    model = {"trunk": _prefixed(trunk, "_feature_blocks."), "heads": heads}
    return {"phase_idx": 799, "iteration": 1000, "classy_state_dict": {"base_model": {"model": model, "meta": {}}}}


def vicreg_checkpoint(trunk: dict, head: dict) -> dict:
    model = {**_prefixed(trunk, "module.backbone."), **_prefixed(head, "module.projector.")}
    return {"epoch": 100, "model": model, "optimizer": {"state": {}, "param_groups": []}}


def swav_checkpoint(trunk: dict, head: dict) -> dict:
    return {**_prefixed(trunk, "module."), **_prefixed(head, "module.projection_head."),
            "module.prototypes.weight": torch.randn(30, 128)}


FORMATS = {  # encoder name -> (head kind, checkpoint writer, head dim)
    "dino_resnet50": ("dino", dino_checkpoint, 256),
    "simclr_resnet50": ("simclr", functools.partial(vissl_checkpoint, kind="simclr"), 128),
    "barlow_resnet50": ("barlow", functools.partial(vissl_checkpoint, kind="barlow"), 8192),
    "vicreg_resnet50": ("vicreg", vicreg_checkpoint, 8192),
    "swav_resnet50": ("swav", swav_checkpoint, 128),
}


def _save(tmp_path: Path, checkpoint: object, name: str = "checkpoint.pth") -> str:
    path = tmp_path / name
    torch.save(checkpoint, path)
    return str(path)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(FORMATS))
def test_publisher_checkpoint_gives_the_resnet_features_and_the_head(tmp_path, name, trunk_state, reference_trunk,
                                                                    images):
    kind, write, head_dim = FORMATS[name]
    head, head_state = _head_with_state(kind)
    path = _save(tmp_path, write(trunk_state, head_state))

    backbone = build_encoder(name, weights=path, input_size=SIZE)
    expected = _reference_features(reference_trunk, images)
    assert backbone.dim == 2048
    assert expected.abs().mean() > 0.01  # real features, so the equality below means something
    assert torch.equal(backbone(images), expected)

    projector = load_encoder(name, layer="head", weights=path, input_size=SIZE)
    assert projector.dim == head_dim
    with torch.no_grad():
        expected_head = head(expected)
    output = projector(images)
    assert output.shape == (2, head_dim)
    torch.testing.assert_close(output, expected_head, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, keys", [
    ("simclr", {"0.clf.0.weight", "0.clf.0.bias", "1.clf.0.weight", "1.clf.0.bias"}),
    ("barlow", {"0.clf.0.weight", "0.clf.1.weight", "0.clf.1.bias", "0.clf.1.running_mean", "0.clf.1.running_var",
                "0.clf.1.num_batches_tracked", "1.clf.0.weight", "1.clf.1.weight", "1.clf.1.bias",
                "1.clf.1.running_mean", "1.clf.1.running_var", "1.clf.1.num_batches_tracked", "2.clf.0.weight"}),
])
def test_vissl_test_files_hold_exactly_the_published_head_keys(trunk_state, kind, keys):
    # Guards the fixture above: the files these tests load are laid out as VISSL publishes them.
    heads = vissl_checkpoint(trunk_state, _head_with_state(kind)[1], kind)["classy_state_dict"]["base_model"]
    assert set(heads["model"]["heads"]) == keys


def test_supervised_resnet50_reads_a_torchvision_state_dict(tmp_path, trunk_state, reference_trunk, images):
    with_classifier = {**trunk_state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    encoder = build_encoder("supervised_resnet50", weights=_save(tmp_path, with_classifier), input_size=SIZE)
    assert torch.equal(encoder(images), _reference_features(reference_trunk, images))


def test_resnet_stage_features(tmp_path, trunk_state, reference_trunk, images):
    path = _save(tmp_path, swav_checkpoint(trunk_state, _head_with_state("swav")[1]))
    encoder = build_encoder("swav_resnet50", layer="layer3", weights=path, input_size=SIZE)
    assert encoder.dim == 1024
    net = reference_trunk
    with torch.no_grad():
        x = ((images - MEAN) / STD).contiguous(memory_format=torch.channels_last)
        x = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
    assert torch.equal(encoder(images), x.mean(dim=(2, 3)))


@pytest.mark.parametrize("name, dims", [("random_resnet50", (256, 512, 1024, 2048)), ("resnet18", (64, 128, 256, 512))])
def test_resnet_stage_dims(name, dims):
    for index, dim in enumerate(dims, start=1):
        encoder = build_encoder(name, layer=f"layer{index}", weights="random", input_size=SIZE)
        assert encoder.dim == dim
        assert encoder(torch.rand(2, 3, 40, 48)).shape == (2, dim)


@pytest.mark.parametrize("name", ["mobilenet_v2", "dino_vits16"])
def test_stages_only_for_resnets(name):
    with pytest.raises(RCDMError, match=rf"encoder.layer=layer3 exists only for ResNet encoders; {name} takes"):
        build_encoder(name, layer="layer3", weights="random", input_size=SIZE)


def test_dino_vit_returns_the_cls_token_after_the_norm(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(4)
    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0).eval()
    path = _save(tmp_path, model.state_dict(), "dino_deitsmall16_pretrain.pth")  # official DINO keys = timm's
    encoder = build_encoder("dino_vits16", weights=path)
    assert encoder.dim == 384
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = model.forward_features((images - MEAN) / STD)[:, 0]
    torch.testing.assert_close(encoder(images), expected, rtol=1e-4, atol=1e-5)
    # Another input size: timm's filter resamples the 14x14 position embeddings of the file.
    assert build_encoder("dino_vits16", weights=path, input_size=SIZE)(torch.rand(2, 3, 40, 40)).shape == (2, 384)


def test_dino_vitb16_dim():
    assert build_encoder("dino_vitb16", weights="random", input_size=SIZE).dim == 768


def test_default_weights_come_from_the_publishers_url(monkeypatch, trunk_state, images, reference_trunk):
    checkpoint = dino_checkpoint(trunk_state, _head_with_state("dino")[1])
    requested = []

    def fake_download(url, **kwargs):
        requested.append(url)
        return checkpoint

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    encoder = load_encoder("dino_resnet50", input_size=SIZE)  # weights=None: the default
    assert requested == [PUBLISHER_URLS["dino_resnet50"]]
    assert torch.equal(encoder(images), _reference_features(reference_trunk, images))


@pytest.mark.parametrize("name", ["dino_resnet50", "barlow_resnet50", "dino_vits16"])
def test_default_weights_offline_name_the_url_and_the_fix(monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = PUBLISHER_URLS[name].replace(".", r"\.")
    with pytest.raises(RCDMError, match=rf"could not download encoder weights from {url} .*encoder\.weights=PATH"):
        build_encoder(name, input_size=SIZE)


def test_random_resnet50_is_random_by_default_and_never_downloads(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", pytest.fail)
    default = build_encoder("random_resnet50", input_size=SIZE)
    assert default.weights_digest == build_encoder("random_resnet50", weights="random", input_size=SIZE).weights_digest


def test_vissl_file_given_to_dino_names_the_expected_format(tmp_path, trunk_state):
    path = _save(tmp_path, vissl_checkpoint(trunk_state, _head_with_state("simclr")[1]))
    with pytest.raises(RCDMError, match=r"are not a dino checkpoint \(entries that are not tensors: phase_idx, .*"
                                        r"expected an official DINO full checkpoint: a dict with 'teacher' holding "
                                        r"module\.backbone\.\* and module\.head\.mlp\.\* keys"):
        build_encoder("dino_resnet50", weights=path, input_size=SIZE)


def test_dino_file_given_to_simclr_names_the_expected_format(tmp_path, trunk_state):
    path = _save(tmp_path, dino_checkpoint(trunk_state, _head_with_state("dino")[1]))
    with pytest.raises(RCDMError, match=r"not a vissl checkpoint \(no classy_state_dict/base_model/model/trunk inside"
                                        r" \(top-level keys: student, teacher, epoch, args\)\); expected a VISSL"):
        build_encoder("simclr_resnet50", weights=path, input_size=SIZE)


def test_wrong_keys_are_listed_with_the_expected_format(tmp_path, trunk_state):
    trunk = {**trunk_state, "conv0.weight": torch.zeros(1)}
    del trunk["layer4.2.bn3.running_var"]
    path = _save(tmp_path, dino_checkpoint(trunk, _head_with_state("dino")[1]))
    with pytest.raises(RCDMError) as raised:
        build_encoder("dino_resnet50", weights=path, input_size=SIZE)
    message = str(raised.value)
    assert "missing (1): layer4.2.bn3.running_var; unexpected (1): conv0.weight." in message
    assert "the file must be an official DINO full checkpoint: a dict with 'teacher'" in message


def test_wrong_head_shape_is_reported(tmp_path, trunk_state):
    head = _head_with_state("dino")[1]
    head["3.weight"] = torch.zeros(128, 4096)
    path = _save(tmp_path, dino_checkpoint(trunk_state, head))
    with pytest.raises(RCDMError, match=r"do not fit dino_resnet50 projector head: wrong shape \(1\): mlp\.3\.weight: "
                                        r"found \(128, 4096\) vs expected \(256, 4096\)"):
        build_encoder("dino_resnet50", layer="head", weights=path, input_size=SIZE)


def test_backbone_only_file_serves_backbone_but_not_head(tmp_path, trunk_state, reference_trunk, images):
    path = _save(tmp_path, trunk_state, "dino_resnet50_pretrain.pth")  # the released backbone-only DINO file
    encoder = build_encoder("dino_resnet50", weights=path, input_size=SIZE)
    assert torch.equal(encoder(images), _reference_features(reference_trunk, images))
    with pytest.raises(RCDMError, match=r"hold no projector head, which layer=head needs; pass an official DINO"
                                        r".*or use layer=backbone"):
        build_encoder("dino_resnet50", layer="head", weights=path, input_size=SIZE)
