"""rcdm-eval: measure a trained RCDM (Hydra app over conf/eval.yaml; metric groups in conf/metric/).

Each metric lives in one module of `rcdm_lab.metrics` with an `evaluate(run, settings, sampling, out_dir)` entry.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import chosen_data, hydra_entry, require_values
from rcdm_lab.cli.experiment_runs import runs_to_render
from rcdm_lab.cli.sample import pick_device
from rcdm_lab.cli.validation import validate_eval
from rcdm_lab.metrics import distances, factors, faithfulness, fid, kde
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.report import numbers, publish, write_json

# name -> the module whose `evaluate(run, settings, sampling, out_dir)` computes it (and whose RULES check it).
METRICS: dict[str, ModuleType] = {"faithfulness": faithfulness, "distances": distances, "fid": fid, "kde": kde,
                                  "factors": factors}

# What the one-line summary per metric prints (the JSON has everything).
HEADLINE_NUMBERS = {"mean_rank", "mrr", "top1", "mean", "fid", "kid_mean", "is_mean", "measured_sigma", "kept"}


def load_run(cfg: DictConfig, ckpt: str) -> TrainedRun:
    """The checkpoint and its data (or the `data=` group the user picked instead)."""
    return TrainedRun.load(ckpt, device=pick_device(cfg.device), data=chosen_data(cfg),
                           encoder_weights=cfg.encoder_weights)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `ckpt`, or every run of the paper item `experiment=` (each into its own subfolder)."""
    require_values(cfg)
    validate_eval(cfg)
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    if cfg.ckpt is not None:
        results = evaluate(cfg, str(cfg.ckpt), Path(cfg.output_dir))
        publish(logger, results)
        return results
    runs = runs_to_render(cfg, "rcdm-eval")
    results = {}
    for trained_run in runs:
        print(f"{trained_run.name} ({trained_run.checkpoint}):")
        results[trained_run.name] = evaluate(cfg, str(trained_run.checkpoint), Path(cfg.output_dir) / trained_run.name)
    write_json(Path(cfg.output_dir) / "results.json", results)
    publish(logger, results)   # once, every run's numbers under its name: one CSV / one wandb run for the item
    print(f"rcdm-eval: {len(runs)} runs; wrote {Path(cfg.output_dir) / 'results.json'}")
    return results


def evaluate(cfg: DictConfig, ckpt: str, out: Path) -> dict[str, Any]:
    """Every metric of `cfg.metric` on one checkpoint, written to `out`."""
    trained = load_run(cfg, ckpt)
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    results: dict[str, Any] = {}
    for name, settings in cfg.metric.items():
        start = time.perf_counter()
        result = METRICS[name].evaluate(trained, OmegaConf.to_container(settings, resolve=True), sampling, out)
        result.update(ckpt=ckpt, sampling=sampling, seconds=round(time.perf_counter() - start, 1))
        write_json(out / f"{name}.json", result)
        results[name] = result
        summary = ", ".join(f"{k}={v:.4g}" for k, v in numbers(result).items()
                            if k.rsplit("/", 1)[-1] in HEADLINE_NUMBERS)
        print(f"{name} ({result['seconds']:.0f} s): {summary}")
    # results.json gathers every metric evaluated in this folder so far: running fid after faithfulness keeps both.
    gathered = {}
    for path in sorted(out.glob("*.json")):
        if path.stem in METRICS:
            gathered[path.stem] = json.loads(path.read_text())
    write_json(out / "results.json", gathered)
    print(f"rcdm-eval: wrote {out / 'results.json'}")
    return results


main = hydra_entry("eval", run)

if __name__ == "__main__":
    sys.exit(main())
