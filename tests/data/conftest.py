"""A stub frozen encoder: a fixed random linear map of the 8x8 average-pooled image, counting its calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class StubEncoder(nn.Module):
    """Not flip-invariant (the map is random), so an image and its mirror get different h."""

    def __init__(self, dim: int = 6, input_size: int = 24, layer: str = "trunk", fail_after: int | None = None):
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        self.register_buffer("weight", torch.randn(3 * 8 * 8, dim, generator=generator))
        self.dim, self.input_size, self.layer = dim, input_size, layer
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        pooled = F.adaptive_avg_pool2d(images.float(), 8).flatten(1)
        return pooled @ self.weight

    def identity(self) -> dict:
        return {
            "name": "stub",
            "layer": self.layer,
            "weights_digest": "0" * 8,
            "input_norm": "native",
            "input_size": self.input_size,
            "dim": self.dim,
        }


@pytest.fixture
def make_encoder():
    return StubEncoder
