"""FrozenEncoder: frozen-ness, preprocessing, normalisation and input checks."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from rcdm_lab.encoders import FrozenEncoder, build_encoder
from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import resize_and_center_crop

SIZE = 32


@pytest.fixture(scope="module")
def resnet18() -> FrozenEncoder:
    return build_encoder("resnet18", weights="random", input_size=SIZE)


def test_no_parameter_requires_grad(resnet18):
    assert all(not p.requires_grad for p in resnet18.parameters())


def test_train_mode_keeps_eval_and_batchnorm_statistics(resnet18):
    before = {k: v.clone() for k, v in resnet18.trunk.state_dict().items() if "running" in k}
    assert resnet18.train() is resnet18
    assert not any(module.training for module in resnet18.modules())
    resnet18(torch.rand(2, 3, SIZE, SIZE))
    after = resnet18.trunk.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert after["bn1.num_batches_tracked"].item() == 0


def test_output_is_float32_without_graph_even_for_input_requiring_grad(resnet18):
    images = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64, requires_grad=True)
    features = resnet18(images)
    assert features.dtype == torch.float32
    assert features.grad_fn is None and not features.requires_grad


def test_autocast_does_not_change_the_function(resnet18):
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = resnet18(images)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, resnet18(images))


@pytest.mark.parametrize("height, width", [(20, 37), (300, 200), (SIZE, SIZE + 5)])
def test_any_image_size_gives_batch_by_dim(resnet18, height, width):
    assert resnet18(torch.rand(2, 3, height, width)).shape == (2, 512)


@pytest.mark.parametrize("height, width", [(20, 37), (37, 20), (300, 200), (64, 96), (33, 32), (32, 35)])
def test_preprocessing_matches_torchvision_resize_then_center_crop(height, width):
    images = torch.rand(2, 3, height, width)
    expected = TF.center_crop(TF.resize(images, SIZE, antialias=True), SIZE)
    assert torch.equal(resize_and_center_crop(images, SIZE), expected)


def test_preprocessing_only_crops_when_shorter_side_already_fits():
    images = torch.rand(1, 3, SIZE, SIZE + 10)
    assert torch.equal(resize_and_center_crop(images, SIZE), images[..., 5 : 5 + SIZE])


def test_native_normalisation_uses_imagenet_statistics(resnet18):
    images = torch.rand(2, 3, SIZE, SIZE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(resnet18(images), resnet18.trunk((images - mean) / std))


def test_official_normalisation_is_two_x_minus_one(resnet18):
    official = FrozenEncoder(resnet18.trunk, name="resnet18", layer="backbone", dim=512, input_size=SIZE,
                             input_norm="official", mean=(0.0,) * 3, std=(1.0,) * 3,
                             weights_digest=resnet18.weights_digest)
    images = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(official(images), official.trunk(images * 2 - 1))
    assert not torch.allclose(official(images), resnet18(images), atol=1e-3)


def test_identity_lists_what_defines_the_function(resnet18):
    assert resnet18.identity() == {
        "name": "resnet18",
        "layer": "backbone",
        "weights_digest": resnet18.weights_digest,
        "input_norm": "native",
        "input_size": SIZE,
        "dim": 512,
    }
    assert len(resnet18.weights_digest) == 16 and int(resnet18.weights_digest, 16) >= 0


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (2, 1, SIZE, SIZE), (2, 4, SIZE, SIZE), (1, 2, 3, 8, 8)])
def test_wrong_input_shape_is_a_user_error(resnet18, shape):
    with pytest.raises(RCDMError, match=r"shape \(B, 3, H, W\)"):
        resnet18(torch.rand(shape))


def test_integer_images_are_a_user_error(resnet18):
    with pytest.raises(RCDMError, match=r"float images in \[0, 1\].*images.float\(\) / 255"):
        resnet18(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))


def test_head_layer_applies_the_projector_after_the_trunk(resnet18):
    projector = torch.nn.Linear(512, 7)
    encoder = FrozenEncoder(resnet18.trunk, name="resnet18", layer="head", dim=7, input_size=SIZE,
                            input_norm="official", mean=(0.0,) * 3, std=(1.0,) * 3, weights_digest="x", head=projector)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = projector(resnet18.trunk(images * 2 - 1))
    torch.testing.assert_close(encoder(images), expected)
    assert not projector.weight.requires_grad
