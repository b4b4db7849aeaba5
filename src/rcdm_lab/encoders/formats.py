"""Publishers' checkpoint layouts -> the trunk's and the projector head's state dicts, in our module key names.

A *format* knows where a publisher (torchvision, DINO, VISSL, VICReg, SwAV) puts the backbone and the projector
inside the object ``torch.load`` returns, and which prefixes to strip. It raises ``ValueError`` (turned into an
:class:`~rcdm_lab.errors.RCDMError` by the caller, with the format's description) when the object has another
layout. Key names are not checked here: ``weights.load_into`` compares them with the module and lists mismatches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rcdm_lab.state_dicts import preview


@dataclass(frozen=True)
class SplitWeights:
    """A checkpoint's backbone state dict and, when the file ships one, its projector head's."""

    trunk: dict[str, Tensor]
    head: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class CheckpointFormat:
    description: str  # completes "expected ...", for error messages
    split: Callable[[Any], SplitWeights]


def tensor_dict(value: Any, where: str | None = None) -> dict[str, Tensor]:
    """``value`` as a non-empty {str: Tensor} dict; ValueError naming ``where`` (a sub-dict) otherwise."""
    inside = f" in {where}" if where else ""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"expected a non-empty dict of tensors{inside}, got {type(value).__name__}")
    not_tensors = [str(key) for key, item in value.items() if not isinstance(item, Tensor)]
    if not_tensors:
        raise ValueError(f"entries that are not tensors{inside}: {preview(not_tensors)}")
    return {str(key): item for key, item in value.items()}


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """Remove each prefix once, in order, where a key starts with it (so "0.clf." then "0." stay distinct)."""
    prefixes = tuple(prefixes)
    stripped = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped


def take_prefix(state: Mapping[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(keys under ``prefix`` with it stripped, all other keys)."""
    taken = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    rest = {key: value for key, value in state.items() if not key.startswith(prefix)}
    return taken, rest


def drop_prefixes(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}


# Training checkpoints often nest the weights one level down under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model")


def plain_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """A raw state dict or one wrapped under "state_dict"/"model"; a DataParallel "module." prefix dropped."""
    if isinstance(checkpoint, Mapping):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    return strip_prefixes(tensor_dict(checkpoint), ["module."])


def _split_state_dict(checkpoint: Any) -> SplitWeights:
    return SplitWeights(plain_state_dict(checkpoint))


def _split_dino(checkpoint: Any) -> SplitWeights:
    # The released backbone-only file (dino_resnet50_pretrain.pth) is a plain state dict: backbone, no head.
    if not (isinstance(checkpoint, Mapping) and "teacher" in checkpoint):
        return SplitWeights(plain_state_dict(checkpoint))
    teacher = strip_prefixes(tensor_dict(checkpoint["teacher"], "checkpoint['teacher']"), ["module."])
    head, trunk = take_prefix(teacher, "head.")
    # last_layer is the 60000-way prototype layer of the DINO loss, not part of the representation.
    head = drop_prefixes(head, ("last_layer.",))
    return SplitWeights(strip_prefixes(trunk, ["backbone."]), head or None)


def _split_vissl(checkpoint: Any) -> SplitWeights:
    try:
        model = checkpoint["classy_state_dict"]["base_model"]["model"]
        trunk, heads = model["trunk"], model.get("heads") or {}
    except (KeyError, TypeError, AttributeError) as error:
        found = preview([str(key) for key in checkpoint]) if isinstance(checkpoint, Mapping) else "no dict"
        raise ValueError(f"no classy_state_dict/base_model/model/trunk inside (top-level keys: {found})") from error
    trunk = strip_prefixes(tensor_dict(trunk, "the VISSL trunk"), ["_feature_blocks."])
    # heads is VISSL's list of MLP heads applied in turn ("<head>.clf.<layer>.*"); our heads keep those names.
    head = tensor_dict(heads, "the VISSL heads") if heads else None
    return SplitWeights(trunk, head)


def _split_vicreg(checkpoint: Any) -> SplitWeights:
    # resnet50_fullckpt.pth holds the whole VICReg module under "model"; resnet50.pth is the bare backbone.
    state = plain_state_dict(checkpoint)
    head, trunk = take_prefix(state, "projector.")
    return SplitWeights(strip_prefixes(trunk, ["backbone."]), head or None)


def _split_swav(checkpoint: Any) -> SplitWeights:
    state = plain_state_dict(checkpoint)
    head, trunk = take_prefix(state, "projection_head.")
    # The prototypes are the clustering layer of the SwAV loss, not part of the representation.
    return SplitWeights(drop_prefixes(trunk, ("prototypes.",)), head or None)


CHECKPOINT_FORMATS: dict[str, CheckpointFormat] = {
    "state_dict": CheckpointFormat(
        "a plain state dict (torch.save(model.state_dict(), path); may be wrapped under 'state_dict' or 'model' "
        "and carry a 'module.' prefix)", _split_state_dict),
    "dino": CheckpointFormat(
        "an official DINO full checkpoint: a dict with 'teacher' holding module.backbone.* and module.head.mlp.* "
        "keys (or the backbone-only dino_resnet50_pretrain.pth state dict)", _split_dino),
    "vissl": CheckpointFormat(
        "a VISSL checkpoint: classy_state_dict -> base_model -> model -> trunk (_feature_blocks.* keys) and heads "
        "(a list of MLP heads: 0.clf.*, 1.clf.*, ...)", _split_vissl),
    "vicreg": CheckpointFormat(
        "an official VICReg full checkpoint: a dict with 'model' holding module.backbone.* and module.projector.* "
        "keys (or the backbone-only resnet50.pth state dict)", _split_vicreg),
    "swav": CheckpointFormat(
        "an official SwAV checkpoint (torch hub swav_800ep_pretrain.pth.tar): module.* ResNet-50 keys plus "
        "module.projection_head.* and module.prototypes.*", _split_swav),
}
