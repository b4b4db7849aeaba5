"""The pretraining methods (``method=supervised|simclr|vicreg|barlow``): typed settings and each one's loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain import losses
from rcdm_lab.pretrain.networks import ProjectorSettings

METHODS = ("supervised", "simclr", "vicreg", "barlow")
# The settings each method reads besides the shared ones (name, views, projector, lr, weight_decay).
_OWN_SETTINGS = {
    "supervised": ("target",),
    "simclr": ("temperature",),
    "vicreg": ("invariance", "variance", "covariance"),
    "barlow": ("lambd",),
}
_SHARED = ("name", "views", "projector", "lr", "weight_decay")
# Read by the run, not the method (conf/pretrain.yaml: epochs: ${method.epochs}, batch_size: ${method.batch_size}).
_RUN_SETTINGS = ("epochs", "batch_size")


def _positive(key: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise RCDMError(f"method.{key}={value!r} is not allowed: use a number {'>=' if allow_zero else '>'} 0")
    return float(value)


@dataclass(frozen=True)
class MethodSettings:
    """One method's objective, projector and optimiser settings (the ``method`` config group)."""

    name: str = "simclr"
    views: int = 2
    projector: ProjectorSettings = field(default_factory=ProjectorSettings)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2          # simclr
    invariance: float = 25.0          # vicreg
    variance: float = 25.0
    covariance: float = 1.0
    lambd: float = 5e-3               # barlow
    target: str = "shape"             # supervised: the labelled class factor it classifies

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise RCDMError(f"method.name={self.name!r} is not allowed: use one of {', '.join(METHODS)}")
        needed = 1 if self.name == "supervised" else 2
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views != needed:
            raise RCDMError(f"method.views={self.views!r} is not allowed for {self.name}: use {needed}")
        if self.name == "supervised" and (not isinstance(self.target, str) or not self.target):
            raise RCDMError(f"method.target={self.target!r} is not allowed: name a labelled class factor, e.g. shape")
        for key in ("lr", "temperature", "lambd"):
            _positive(key, getattr(self, key))
        for key in ("weight_decay", "invariance", "variance", "covariance"):
            _positive(key, getattr(self, key), allow_zero=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MethodSettings:
        config = dict(config)
        name = config.get("name")
        if name not in METHODS:
            raise RCDMError(f"method.name={name!r} is not allowed: use one of {', '.join(METHODS)}")
        for key in _RUN_SETTINGS:
            config.pop(key, None)
        allowed = set(_SHARED) | set(_OWN_SETTINGS[name])
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise RCDMError(f"method={name} has no setting(s) {', '.join(unknown)}; its settings: "
                            f"{', '.join(sorted(allowed))}")
        projector = config.pop("projector", None) or {}
        if not isinstance(projector, Mapping):
            raise RCDMError(f"method.projector must be a block (kind, hidden, dim), got {projector!r}")
        unknown = sorted(set(projector) - {"kind", "hidden", "dim"})
        if unknown:
            raise RCDMError(f"method.projector has no setting(s) {', '.join(unknown)}; use kind, hidden, dim")
        return cls(projector=ProjectorSettings(**projector), **config)

    @property
    def supervised(self) -> bool:
        return self.name == "supervised"

    def record(self) -> dict[str, Any]:
        """The settings this method uses (plain values), as stored in the encoder file."""
        own = {key: getattr(self, key) for key in _OWN_SETTINGS[self.name]}
        return {"name": self.name, "views": self.views, "projector": self.projector.record(), "lr": self.lr,
                "weight_decay": self.weight_decay, **own}

    def ssl_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        if self.name == "simclr":
            return losses.nt_xent(z1, z2, self.temperature)
        if self.name == "vicreg":
            return losses.vicreg(z1, z2, self.invariance, self.variance, self.covariance)
        if self.name == "barlow":
            return losses.barlow_twins(z1, z2, self.lambd)
        raise ValueError(f"{self.name} is not a two-view method")
