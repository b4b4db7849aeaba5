"""What every command-line entry point shares: where the configs are, and how user errors are reported."""

from __future__ import annotations

import contextlib
import netrc
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from rcdm_lab.errors import RCDMError


def _find_conf_dir() -> Path:
    override = os.environ.get("RCDM_CONF_DIR")
    if override:
        return Path(override).resolve()
    # src/rcdm_lab/cli/common.py -> repository root / conf (the project is installed editable, see Makefile).
    return Path(__file__).resolve().parents[3] / "conf"


CONF_DIR = _find_conf_dir()

# conf/hydra/launcher/submitit_{slurm,local}.yaml are named like hydra-submitit-launcher's ConfigStore entries, so that
# `hydra/launcher=submitit_slurm` gives this project's defaults; Hydra then checks them against those entries' schemas
# and warns, on every start and in every job, that this matching is deprecated. The files do not depend on it (they
# name their _target_ and submitit_folder), so the warning says nothing to act on. Module level: a submitit job
# imports this module when it unpickles its task, before Hydra composes the job's config.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")


def _wandb_offline() -> bool:
    """wandb runs offline unless the user has credentials, so a missing key never blocks training."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return False
    with contextlib.suppress(Exception):
        if netrc.netrc().authenticators("api.wandb.ai"):
            return False
    return True


def run_name_of(ckpt: str | None, ckpts: list[str] | None = None) -> str:
    """outputs/<run>/checkpoints/last.ckpt -> '<run>' (a file elsewhere: its stem), to name output folders.

    Several checkpoints (`ckpts`) -> their names joined by '+'.
    """
    if ckpts:
        return "+".join(run_name_of(c) for c in ckpts)
    if ckpt is None:
        return "no-ckpt"
    path = Path(str(ckpt).removeprefix("official:"))
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def output_name_of(ckpt: str | None, ckpts: list[str] | None, experiment: str | None, scale: str | None) -> str:
    """The folder name of a figure or evaluation: its model(s), or the paper item (and scale) it renders."""
    if ckpt or ckpts or experiment in (None, "None"):
        return run_name_of(ckpt, ckpts)
    return experiment if scale in (None, "None") else f"{experiment}-{scale}"


def chosen_data(cfg: DictConfig) -> dict[str, Any] | None:
    """The dataset the user picked with `data=` (to replace a checkpoint's recorded one), else None.

    Only a `data=` choice counts: the data.* keys a paper item's scale sets for training are not a dataset.
    """
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("data") not in (None, "None")
    return OmegaConf.to_container(cfg.data, resolve=True) if chosen else None


def official_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """conf/official/ as a dict (how ckpt=official:PATH is read), or None where the command has none."""
    return OmegaConf.to_container(cfg.official, resolve=True) if cfg.get("official") else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("rcdm_wandb_offline"):
        OmegaConf.register_new_resolver("rcdm_wandb_offline", _wandb_offline)
    if not OmegaConf.has_resolver("rcdm_run_name"):
        OmegaConf.register_new_resolver("rcdm_run_name", run_name_of)
    if not OmegaConf.has_resolver("rcdm_output_name"):
        OmegaConf.register_new_resolver("rcdm_output_name", output_name_of)


def user_error_in(error: BaseException) -> BaseException | None:
    """The user-fixable error behind `error` (Hydra wraps errors raised while instantiating configs)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (RCDMError, MissingMandatoryValue)):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Print a user error as one line (no traceback) and exit with status 2; let real bugs raise."""
    try:
        yield
    except Exception as error:
        cause = user_error_in(error)
        if cause is None:
            raise
        message = str(cause)
        if isinstance(cause, MissingMandatoryValue):
            message = f"a required setting has no value ({cause.full_key or message}); pass it as an override, " \
                      f"e.g. {cause.full_key}=..."
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def require_values(cfg: DictConfig) -> None:
    """Refuse a config with `???` settings left, naming each one (Hydra would drop them from partials silently)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        examples = " ".join(f"{key}=..." for key in missing)
        raise RCDMError(f"required setting(s) without a value: {', '.join(missing)}; "
                        f"pass them as overrides: {examples}")


def spell_resolution_choices(argv: list[str]) -> list[str]:
    """`resolution=64` (or a sweep `resolution=32,64`) -> the group option names `64px` (`32px,64px`).

    Hydra only accepts strings as config-group choices and parses `64` as an integer, so the natural spelling
    would otherwise fail with an error about types rather than resolutions.
    """
    spelled = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "resolution" and value and all(part.isdigit() for part in value.split(",")):
            arg = "resolution=" + ",".join(f"{part}px" for part in value.split(","))
        spelled.append(arg)
    return spelled


def renamed_figure_choice(argv: list[str]) -> str | None:
    """The hint for the pre-1.0 spelling `experiment=<figure kind>` (a figure kind is now `figure=<kind>`), or None.

    `experiment=` now names a paper item (conf/experiment/fig03_augmentations.yaml, ...), which trains the runs the
    item needs; a figure kind alone renders any checkpoint.
    """
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") != "experiment":
            continue
        for choice in value.split(","):
            if not (CONF_DIR / "experiment" / f"{choice}.yaml").is_file() and \
                    (CONF_DIR / "figure" / f"{choice}.yaml").is_file():
                items = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")
                               if f"/figure: {choice}" in p.read_text())
                paper = f"; the paper item{'s' if len(items) > 1 else ''}: experiment={','.join(items)}" \
                    if items else ""
                return (f"experiment={choice} is now figure={choice} (rcdm-figure figure={choice} ckpt=PATH)"
                        f"{paper}")
    return None


def refuse_moved_overrides(argv: list[str], moved: Mapping[str, str]) -> None:
    """An override of a setting that moved (`sampler=ddpm`) fails naming its new key (`sampling.sampler=ddpm`).

    Hydra would only say that the old key is not in the config, in several lines.
    """
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in moved:
            raise RCDMError(f"{key}= has moved: use {moved[key]}={value or '...'}")


def check_conf_dir() -> None:
    if not (CONF_DIR / "train.yaml").is_file():
        print(f"error: config folder not found at {CONF_DIR}; install the project editable (make install) "
              "or set RCDM_CONF_DIR=/path/to/rcdm_lab/conf", file=sys.stderr)
        sys.exit(2)


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any],
                moved: Mapping[str, str] | None = None) -> Callable[[], None]:
    """A console-script `main` running `task` as a Hydra app over conf/<config_name>.yaml.

    Shared by every command: configs found, `resolution=64` spelled as its group option, overrides of `moved`
    settings (old key -> new key) refused naming the new key, user errors reported as one line with exit status 2.
    """
    register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def app(cfg: DictConfig) -> None:
        with report_user_errors():
            task(cfg)

    def main() -> None:
        check_conf_dir()
        with report_user_errors():
            refuse_moved_overrides(sys.argv[1:], moved or {})
            hint = renamed_figure_choice(sys.argv[1:])
            if hint:
                raise RCDMError(hint)
        sys.argv[1:] = spell_resolution_choices(sys.argv[1:])
        app()

    return main
