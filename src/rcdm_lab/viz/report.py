"""Results of an evaluation or a figure: a JSON next to the PNGs, and the same numbers and images sent to the logger.

Both `rcdm-eval` and `rcdm-figure` report through here, so a wandb dashboard shows exactly what the files hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger


def numbers(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested results dict, flattened to 'a/b/c' keys (what loggers take)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def pngs(results: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Every '*_png' path in a nested results dict, keyed like `numbers`."""
    found: dict[str, str] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            found.update(pngs(value, name))
        elif str(key).endswith("_png") and value:
            found[name.removesuffix("_png")] = str(value)
    return found


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
