"""build_encoder: names, dims, layers, deterministic random init, and the errors users can fix."""

import pytest
import torch

from rcdm_lab.encoders import FrozenEncoder, build_encoder, known_encoders
from rcdm_lab.encoders.weights import state_digest
from rcdm_lab.errors import RCDMError

SIZE = 32


def test_known_encoders_are_the_built_in_names():
    assert known_encoders() == [
        "barlow_resnet50", "dino_resnet50", "dino_vitb16", "dino_vits16", "factors", "local", "mobilenet_v2",
        "random_resnet50", "resnet18", "resnet50", "simclr_resnet50", "supervised_resnet50", "swav_resnet50",
        "vicreg_resnet50",
    ]


@pytest.fixture(scope="module")
def random_encoders() -> dict[str, FrozenEncoder]:
    return {name: build_encoder(name, weights="random", input_size=SIZE)
            for name in ("mobilenet_v2", "resnet18", "timm:resnet18")}


@pytest.mark.parametrize("name, dim", [("mobilenet_v2", 1280), ("resnet18", 512), ("timm:resnet18", 512)])
def test_backbone_dims(random_encoders, name, dim):
    encoder = random_encoders[name]
    assert encoder.dim == dim
    assert encoder(torch.rand(2, 3, SIZE, SIZE)).shape == (2, dim)


def test_timm_vit_is_built_for_the_requested_input_size():
    encoder = build_encoder("timm:vit_tiny_patch16_224", weights="random", input_size=SIZE)
    assert encoder(torch.rand(2, 3, 40, 50)).shape == (2, 192)


def test_default_input_size_is_224():
    assert build_encoder("mobilenet_v2", weights="random").input_size == 224


def test_random_init_is_deterministic_whatever_the_global_rng_state(random_encoders):
    first = random_encoders["resnet18"]
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = build_encoder("resnet18", weights="random", input_size=SIZE)
    assert torch.equal(torch.random.get_rng_state(), state), "building must not consume the global RNG"
    assert first.weights_digest == second.weights_digest
    images = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(first(images), second(images))


def test_digest_is_of_the_network_state():
    encoder = build_encoder("mobilenet_v2", weights="random", input_size=SIZE)
    assert state_digest([encoder.trunk]) == encoder.weights_digest
    with torch.no_grad():
        encoder.trunk.features[0][0].weight[0, 0, 0, 0] += 1
    assert state_digest([encoder.trunk]) != encoder.weights_digest


def test_random_init_differs_between_architectures(random_encoders):
    assert len({encoder.weights_digest for encoder in random_encoders.values()}) == len(random_encoders)


def test_none_weights_means_default():
    assert build_encoder("mobilenet_v2", weights=None).weights_digest == \
        build_encoder("mobilenet_v2", weights="default").weights_digest


def test_unknown_name_suggests_the_closest_and_lists_known():
    expected = (r"unknown encoder 'mobilnet_v2'; did you mean 'mobilenet_v2'\? "
                r"Known: barlow_resnet50, .*, vicreg_resnet50, or any timm model as timm:<name>")
    with pytest.raises(RCDMError, match=expected):
        build_encoder("mobilnet_v2")


def test_unknown_timm_model_is_a_user_error_with_suggestion():
    with pytest.raises(RCDMError, match=r"unknown timm model 'resnet_18'; did you mean timm:resnet18"):
        build_encoder("timm:resnet_18", weights="random")


def test_head_on_encoder_without_projector():
    with pytest.raises(RCDMError, match=r"^mobilenet_v2 has no projector head; use layer=backbone$"):
        build_encoder("mobilenet_v2", layer="head", weights="random")


def test_unknown_layer():
    with pytest.raises(RCDMError, match=r"unknown encoder.layer 'trunk'; use one of: backbone, head, layer1, layer2, "
                                        r"layer3, layer4$"):
        build_encoder("mobilenet_v2", layer="trunk", weights="random")


def test_unknown_input_norm():
    with pytest.raises(
        RCDMError, match=r"unknown encoder.input_norm 'imagenet'; use one of: native, official$"
    ):
        build_encoder("mobilenet_v2", weights="random", input_norm="imagenet")


@pytest.mark.parametrize("size", [0, -3, 22.5, "224", True])
def test_bad_input_size(size):
    with pytest.raises(RCDMError, match="encoder.input_size must be a positive integer"):
        build_encoder("mobilenet_v2", weights="random", input_size=size)
