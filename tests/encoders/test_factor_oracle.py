"""encoder=factors, the oracle control: its h must determine every factor, and it must refuse images it cannot know."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab.data import RCDMDataModule, ShapesDataset
from rcdm_lab.data.shapes import COLOUR_CLASSES, SHAPE_CLASSES, TEXTURE_CLASSES
from rcdm_lab.encoders import build_encoder
from rcdm_lab.errors import RCDMError

SIZE = 16


def _datamodule(tmp_path, encoder, num_train=24, num_val=8):
    def dataset(split, image_size):
        return ShapesDataset(split=split, image_size=image_size, num_train=num_train, num_val=num_val)

    module = RCDMDataModule(dataset=dataset, resolution=SIZE, batch_size=4, num_workers=0, flip=False,
                            cache_dir=tmp_path, source_size=SIZE)
    module.attach_encoder(encoder, device="cpu")
    return module


def test_oracle_h_determines_every_factor_of_train_and_val_items(tmp_path):
    encoder = build_encoder("factors", input_size=SIZE)
    assert encoder.dim == len(SHAPE_CLASSES) + 2 * len(COLOUR_CLASSES) + len(TEXTURE_CLASSES) + 4
    module = _datamodule(tmp_path, encoder)
    for split in ("train", "val"):
        dataset = module.dataset(split)
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        h = encoder(images)
        # The one-hot blocks give back the class labels exactly, in the layout's order.
        offset = 0
        for factor, classes in (("shape", SHAPE_CLASSES), ("object_colour", COLOUR_CLASSES),
                                ("background_colour", COLOUR_CLASSES), ("texture", TEXTURE_CLASSES)):
            block = h[:, offset:offset + len(classes)]
            assert torch.equal(block.sum(dim=1), torch.ones(len(h)))
            truth = torch.stack([dataset.labels(i)[factor] for i in range(len(dataset))])
            assert torch.equal(block.argmax(dim=1), truth)
            offset += len(classes)
        # Continuous factors: an affine (standardising) map of the true values, the same one for both splits.
        continuous = h[:, offset:]
        for column, factor in enumerate(("scale", "x", "y", "rotation")):
            truth = torch.stack([dataset.labels(i)[factor] for i in range(len(dataset))])
            ok = (truth - truth.mean()).abs() > 1e-6
            assert torch.corrcoef(torch.stack([continuous[:, column], truth]))[0, 1] > 0.9999 or not ok.any()


def test_oracle_finds_items_after_the_caches_uint8_round_trip(tmp_path):
    encoder = build_encoder("factors", input_size=SIZE)
    module = _datamodule(tmp_path, encoder)
    dataset = module.dataset("val")
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    rounded = images.mul(255).round().div(255)
    assert torch.equal(encoder(rounded), encoder(images))


def test_oracle_refuses_an_image_that_is_not_a_dataset_item(tmp_path):
    encoder = build_encoder("factors", input_size=SIZE)
    module = _datamodule(tmp_path, encoder)
    item = module.dataset("train")[0]["image"]
    with pytest.raises(RCDMError, match="only items of its dataset"):
        encoder(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(RCDMError, match="flip"):
        encoder(item.flip(-1)[None])


def test_oracle_without_a_data_module_and_with_a_bad_layer_say_what_to_do():
    encoder = build_encoder("factors", input_size=SIZE)
    with pytest.raises(RCDMError, match="given one by the data module"):
        encoder(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(RCDMError, match="layer=backbone"):
        build_encoder("factors", layer="head", input_size=SIZE)
    with pytest.raises(RCDMError, match="not a dataset class"):
        build_encoder("factors", weights="no.such.Dataset", input_size=SIZE)


def test_oracle_digest_is_a_function_of_its_layout():
    first = build_encoder("factors", input_size=SIZE).identity()
    assert first == build_encoder("factors", input_size=SIZE).identity()
    assert first["weights_digest"] != build_encoder("random_resnet50", input_size=32).identity()["weights_digest"]
