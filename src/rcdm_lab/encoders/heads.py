"""Projector heads of the SSL encoders, with the module layout of the publishers' checkpoints (same key names)."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], *, batch_norm: bool, activation: type[nn.Module] = nn.ReLU, bias: bool = True,
        last_bias: bool = True) -> nn.Sequential:
    """Linear[-BN]-activation blocks, then a bare Linear: indices match the publishers' nn.Sequential keys."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(dims[:-2], dims[1:-1], strict=True):
        layers.append(nn.Linear(width_in, width_out, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(activation())
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    return nn.Sequential(*layers)


class DinoHead(nn.Module):
    """DINO's projector up to the 256-d bottleneck (keys ``mlp.*``); the prototype ``last_layer`` is not used."""

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 4096, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, bottleneck_dim], batch_norm=True, activation=nn.GELU)

    def forward(self, features):
        return self.mlp(features)


def dino_head() -> nn.Module:
    return DinoHead()


class VisslMLP(nn.Module):
    """One VISSL "mlp" head: ``clf`` = Linear [-BatchNorm1d] [-ReLU] (keys ``clf.<i>.*``, as VISSL writes them).

    VISSL skips the BatchNorm and ReLU after the last Linear unless ``skip_last_layer_relu_bn=False``.
    """

    def __init__(self, dims: list[int], *, use_bn: bool = False, use_relu: bool = False, use_bias: bool = True,
                 skip_last_layer_relu_bn: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(width_in, width_out, bias=use_bias))
            if i == len(dims) - 2 and skip_last_layer_relu_bn:
                break
            if use_bn:
                layers.append(nn.BatchNorm1d(width_out))
            if use_relu:
                layers.append(nn.ReLU())
        self.clf = nn.Sequential(*layers)

    def forward(self, features):
        return self.clf(features)


def simclr_head() -> nn.Module:
    """VISSL SimCLR's two heads (keys 0.clf.0.*, 1.clf.0.*): Linear 2048->2048, ReLU, Linear 2048->128."""
    return nn.Sequential(VisslMLP([2048, 2048], use_relu=True, skip_last_layer_relu_bn=False),
                         VisslMLP([2048, 128]))


def barlow_head() -> nn.Module:
    """VISSL Barlow Twins' three heads: 2x [Linear (no bias) -BN-ReLU] to 8192, then Linear 8192->8192 (no bias)."""
    hidden = {"use_bn": True, "use_relu": True, "use_bias": False, "skip_last_layer_relu_bn": False}
    return nn.Sequential(VisslMLP([2048, 8192], **hidden), VisslMLP([8192, 8192], **hidden),
                         VisslMLP([8192, 8192], use_bias=False))


def vicreg_head() -> nn.Module:
    return mlp([2048, 8192, 8192, 8192], batch_norm=True, last_bias=False)


def swav_head() -> nn.Module:
    return mlp([2048, 2048, 128], batch_norm=True)


# name -> (factory, output dim)
HEADS = {
    "dino": (dino_head, 256),
    "simclr": (simclr_head, 128),
    "barlow": (barlow_head, 8192),
    "vicreg": (vicreg_head, 8192),
    "swav": (swav_head, 128),
}
