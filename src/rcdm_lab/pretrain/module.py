"""The LightningModule of rcdm-pretrain: trunk + projector (+ classifier) trained with one method's loss.

Inputs are normalised with the training images' per-channel mean and std, which the exported encoder file records
(``encoder=local`` feeds its trunk exactly that). AdamW with a linear warm-up and a cosine decay to zero, both
counted in optimiser steps fixed by (epochs, images, batch size): the schedule never depends on the machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from rcdm_lab.pretrain import losses
from rcdm_lab.pretrain.export import encoder_payload
from rcdm_lab.pretrain.methods import MethodSettings
from rcdm_lab.pretrain.networks import NetworkSettings, SmallResNet


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at ``step``: linear from 1/warmup to 1, then cosine down to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class PretrainModule(L.LightningModule):
    """Trains ``trunk`` (and ``projector``, ``classifier``) on batches of PretrainDataModule."""

    def __init__(self, network: NetworkSettings, method: MethodSettings, *, mean: Sequence[float],
                 std: Sequence[float], total_steps: int, warmup_steps: int = 0, num_classes: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.network_settings, self.method = network, method
        self.trunk = SmallResNet(network)
        self.projector = method.projector.build(self.trunk.dim)
        self.classifier: nn.Linear | None = None
        if method.supervised:
            if not num_classes:
                raise ValueError("the supervised method needs num_classes")
            self.classifier = nn.Linear(method.projector.dim, int(num_classes))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))
        self.total_steps, self.warmup_steps, self.seed = int(total_steps), int(warmup_steps), int(seed)
        # channels_last: oneDNN / cuDNN convolutions skip layout conversions (~1.5x on a 2-core CPU at 32 px).
        self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------------------------ forward
    def normalize(self, images: Tensor) -> Tensor:
        return ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def features(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> backbone features (B, widths[-1])."""
        return self.trunk(self.normalize(images))

    def forward(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> projector ("head") output (B, head dim)."""
        return self.projector(self.features(images))

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        views = batch["views"]
        size, count = views.shape[0], views.shape[1]
        z = self(views.flatten(0, 1)).view(size, count, -1)
        if self.method.supervised:
            logits = self.classifier(z[:, 0])
            loss = losses.supervised(logits, batch["label"])
            accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
            self.log("train/acc", accuracy, prog_bar=True, batch_size=size)
        else:
            loss = self.method.ssl_loss(z[:, 0], z[:, 1])
            if self.method.name == "vicreg":
                with torch.no_grad():
                    for key, value in losses.vicreg_terms(z[:, 0], z[:, 1]).items():
                        self.log(f"train/{key}", value, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for parameter in self.parameters():
            # No weight decay on biases and BatchNorm scales (the usual SSL practice).
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.method.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.method.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ export
    def encoder_payload(self, *, augment: dict[str, Any], input_size: int, epoch: int, dataset: dict[str, Any],
                        target: dict[str, Any] | None) -> dict[str, Any]:
        """What ``encoder.pt`` holds for the networks as they are now."""
        return encoder_payload(trunk=self.trunk, head=self.projector, classifier=self.classifier,
                               network=self.network_settings, projector=self.method.projector,
                               method=self.method.record(), augment=augment, input_size=input_size,
                               mean=self.mean, std=self.std, epoch=epoch, step=self.global_step, seed=self.seed,
                               dataset=dataset, target=target)
