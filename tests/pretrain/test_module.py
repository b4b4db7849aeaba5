"""The networks and the LightningModule: shapes, projector layouts, and a few real training steps per method."""

from __future__ import annotations

import warnings

import pytest
import torch
from pretrain_testing import SIZE, TINY_METHODS, tiny_module

from rcdm_lab.data import ShapesDataset
from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.augment import AugmentSettings
from rcdm_lab.pretrain.data import PretrainDataModule
from rcdm_lab.pretrain.methods import MethodSettings
from rcdm_lab.pretrain.module import warmup_cosine
from rcdm_lab.pretrain.networks import NetworkSettings, ProjectorSettings, SmallResNet, parameter_count


def test_the_trunk_is_a_three_stage_resnet_with_a_stride_one_stem():
    network = SmallResNet(NetworkSettings((16, 32, 64), blocks=1))
    stem = network.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert [stage[0].conv1.stride for stage in network.stages] == [(1, 1), (2, 2), (2, 2)]
    assert network(torch.rand(2, 3, 32, 32)).shape == (2, 64) and network(torch.rand(2, 3, 48, 48)).shape == (2, 64)
    assert 70_000 < parameter_count(network) < 90_000
    assert parameter_count(SmallResNet(NetworkSettings((32, 64, 128), 1))) == pytest.approx(0.31e6, rel=0.05)
    assert len(SmallResNet(NetworkSettings((8, 8, 8), blocks=2)).stages[1]) == 2


def test_projector_layouts():
    simclr = ProjectorSettings("mlp", 256, 128).build(64)
    assert [type(m).__name__ for m in simclr] == ["Linear", "ReLU", "Linear"] and simclr[-1].out_features == 128
    expanding = ProjectorSettings("bn_mlp", 512, 512).build(64)
    assert [type(m).__name__ for m in expanding] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d",
                                                     "ReLU", "Linear"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"widths": []}, "network.widths"), ({"widths": [16, 0]}, "network.widths"), ({"blocks": 0}, "network.blocks"),
])
def test_bad_network_settings(settings, message):
    with pytest.raises(RCDMError, match=message):
        NetworkSettings(**settings)


@pytest.mark.parametrize(("config", "message"), [
    ({"name": "byol"}, "method.name='byol' is not allowed: use one of supervised, simclr, vicreg, barlow"),
    ({"name": "simclr", "temperature": 0}, "method.temperature=0"),
    ({"name": "simclr", "views": 1}, "method.views=1 is not allowed for simclr: use 2"),
    ({"name": "simclr", "lambd": 0.1}, "method=simclr has no setting.s. lambd"),
    ({"name": "vicreg", "projector": {"kind": "deep"}}, "method.projector.kind='deep'"),
])
def test_bad_method_settings(config, message):
    with pytest.raises(RCDMError, match=message):
        MethodSettings.from_config(config)


def test_the_schedule_warms_up_then_decays_to_zero():
    factors = [warmup_cosine(step, 2, 10) for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))


def _batch(method: str, size: int = 16) -> dict:
    datamodule = PretrainDataModule(lambda split, image_size: ShapesDataset(split, image_size, num_train=size,
                                                                            num_val=4),
                                    image_size=SIZE, batch_size=size, augment=AugmentSettings(),
                                    views=TINY_METHODS[method].views,
                                    target="shape" if method == "supervised" else None)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


@pytest.mark.parametrize("method", list(TINY_METHODS))
def test_every_method_trains_a_few_steps(method):
    module = tiny_module(method)
    batch = _batch(method)
    assert batch["views"].shape == (16, TINY_METHODS[method].views, 3, SIZE, SIZE)
    assert (batch["label"] >= 0).all() if method == "supervised" else (batch["label"] == -1).all()
    optimizer = module.configure_optimizers()["optimizer"]
    before = {key: value.clone() for key, value in module.state_dict().items()}
    module.train()
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for _ in range(4):  # the same batch: the loss must go down
            optimizer.zero_grad()
            loss = module.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    changed = [key for key, value in module.state_dict().items() if not torch.equal(value, before[key])]
    assert any(key.startswith("trunk.") for key in changed) and any(key.startswith("projector.") for key in changed)
    assert any(key.endswith("running_mean") for key in changed)
    assert (module.classifier is not None) == (method == "supervised")


def test_weight_decay_spares_biases_and_batchnorm():
    module = tiny_module("vicreg")
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == sum(
        p.numel() for p in module.parameters())


def test_an_unlabelled_or_unknown_target_names_the_class_factors():
    def make(target):
        return PretrainDataModule(lambda split, image_size: ShapesDataset(split, image_size, num_train=8, num_val=2),
                                  image_size=SIZE, batch_size=4, augment=AugmentSettings(), views=1, target=target)

    with pytest.raises(RCDMError, match="method.target='colour' is not a labelled class factor of ShapesDataset; "
                                        "its class factors: shape, object_colour, background_colour, texture"):
        make("colour").check()
    with pytest.raises(RCDMError, match="method.target='scale' is not a labelled class factor"):
        make("scale").check()  # continuous: not a class factor
    assert make("texture").check() is None


def test_a_dataset_without_labels_cannot_be_supervised():
    from rcdm_lab.data import RCDMDataset

    class Unlabelled(RCDMDataset):
        def __init__(self, split, image_size):
            self.size = image_size

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"image": torch.zeros(3, self.size, self.size)}

        def fingerprint(self):
            return "unlabelled"

    datamodule = PretrainDataModule(Unlabelled, image_size=SIZE, batch_size=2, augment=AugmentSettings(), views=1,
                                    target="shape")
    with pytest.raises(RCDMError, match="Unlabelled; it has no labelled class factors .use an SSL method"):
        datamodule.check()


def test_pixel_stats_are_the_training_images_channel_statistics():
    datamodule = PretrainDataModule(lambda split, image_size: ShapesDataset(split, image_size, num_train=8, num_val=2),
                                    image_size=SIZE, batch_size=4, augment=AugmentSettings())
    mean, std = datamodule.pixel_stats()
    images = torch.stack([ShapesDataset("train", SIZE, num_train=8)[i]["image"] for i in range(8)])
    assert torch.allclose(mean, images.mean(dim=(0, 2, 3)), atol=3e-3)
    assert torch.allclose(std, images.std(dim=(0, 2, 3)), atol=3e-3)
