"""The runs a paper item trains, and where they live: what connects `rcdm-train -m experiment=X` to
`rcdm-figure experiment=X` and `rcdm-eval experiment=X`.

A paper item (conf/experiment/<item>.yaml) declares its runs as the sweep `hydra.sweeper.params` (encoders, layers,
resolution, ...; `scale=` adds the choices every run shares). Training runs that sweep; rendering composes the same
training config once per combination to find each run's folder, `<runs_root>/<name>`, exactly where the training
job wrote it. One expansion serves both, so they cannot disagree.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from rcdm_lab.errors import RCDMError


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a paper item: its name, its folder and the overrides that select it."""

    name: str
    directory: Path
    overrides: tuple[str, ...]

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"


def sweep_combinations(params: Mapping[str, object]) -> list[list[str]]:
    """`{encoder: "a,b", layer: head}` -> [["encoder=a", "layer=head"], ["encoder=b", "layer=head"]].

    Parsed with Hydra's own override grammar, so `a,b`, `choice(a,b)` and `range(1,4)` mean what they mean to
    Hydra's basic sweeper, and the combinations come in the order it launches them.
    """
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    options = []
    for override in parsed:
        key = override.get_key_element()
        values = override.sweep_string_iterator() if override.is_sweep_override() else \
            [override.get_value_element_as_str()]
        options.append([f"{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*options)]


def declared_runs(cfg_hydra: DictConfig | None = None) -> dict[str, object]:
    """The sweep a composed config declares (`hydra.sweeper.params`), {} when it declares none."""
    hydra_cfg = cfg_hydra if cfg_hydra is not None else HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") or {}
    return dict(params)


def planned_runs(experiment: str, scale: str | None = None, overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Every run `rcdm-train -m experiment=<experiment> [scale=<scale>] <overrides>` trains, in launch order.

    Needs an initialised Hydra (inside any rcdm_lab command, or hydra.initialize_config_dir in Python).
    """
    base = [f"experiment={experiment}", *([f"scale={scale}"] if scale else []), *overrides]
    item = compose("train", overrides=base, return_hydra_config=True)
    params = declared_runs(item.hydra)
    if not params:
        raise RCDMError(f"experiment={experiment} declares no runs (no hydra.sweeper.params): it is a training "
                        f"experiment; train it with rcdm-train experiment={experiment} and pass ckpt=PATH")
    runs = []
    for combination in sweep_combinations(params):
        job = compose("train", overrides=[*base, *combination])
        runs.append(PlannedRun(name=str(job.name), directory=Path(str(job.runs_root)) / str(job.name),
                               overrides=tuple(combination)))
    return runs


def check_trained(runs: Sequence[PlannedRun], experiment: str, scale: str | None,
                  runs_root: str | None = None) -> None:
    """If any run's checkpoint is missing: one line naming them and the command that trains them there.

    `runs_root` is named in the command as given (the scale's own default included), so following it always
    trains where the renderer looks.
    """
    missing = [run for run in runs if not run.checkpoint.is_file()]
    if missing:
        where = "".join(f" {key}={value}" for key, value in (("scale", scale), ("runs_root", runs_root)) if value)
        names = ", ".join(str(run.checkpoint) for run in missing)
        raise RCDMError(f"experiment={experiment} renders from {len(runs)} run(s); not trained yet: {names}. "
                        f"Train them with: rcdm-train -m experiment={experiment}{where} (or pass ckpt=/ckpts=)")


def runs_to_render(cfg: DictConfig, command: str) -> list[PlannedRun]:
    """Inside `command` (rcdm-figure or rcdm-eval) without ckpt=: the trained runs of the `experiment=` chosen.

    The `scale=` chosen with it picks the runs rcdm-train trained at that scale; `cfg.runs_root` (the command's own
    setting) replaces the folder they were trained into. An item rendered by the other command, no item at all, or
    runs not trained yet each stop with one line saying what to run instead.
    """
    # Each command composes the other one's group empty (null): only an item fills it.
    other = {"rcdm-figure": ("metric", "rcdm-eval"), "rcdm-eval": ("figure", "rcdm-figure")}
    group, other_command = other[command]
    renders_with = other_command if cfg.get(group) else command
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    experiment, scale = choices.get("experiment"), choices.get("scale")
    if experiment is None:
        several = " (or ckpts=[a.ckpt,b.ckpt] for figures comparing models)" if command == "rcdm-figure" else ""
        raise RCDMError(f"no model given: pass ckpt=outputs/<run>/checkpoints/last.ckpt{several}, or a paper item "
                        "experiment=<item> (conf/experiment/) whose runs rcdm-train -m experiment=<item> trained")
    if renders_with != command:
        raise RCDMError(f"experiment={experiment} is rendered by {renders_with}, not {command}: run "
                        f"{renders_with} with the same arguments")
    runs_root = cfg.get("runs_root")
    runs = planned_runs(experiment, scale, [f"runs_root={runs_root}"] if runs_root else [])
    check_trained(runs, experiment, scale, runs_root)
    return runs
