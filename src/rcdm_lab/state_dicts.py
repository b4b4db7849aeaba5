"""What does not fit when a state dict meets the module that should hold it -- for errors that list it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor


def preview(items: list[str], limit: int = 10) -> str:
    """The first `limit` items, comma-separated, with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


@dataclass(frozen=True)
class StateDictMismatch:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]   # "key: found (a, b) vs expected (c, d)"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def listings(self, limit: int = 10) -> list[str]:
        """One "label (count): first keys" line per non-empty kind of mismatch."""
        kinds = (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.wrong_shape))
        return [f"{label} ({len(keys)}): {preview(keys, limit)}" for label, keys in kinds if keys]


def compare_state_dicts(found: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> StateDictMismatch:
    """Keys `expected` has that `found` lacks, keys only `found` has, and shared keys of different shapes."""
    return StateDictMismatch(
        missing=[key for key in expected if key not in found],
        unexpected=[key for key in found if key not in expected],
        wrong_shape=[
            f"{key}: found {tuple(found[key].shape)} vs expected {tuple(expected[key].shape)}"
            for key in expected
            if key in found and found[key].shape != expected[key].shape
        ],
    )
