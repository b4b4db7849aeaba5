"""rcdm-probe: linear-probe accuracy of each labelled factor from a frozen encoder's h (Hydra app, conf/probe.yaml).

Trains one linear classifier per factor on the cached, unflipped representations of the train split and reports
top-1 on the val split: the paper's trunk-vs-head comparison. Writes probe.json and probe.pt to the run folder.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from rcdm_lab.cli.common import hydra_entry, require_values
from rcdm_lab.cli.train import encoder_spec
from rcdm_lab.data.cache import RepresentationCache
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.probe import (
    LinearProbe,
    bin_names,
    bin_values,
    quantile_bins,
    save_probes,
    train_linear_probe,
)


@dataclass
class Factor:
    """One probing target: class indices per split, and what each class means."""

    name: str
    kind: str  # "class", or "continuous" (binned into quantile classes)
    y_train: Tensor
    y_val: Tensor
    class_names: list[str]


def factor_kinds(dataset: Any) -> dict[str, str]:
    """{factor: "class" | "continuous"}; datasets without factor metadata (folder, CIFAR) have one "class"."""
    names = getattr(dataset, "factor_names", None)
    if names is None:
        return {name: "class" for name in dataset.labels(0)}
    return {name: dataset.factor_kinds[name] for name in names}


def _class_names(dataset: Any, factor: str, num_classes: int) -> list[str]:
    if hasattr(dataset, "class_names"):
        return list(dataset.class_names(factor))
    classes = getattr(dataset, "classes", None)
    if factor == "class" and classes is not None and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


def label_columns(dataset: Any) -> dict[str, Tensor]:
    """{factor: (N,) labels} of every item, without rendering or decoding images."""
    rows = [dataset.labels(i) for i in range(len(dataset))]
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def probing_targets(train_set: Any, val_set: Any, num_bins: int) -> list[Factor]:
    """Every labelled factor as class indices; continuous ones binned at the TRAIN split's quantiles."""
    train_labels, val_labels = label_columns(train_set), label_columns(val_set)
    factors = []
    for name, kind in factor_kinds(train_set).items():
        y_train, y_val = train_labels[name], val_labels[name]
        if kind == "class":
            num_classes = int(train_set.num_classes(name))
            factors.append(Factor(name, kind, y_train.long(), y_val.long(), _class_names(train_set, name, num_classes)))
        elif kind == "continuous":
            edges = quantile_bins(y_train, num_bins)
            low, high = float(min(y_train.min(), y_val.min())), float(max(y_train.max(), y_val.max()))
            factors.append(Factor(name, kind, bin_values(y_train, edges), bin_values(y_val, edges),
                                  bin_names(edges, low, high)))
        else:
            raise RCDMError(f"factor {name!r} has unknown kind {kind!r}: expected 'class' or 'continuous'")
    return factors


def cached_representations(datamodule: Any, split: str) -> Tensor:
    """(N, D) unflipped h of `split` from the representation cache (built by prepare_data)."""
    cache = RepresentationCache.open(datamodule.cache_dir, datamodule.cache_key(split))
    return torch.from_numpy(np.ascontiguousarray(cache.reps[:, 0], dtype=np.float32))


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def format_table(rows: list[dict[str, Any]], num_bins: int) -> str:
    header = f"{'factor':<20} {'classes':>7} {'train acc':>9} {'val acc':>8} {'chance':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["factor"] + (" *" if row["kind"] == "continuous" else "")
        lines.append(f"{name:<20} {row['classes']:>7} {row['train_acc']:>9.3f} {row['val_acc']:>8.3f} "
                     f"{row['chance']:>7.3f}")
    if any(row["kind"] == "continuous" for row in rows):
        lines.append(f"* continuous factor, binned into {num_bins} quantile classes of the train split")
    lines.append("chance: accuracy of always predicting the most frequent training class")
    return "\n".join(lines)


def probe(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one linear probe per factor; return what probe.json holds."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    from rcdm_lab.encoders import build_encoder

    require_values(cfg)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(**encoder_spec(cfg))
    # The probe reads h from the cache whatever data.cache says: it is the same cache rcdm-train would use.
    datamodule = instantiate(cfg.data, cache=True)
    datamodule.attach_encoder(encoder)
    datamodule.prepare_data()
    h_train, h_val = cached_representations(datamodule, "train"), cached_representations(datamodule, "val")
    settings = cfg.probe
    device = _device(str(settings.device))
    targets = probing_targets(datamodule.dataset("train"), datamodule.dataset("val"), int(settings.continuous_bins))

    rows, probes = [], {}
    for target in targets:
        start = time.perf_counter()
        linear, metrics = train_linear_probe(
            h_train.to(device), target.y_train.to(device), h_val.to(device), target.y_val.to(device),
            num_classes=len(target.class_names), class_names=target.class_names, factor=target.name,
            steps=int(settings.steps), weight_decay=float(settings.weight_decay), seed=int(cfg.seed),
            encoder_identity=encoder.identity(),
        )
        probes[target.name] = linear
        rows.append({"factor": target.name, "kind": target.kind, "classes": len(target.class_names),
                     "class_names": target.class_names, **metrics, "seconds": time.perf_counter() - start})

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "encoder": encoder.identity(),
        "dataset": type(datamodule.dataset("train")).__name__,
        "num_train": len(h_train),
        "num_val": len(h_val),
        "continuous_bins": int(settings.continuous_bins),
        "probe": {"steps": int(settings.steps), "weight_decay": float(settings.weight_decay)},
        "factors": rows,
    }
    (output_dir / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    save_probes(output_dir / "probe.pt", probes, encoder.identity())
    print(f"rcdm-probe: {encoder!r}, {len(h_train)} train / {len(h_val)} val items")
    print(format_table(rows, int(settings.continuous_bins)))
    print(f"rcdm-probe: wrote {output_dir / 'probe.json'} and {output_dir / 'probe.pt'} "
          f"(load one with LinearProbe.load(path, factor=...))")
    return report


main = hydra_entry("probe", probe)

__all__ = ["LinearProbe", "main", "probe"]

if __name__ == "__main__":
    sys.exit(main())
