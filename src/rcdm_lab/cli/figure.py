"""rcdm-figure: one paper figure from trained RCDM(s) (Hydra app over conf/figure.yaml + conf/figure/<kind>.yaml)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import chosen_data, hydra_entry, official_settings, run_name_of
from rcdm_lab.cli.experiment_runs import runs_to_render
from rcdm_lab.cli.sample import pick_device
from rcdm_lab.cli.validation import validate_figure
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import FIGURE_KINDS, FigureKind, figure_kind
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.gallery import write_gallery
from rcdm_lab.viz.report import publish, write_json


def command_line() -> str:
    """The command that reproduces this figure (the overrides of this job, also inside a sweep)."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return " ".join(["rcdm-figure", *overrides])


def checkpoints(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The checkpoints to render from and their default labels: ckpt/ckpts, else the runs of `experiment=`."""
    if cfg.get("ckpts"):
        ckpts = [str(c) for c in cfg.ckpts]
    elif cfg.get("ckpt"):
        ckpts = [str(cfg.ckpt)]
    else:
        runs = runs_to_render(cfg, "rcdm-figure")
        return [str(run.checkpoint) for run in runs], [run.name for run in runs]
    return ckpts, [run_name_of(c) for c in ckpts]


def checked_settings(cfg: DictConfig) -> tuple[FigureKind, Any]:
    """The figure kind `cfg` selects and its validated settings, with the sampling settings checked too.

    Everything here is checked before any checkpoint is loaded: a bad override fails in a second, in one line.
    """
    if cfg.get("figure") is None or cfg.figure.get("kind") is None:
        raise RCDMError(f"no figure kind selected: pass figure=<kind>, one of {', '.join(FIGURE_KINDS)}")
    validate_figure(cfg)
    kind = figure_kind(cfg.figure.kind)
    return kind, kind.settings(cfg.figure)


def render(kind: FigureKind, settings: Any, ctx: FigureContext, ckpts: list[str], command: str,
           started: float) -> dict[str, Any]:
    """The figure in ctx.out_dir: its PNG(s) and figure.json (the numbers, the checkpoints, the settings, the
    command that reproduces it and the seconds since `started`). rcdm-figure and rcdm-viewer both write here."""
    results = {"figure": kind.name, **kind.make(ctx, settings)}
    results.update(ckpts=ckpts, labels=ctx.labels, settings=dataclasses.asdict(settings), command=command,
                   seconds=round(time.perf_counter() - started, 1))
    write_json(ctx.out_dir / "figure.json", results)
    return results


def run(cfg: DictConfig) -> dict[str, Any]:
    kind, settings = checked_settings(cfg)
    name = kind.name
    ckpts, default_labels = checkpoints(cfg)
    device = pick_device(cfg.device)
    start = time.perf_counter()
    runs = [TrainedRun.load(c, device=device, data=chosen_data(cfg), encoder_weights=cfg.encoder_weights,
                            official=official_settings(cfg)) for c in ckpts]
    labels = [str(label) for label in cfg.labels] if cfg.get("labels") else default_labels
    if len(labels) != len(runs):
        raise RCDMError(f"labels has {len(labels)} names for {len(runs)} checkpoints: give one per checkpoint")
    out = Path(cfg.output_dir)
    ctx = FigureContext(runs=runs, sampling=OmegaConf.to_container(cfg.sampling, resolve=True), out_dir=out,
                        seed=int(cfg.sampling.seed), images=cfg.get("images"), labels=labels, probe=cfg.get("probe"))
    results = render(kind, settings, ctx, ckpts, command_line(), start)
    publish(instantiate(cfg.logger) if cfg.get("logger") else None, results, prefix=name)
    index = write_gallery(out.parent)
    print(f"rcdm-figure {name}: wrote {results.get('figure_png')} and {out / 'figure.json'} "
          f"({results['seconds']:.0f} s); gallery {index}")
    return results


main = hydra_entry("figure", run, moved={"seed": "sampling.seed"})  # one seed: the noise and the sampler's

if __name__ == "__main__":
    sys.exit(main())
