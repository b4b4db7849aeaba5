"""rcdm-probe: linear-probe accuracy of each labelled factor from a frozen encoder's h (Hydra app, conf/probe.yaml).

Trains one linear classifier per factor on the cached, unflipped representations of the train split and reports
top-1 on the val split: the paper's trunk-vs-head comparison. Writes probe.json and probe.pt to the run folder.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rcdm_lab.cli.common import hydra_entry, require_values
from rcdm_lab.cli.train import encoder_spec
from rcdm_lab.cli.validation import validate_probe
from rcdm_lab.metrics.probe import LinearProbe, probing_targets, save_probes, train_linear_probe


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
    validate_probe(cfg)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(**encoder_spec(cfg))
    # The probe reads h from the cache whatever data.cache says: it is the same cache rcdm-train would use.
    datamodule = instantiate(cfg.data, cache=True)
    datamodule.attach_encoder(encoder)
    datamodule.prepare_data()
    h_train, h_val = datamodule.source("train").representations(), datamodule.source("val").representations()
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
