"""Results of an evaluation or a figure: a JSON next to the PNGs, and the same numbers and images sent to the logger.

Both `rcdm-eval` and `rcdm-figure` report through here, so a wandb dashboard shows exactly what the files hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger


def _leaves(results: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(flattened 'a/b/c' key, own key, value) of every non-dict value of a nested results dict."""
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _leaves(value, name)
        else:
            yield name, str(key), value


def numbers(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested results dict, flattened to 'a/b/c' keys (what loggers take)."""
    return {name: float(value) for name, _, value in _leaves(results, prefix)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def pngs(results: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every '*_png' path in a nested results dict, keyed like `numbers` (without the suffix)."""
    return {name.removesuffix("_png"): str(value) for name, key, value in _leaves(results, prefix)
            if key.endswith("_png") and value}


def write_json(path: str | Path, results: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)  # atomic: an interrupted run never leaves half a JSON behind
    return path


def publish(logger: Logger | None, results: Mapping[str, Any], prefix: str = "") -> None:
    """Send the numbers (and, to wandb, the PNGs) of `results` to a Lightning logger used outside a Trainer."""
    if logger is None:
        return
    logger.log_metrics(numbers(results, prefix), step=0)
    if isinstance(logger, WandbLogger):
        for key, path in pngs(results, prefix).items():
            logger.log_image(key, [path], step=0)
    logger.save()
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
