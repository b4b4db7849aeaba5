"""The end-of-training report of rcdm-pretrain: linear-probe top-1 of labelled factors from backbone and head.

The exported file is loaded back through ``encoder=local`` (so the report also checks the round trip), the train
split's unaugmented images are encoded, and one linear probe per factor (:func:`rcdm_lab.metrics.probe
.train_linear_probe`) is fitted on them and scored on the val split, with the chance rate of each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.encoders.frozen import FrozenEncoder
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.probe import probing_targets, train_linear_probe
from rcdm_lab.pretrain.data import PretrainDataModule

LAYERS = ("backbone", "head")


@torch.no_grad()
def encode(encoder: FrozenEncoder, images: Tensor, batch_size: int = 512) -> Tensor:
    """(N, 3, S, S) uint8 images -> (N, dim) representations."""
    return torch.cat([encoder(images[i:i + batch_size].float() / 255.0) for i in range(0, len(images), batch_size)])


def probe_report(encoder_path: str | Path, datamodule: PretrainDataModule, *, steps: int = 300,
                 weight_decay: float = 1e-4, continuous_bins: int = 4, factors: Sequence[str] | None = None,
                 continuous: bool = True, seed: int = 0) -> dict[str, Any]:
    """Probe accuracies of ``factors`` (None: every labelled factor, continuous ones only with ``continuous``) from
    both layers of the encoder file."""
    from rcdm_lab.encoders import build_encoder

    train_set, val_set = datamodule.dataset("train"), datamodule.dataset("val")
    targets = probing_targets(train_set, val_set, int(continuous_bins)) if train_set.factor_kinds else []
    if factors is not None:
        known = [target.name for target in targets]
        unknown = [name for name in factors if name not in known]
        if unknown:
            raise RCDMError(f"probe.factors: {', '.join(unknown)} not labelled in {type(train_set).__name__}; "
                            f"its factors: {', '.join(known) or 'none'}")
        targets = [target for target in targets if target.name in factors]
    elif not continuous:
        targets = [target for target in targets if target.kind == "class"]
    images = {split: datamodule.images(split) for split in ("train", "val")}
    rows = []
    for layer in LAYERS:
        encoder = build_encoder("local", layer=layer, weights=str(encoder_path))
        h_train, h_val = encode(encoder, images["train"]), encode(encoder, images["val"])
        for target in targets:
            start = time.perf_counter()
            _, metrics = train_linear_probe(h_train, target.y_train, h_val, target.y_val,
                                            num_classes=len(target.class_names), class_names=target.class_names,
                                            factor=target.name, steps=int(steps), weight_decay=float(weight_decay),
                                            seed=int(seed), encoder_identity=encoder.identity())
            rows.append({"layer": layer, "dim": encoder.dim, "factor": target.name, "kind": target.kind,
                         "classes": len(target.class_names), "train_acc": metrics["train_acc"],
                         "val_acc": metrics["val_acc"], "chance": metrics["chance"],
                         "seconds": round(time.perf_counter() - start, 2)})
    return {"encoder": str(encoder_path), "dataset": type(train_set).__name__, "num_train": len(train_set),
            "num_val": len(val_set), "continuous_bins": int(continuous_bins),
            "probe": {"steps": int(steps), "weight_decay": float(weight_decay)}, "rows": rows}


def format_table(report: dict[str, Any]) -> str:
    """factor | backbone val acc | head val acc | chance, one line per factor."""
    by_factor: dict[str, dict[str, Any]] = {}
    for row in report["rows"]:
        by_factor.setdefault(row["factor"], {"kind": row["kind"], "classes": row["classes"],
                                             "chance": row["chance"]})[row["layer"]] = row["val_acc"]
    header = f"{'factor':<20} {'classes':>7} {'backbone':>9} {'head':>7} {'chance':>7}"
    lines = [header, "-" * len(header)]
    for factor, entry in by_factor.items():
        name = factor + (" *" if entry["kind"] == "continuous" else "")
        lines.append(f"{name:<20} {entry['classes']:>7} {entry.get('backbone', float('nan')):>9.3f} "
                     f"{entry.get('head', float('nan')):>7.3f} {entry['chance']:>7.3f}")
    if any(entry["kind"] == "continuous" for entry in by_factor.values()):
        lines.append(f"* continuous factor, binned into {report['continuous_bins']} quantile classes of the train "
                     "split")
    lines.append("val top-1 of a linear probe on the train split's unaugmented images; chance: always predicting the "
                 "most frequent training class")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
