"""The encoder file rcdm-pretrain writes (``encoder.pt``, ``encoder-epoch<N>.pt``) and ``encoder=local`` reads.

One ``torch.save`` of plain containers and tensors (it loads with ``weights_only=True``)::

    {"format": "rcdm_lab.pretrain.encoder", "version": 1,
     "network": {"arch": "small_resnet", "widths": [16, 32, 64], "blocks": 1},
     "projector": {"kind": "mlp", "hidden": 256, "dim": 128},
     "method": {...the method's settings...}, "augment": {...the augmentation settings...},
     "trunk": state dict, "head": state dict, "classifier": state dict or None (supervised only),
     "backbone_dim": 64, "head_dim": 128,
     "input_size": 32, "mean": [r, g, b], "std": [r, g, b],      # what the trunk was trained on
     "epoch": 15, "step": 180, "seed": 0,
     "dataset": {"name": "ShapesDataset", "fingerprint": "...", "num_train": 4000},
     "target": {"factor": "shape", "class_names": [...]} or None}

Written atomically (a killed run leaves the previous file or none). A later layout bumps ``version``; readers refuse
files newer than they know, naming the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.networks import NetworkSettings, ProjectorSettings, SmallResNet
from rcdm_lab.state_dicts import preview

FORMAT_TAG = "rcdm_lab.pretrain.encoder"
FORMAT_VERSION = 1
ARCHITECTURE = "small_resnet"
WEIGHTS_HINT = "encoder.weights=PATH to an rcdm-pretrain encoder.pt (e.g. outputs/pretrain/simclr-simclr/encoder.pt)"
_REQUIRED = ("network", "projector", "method", "augment", "trunk", "head", "backbone_dim", "head_dim", "input_size",
             "mean", "std", "epoch", "dataset")


@dataclass(frozen=True)
class EncoderFile:
    """A read and checked encoder file; ``payload`` is the whole dictionary."""

    path: Path
    payload: dict[str, Any]

    @property
    def network(self) -> NetworkSettings:
        return NetworkSettings.from_record(self.payload["network"])

    @property
    def projector(self) -> ProjectorSettings:
        return ProjectorSettings.from_record(self.payload["projector"])

    @property
    def trunk_state(self) -> dict[str, Tensor]:
        return dict(self.payload["trunk"])

    @property
    def head_state(self) -> dict[str, Tensor]:
        return dict(self.payload["head"])

    @property
    def backbone_dim(self) -> int:
        return int(self.payload["backbone_dim"])

    @property
    def head_dim(self) -> int:
        return int(self.payload["head_dim"])

    @property
    def input_size(self) -> int:
        return int(self.payload["input_size"])

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.payload["mean"])  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.payload["std"])  # type: ignore[return-value]

    @property
    def method(self) -> str:
        return str(self.payload["method"].get("name", "?"))

    @property
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    def build_trunk(self) -> SmallResNet:
        """The recorded architecture at random init (load the weights with ``trunk_state``)."""
        return SmallResNet(self.network)

    def build_head(self) -> nn.Sequential:
        return self.projector.build(self.backbone_dim)

    def describe(self) -> str:
        return (f"{self.method} encoder, {self.payload['network'].get('widths')} widths, epoch {self.epoch}, "
                f"{self.input_size} px")


def encoder_payload(*, trunk: nn.Module, head: nn.Module, classifier: nn.Module | None, network: NetworkSettings,
                    projector: ProjectorSettings, method: Mapping[str, Any], augment: Mapping[str, Any],
                    input_size: int, mean: Any, std: Any, epoch: int, step: int, seed: int,
                    dataset: Mapping[str, Any], target: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dictionary an encoder file holds (tensors cloned to the CPU, so the file never aliases training state)."""

    def state(module: nn.Module) -> dict[str, Tensor]:
        return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}

    return {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "network": {"arch": ARCHITECTURE, **network.record()},
        "projector": projector.record(),
        "method": dict(method),
        "augment": dict(augment),
        "trunk": state(trunk),
        "head": state(head),
        "classifier": state(classifier) if classifier is not None else None,
        "backbone_dim": int(network.dim),
        "head_dim": int(projector.dim),
        "input_size": int(input_size),
        "mean": [float(v) for v in torch.as_tensor(mean).flatten().tolist()],
        "std": [float(v) for v in torch.as_tensor(std).flatten().tolist()],
        "epoch": int(epoch),
        "step": int(step),
        "seed": int(seed),
        "dataset": dict(dataset),
        "target": dict(target) if target is not None else None,
    }


def write_encoder_file(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (from :func:`encoder_payload`) atomically; return the path."""
    from rcdm_lab.training.checkpoint_io import atomic_torch_save  # lazy: reading a file needs no Lightning

    path = Path(path)
    atomic_torch_save(dict(payload), path)
    return path


def read_encoder_file(path: str | Path) -> EncoderFile:
    """The encoder file at ``path``, checked; one RCDMError naming the fix for anything else."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise RCDMError(f"encoder weights file '{file}' does not exist; pass {WEIGHTS_HINT}")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for non-checkpoint bytes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RCDMError(f"'{file}' is not an rcdm-pretrain encoder file: torch cannot read it ({reason[:200]}); "
                        f"pass {WEIGHTS_HINT}") from error
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT_TAG:
        raise RCDMError(f"'{file}' is not an rcdm-pretrain encoder file ({_what_it_is(payload)}); pass "
                        f"{WEIGHTS_HINT}, or load a torchvision/timm state dict with its own encoder, e.g. "
                        "encoder=resnet18 encoder.weights=PATH")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RCDMError(f"'{file}' has an invalid rcdm-pretrain format version {version!r}; re-export it with "
                        "rcdm-pretrain (ckpt_path=last re-writes encoder.pt from the run's last checkpoint)")
    if version > FORMAT_VERSION:
        raise RCDMError(f"'{file}' is an rcdm-pretrain encoder file of format version {version}, newer than this "
                        f"rcdm_lab reads (version {FORMAT_VERSION}): upgrade rcdm_lab to read it")
    missing = [key for key in _REQUIRED if key not in payload]
    network = payload.get("network")
    if not missing and not (isinstance(network, Mapping) and network.get("arch") == ARCHITECTURE):
        missing.append(f"network.arch={ARCHITECTURE}")
    if missing:
        raise RCDMError(f"'{file}' is an incomplete rcdm-pretrain encoder file (missing {', '.join(missing)}); "
                        "re-export it with rcdm-pretrain")
    try:
        record = EncoderFile(file, dict(payload))
        record.network, record.projector  # noqa: B018 -- validates the recorded settings
    except (RCDMError, KeyError, TypeError, ValueError) as error:
        raise RCDMError(f"'{file}' records an invalid architecture ({error}); re-export it with rcdm-pretrain") \
            from error
    return record


def _what_it_is(payload: Any) -> str:
    if isinstance(payload, Mapping):
        keys = [str(key) for key in payload]
        if keys and all(isinstance(value, Tensor) for value in payload.values()):
            return f"it is a plain state dict: {preview(keys, 3)}"
        return f"top-level keys: {preview(keys, 5)}" if keys else "an empty dict"
    return f"it holds a {type(payload).__name__}"
