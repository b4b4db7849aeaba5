"""README "Extending rcdm_lab": a dataset is one subclass, an encoder one registry entry (plus one YAML for Hydra)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from rcdm_lab.cli.train import encoder_spec
from rcdm_lab.data import RCDMDataModule, RCDMDataset
from rcdm_lab.encoders import build_encoder
from rcdm_lab.encoders.registry import ENCODER_BUILDERS, EncoderParts
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.probe import probing_targets
from rcdm_testing import compose_config

RESOLUTION, NUM_ITEMS, TOY_DIM = 8, 12, 5


class Stripes(RCDMDataset):
    """A toy dataset: item i is a vertical stripe in column i % 4 of a grey image, labelled by that column."""

    factor_kinds = {"column": "class"}

    def __init__(self, split: str, image_size: int) -> None:
        self.split, self.image_size = split, image_size

    def __len__(self) -> int:
        return NUM_ITEMS

    def __getitem__(self, index: int) -> dict:
        image = torch.full((3, self.image_size, self.image_size), 0.5)
        width = self.image_size // 4
        image[:, :, (index % 4) * width:(index % 4 + 1) * width] = 1.0
        return {"image": image, "labels": {"column": torch.tensor(index % 4)}}

    def fingerprint(self) -> str:
        return f"stripes-{self.split}-{self.image_size}"

    def class_names(self, factor: str) -> tuple[str, ...]:
        return ("left", "centre-left", "centre-right", "right")


def _toy_encoder_parts(input_size: int) -> EncoderParts:
    trunk = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 4 * 4, TOY_DIM))
    return EncoderParts(trunk, TOY_DIM, "toy", load_default=None)  # no published weights: random init


@pytest.fixture
def toy_encoder_registered(monkeypatch):
    # What the README asks of a new encoder: this one line in ENCODER_BUILDERS (registry.py).
    monkeypatch.setitem(ENCODER_BUILDERS, "toy", _toy_encoder_parts)


def _datamodule(tmp_path, cache: bool) -> RCDMDataModule:
    encoder = build_encoder(name="toy", input_size=16)
    datamodule = RCDMDataModule(Stripes, resolution=RESOLUTION, batch_size=4, cache=cache, flip=False,
                                cache_dir=str(tmp_path / "cache"), cache_batch_size=4, encoder=encoder)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize("cache", [True, False])
def test_a_toy_dataset_and_encoder_give_training_batches_and_representations(tmp_path, toy_encoder_registered,
                                                                            cache):
    datamodule = _datamodule(tmp_path, cache)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert batch["x0"].shape == (4, 3, RESOLUTION, RESOLUTION) and batch["h"].shape == (4, TOY_DIM)
    assert set(batch["labels"]) == {"column"}
    source = datamodule.source("val")
    images = torch.stack([Stripes("val", 16)[i]["image"] for i in range(NUM_ITEMS)])
    expected = build_encoder(name="toy", input_size=16)(images)
    assert torch.allclose(source.representations(), expected, atol=1e-5)
    # Stripes in different columns must look different to f, else the test above proves nothing.
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_a_toy_dataset_is_probed_by_its_own_factors(tmp_path, toy_encoder_registered):
    datamodule = _datamodule(tmp_path, cache=True)
    (target,) = probing_targets(datamodule.dataset("train"), datamodule.dataset("val"), num_bins=4)
    assert target.name == "column" and target.class_names == ["left", "centre-left", "centre-right", "right"]
    assert target.y_val.tolist() == [i % 4 for i in range(NUM_ITEMS)]


def test_a_toy_encoder_builds_through_hydra_with_one_yaml(tmp_path, toy_encoder_registered):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "toy.yaml").write_text("defaults:\n  - default\n  - _self_\nname: toy\n")
    cfg = compose_config("train", "encoder=toy", "encoder.input_size=16", f"hydra.searchpath=[file://{tmp_path}]")
    encoder = build_encoder(**encoder_spec(cfg))
    assert encoder.identity()["name"] == "toy" and encoder.dim == TOY_DIM
    assert encoder(torch.rand(2, 3, 20, 20)).shape == (2, TOY_DIM)


class PlainTorchDataset(Dataset):
    def __init__(self, split: str, image_size: int) -> None:
        self.image_size = image_size

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.zeros(3, self.image_size, self.image_size)}


class NoFingerprint(PlainTorchDataset, RCDMDataset):
    """Images and a length, as above, from the base class, but no fingerprint."""


@pytest.mark.parametrize(("dataset", "lacking"), [(NoFingerprint, "fingerprint"),
                                                  (PlainTorchDataset, "the RCDMDataset base class")])
def test_a_dataset_breaking_the_contract_is_refused_with_the_fix(tmp_path, toy_encoder_registered, dataset,
                                                                 lacking):
    datamodule = RCDMDataModule(dataset, resolution=RESOLUTION, cache_dir=str(tmp_path),
                                encoder=build_encoder(name="toy", input_size=16))
    with pytest.raises(RCDMError, match=f"lacks {lacking}.*subclass rcdm_lab.data.RCDMDataset"):
        datamodule.prepare_data()


def test_a_dataset_without_labels_has_none():
    assert NoFingerprint("train", 4).labels(0) == {} and NoFingerprint.factor_names == ()
