"""The frozen encoder f whose representation h = f(x) conditions the diffusion model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import resize_and_center_crop

INPUT_NORMS = ("native", "official")


class FrozenEncoder(nn.Module):
    """Images in [0, 1] (B, 3, H, W), any H, W -> representation (B, dim): float32, no grad, always eval mode.

    ``input_norm="native"`` feeds the encoder ``(x - mean) / std`` with its own training statistics;
    ``"official"`` feeds ``2x - 1``, the convention of RCDM's released models.
    """

    def __init__(self, trunk: nn.Module, *, name: str, layer: str, dim: int, input_size: int, input_norm: str,
                 mean: tuple[float, float, float], std: tuple[float, float, float], weights_digest: str,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise RCDMError(
                f"unknown encoder.input_norm '{input_norm}'; use one of: {', '.join(INPUT_NORMS)}"
            )
        self.trunk = trunk
        self.head = head
        self.name, self.layer, self.dim = name, layer, dim
        self.input_size, self.input_norm = input_size, input_norm
        self.weights_digest = weights_digest
        # Non-persistent: the encoder's state dict is its network weights, nothing else.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1).float(), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1).float(), persistent=False)
        self.requires_grad_(False)
        # channels_last lets oneDNN / cuDNN convolutions skip layout conversions (measurably faster on CPU).
        self.to(memory_format=torch.channels_last)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenEncoder:
        # f must be the same function in every phase: BatchNorm statistics and dropout never switch on.
        return super().train(False)

    def attach_data(self, datasets: Callable[[str], Any]) -> None:
        """Give a trunk that reads dataset items (the `encoder=factors` oracle) the data module's `dataset(split)`."""
        if hasattr(self.trunk, "attach_data"):
            self.trunk.attach_data(datasets)

    def normalize(self, images: Tensor) -> Tensor:
        if self.input_norm == "official":
            return images * 2 - 1
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.forward_with_input_grad(images)

    def forward_with_input_grad(self, images: Tensor) -> Tensor:
        """h = f(images), differentiable w.r.t. the images (FGSM); the weights stay frozen (requires_grad=False)."""
        _check_images(images)
        # Autocast off: f must give the same h when filling a cache in fp32 and inside a bf16 training step.
        with torch.autocast(device_type=images.device.type, enabled=False):
            pixels = resize_and_center_crop(images.float(), self.input_size)
            pixels = self.normalize(pixels).contiguous(memory_format=torch.channels_last)
            features = self.trunk(pixels)
            if self.head is not None:
                features = self.head(features)
        return features.float()

    def identity(self) -> dict:
        """What defines f (JSON-serialisable): the key for representation caches and checkpoint metadata."""
        return {
            "name": self.name,
            "layer": self.layer,
            "weights_digest": self.weights_digest,
            "input_norm": self.input_norm,
            "input_size": self.input_size,
            "dim": self.dim,
        }

    def __repr__(self) -> str:
        # One line: the full network printout says nothing the identity does not, and floods logs.
        return f"FrozenEncoder({', '.join(f'{key}={value!r}' for key, value in self.identity().items())})"


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise RCDMError(
            f"the encoder expects an image batch of shape (B, 3, H, W), got {tuple(images.shape)}; "
            "add a batch dimension with images[None] / repeat grayscale with images.expand(-1, 3, -1, -1)"
        )
    if not images.is_floating_point():
        raise RCDMError(
            f"the encoder expects float images in [0, 1], got dtype {images.dtype}; "
            "convert with images.float() / 255"
        )
