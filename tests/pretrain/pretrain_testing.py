"""Helpers of the pretraining tests: a few-channel encoder trained a couple of steps by hand, and its export."""

from __future__ import annotations

from pathlib import Path

import torch

from rcdm_lab.pretrain.augment import AugmentSettings
from rcdm_lab.pretrain.export import write_encoder_file
from rcdm_lab.pretrain.methods import MethodSettings
from rcdm_lab.pretrain.module import PretrainModule
from rcdm_lab.pretrain.networks import NetworkSettings, ProjectorSettings

SIZE = 16
TINY_NETWORK = NetworkSettings(widths=(4, 8, 8), blocks=1)
TINY_PROJECTORS = {"mlp": ProjectorSettings("mlp", hidden=12, dim=6), "bn_mlp": ProjectorSettings("bn_mlp", 12, 10)}
TINY_METHODS = {
    "supervised": MethodSettings("supervised", views=1, projector=TINY_PROJECTORS["mlp"], lr=1e-2),
    "simclr": MethodSettings("simclr", views=2, projector=TINY_PROJECTORS["mlp"], lr=1e-2),
    "vicreg": MethodSettings("vicreg", views=2, projector=TINY_PROJECTORS["bn_mlp"], lr=1e-2),
    "barlow": MethodSettings("barlow", views=2, projector=TINY_PROJECTORS["bn_mlp"], lr=1e-2),
}


def tiny_module(method: str = "simclr", seed: int = 0) -> PretrainModule:
    torch.manual_seed(seed)
    return PretrainModule(TINY_NETWORK, TINY_METHODS[method], mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3],
                          total_steps=4, warmup_steps=1, num_classes=8 if method == "supervised" else None,
                          seed=seed)


def hand_trained(method: str = "simclr", seed: int = 0, steps: int = 2) -> PretrainModule:
    """``steps`` optimiser steps on random views, so weights and BatchNorm statistics are no longer at init."""
    module = tiny_module(method, seed)
    optimizer = module.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(seed)
    views = TINY_METHODS[method].views
    module.train()
    with torch.backends.mkldnn.flags(enabled=False):   # see conftest._one_thread: oneDNN crashed here on AVX2
        _train_steps(module, optimizer, generator, views, steps)
    return module.eval()


def _train_steps(module: PretrainModule, optimizer, generator: torch.Generator, views: int, steps: int) -> None:
    for _ in range(steps):
        batch = {"views": torch.rand(8, views, 3, SIZE, SIZE, generator=generator),
                 "label": torch.randint(0, 8, (8,), generator=generator)}
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()


def export(module: PretrainModule, path: Path, epoch: int = 2) -> Path:
    target = {"factor": "shape", "class_names": [str(i) for i in range(8)]} if module.method.supervised else None
    payload = module.encoder_payload(augment=AugmentSettings().record(), input_size=SIZE, epoch=epoch,
                                     dataset={"name": "ShapesDataset", "fingerprint": "0" * 16, "num_train": 8},
                                     target=target)
    return write_encoder_file(path, payload)
