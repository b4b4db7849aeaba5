"""The small encoders rcdm-pretrain trains: a three-stage ResNet for 32-64 px images, and each method's projector.

The trunk is a CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2):
a 3x3 stride-1 stem, stages of basic blocks whose first block halves the resolution (except the first stage's),
then global average pooling: ``(B, 3, S, S)`` normalised images -> ``(B, widths[-1])`` backbone features.
The projector ("head", ``layer=head``) is an MLP built with :func:`rcdm_lab.encoders.heads.mlp`, so its
``nn.Sequential`` keys are those of the publishers' heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from rcdm_lab.encoders.heads import mlp
from rcdm_lab.errors import RCDMError

PROJECTOR_KINDS = ("mlp", "bn_mlp")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected, when the shape changes) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@dataclass(frozen=True)
class NetworkSettings:
    """The trunk's architecture: channel width of each stage and basic blocks per stage."""

    widths: tuple[int, ...] = (16, 32, 64)
    blocks: int = 1

    def __post_init__(self) -> None:
        widths = tuple(self.widths) if isinstance(self.widths, Sequence) and not isinstance(self.widths, str) else ()
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise RCDMError(f"network.widths={self.widths!r} is not allowed: use a list of positive channel widths, "
                            "one per stage (e.g. [16, 32, 64])")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1:
            raise RCDMError(f"network.blocks={self.blocks!r} is not allowed: use an integer >= 1 (basic blocks per "
                            "stage)")
        object.__setattr__(self, "widths", widths)

    @property
    def dim(self) -> int:
        return self.widths[-1]

    def record(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "blocks": self.blocks}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NetworkSettings:
        return cls(widths=tuple(int(w) for w in record["widths"]), blocks=int(record["blocks"]))


class SmallResNet(nn.Module):
    """Normalised images (B, 3, S, S) -> globally average-pooled features (B, widths[-1])."""

    def __init__(self, settings: NetworkSettings) -> None:
        super().__init__()
        self.settings = settings
        first = settings.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, first, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(first),
                                  nn.ReLU(inplace=True))
        stages, channels = [], first
        for index, width in enumerate(settings.widths):
            blocks = [BasicBlock(channels, width, stride=1 if index == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(settings.blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.dim = settings.dim
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.stages(self.stem(images)).mean(dim=(2, 3))


@dataclass(frozen=True)
class ProjectorSettings:
    """A method's projector: ``mlp`` = Linear-ReLU-Linear (SimCLR); ``bn_mlp`` = 2x [Linear-BN-ReLU], Linear
    (VICReg, Barlow Twins). ``hidden`` is the width of the hidden layer(s), ``dim`` the output's."""

    kind: str = "mlp"
    hidden: int = 128
    dim: int = 128

    def __post_init__(self) -> None:
        if self.kind not in PROJECTOR_KINDS:
            raise RCDMError(f"method.projector.kind={self.kind!r} is not allowed: use one of "
                            f"{', '.join(PROJECTOR_KINDS)}")
        for key in ("hidden", "dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RCDMError(f"method.projector.{key}={value!r} is not allowed: use an integer >= 1")

    def dims(self, in_dim: int) -> list[int]:
        return [in_dim, self.hidden, self.dim] if self.kind == "mlp" else [in_dim, self.hidden, self.hidden, self.dim]

    def build(self, in_dim: int) -> nn.Sequential:
        return mlp(self.dims(in_dim), batch_norm=self.kind == "bn_mlp")

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProjectorSettings:
        return cls(kind=str(record["kind"]), hidden=int(record["hidden"]), dim=int(record["dim"]))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
