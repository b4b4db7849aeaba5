"""rcdm-train: fit an RCDM on a frozen encoder's representation (Hydra app over conf/train.yaml)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.plugins.io import AsyncCheckpointIO, CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import hydra_entry, require_values
from rcdm_lab.cli.experiment_runs import declared_runs
from rcdm_lab.cli.validation import moved_into_sampling, validate_train
from rcdm_lab.errors import RCDMError
from rcdm_lab.precision import announce, resolve_precision, trainer_device
from rcdm_lab.training.checkpoint_io import AtomicCheckpointIO
from rcdm_lab.training.module import RCDMModule
from rcdm_lab.training.randomness import RandomStatePersistence


def encoder_spec(cfg: DictConfig) -> dict[str, Any]:
    """The build_encoder keyword arguments in `cfg.encoder` (without the training-only `standardize`)."""
    spec = OmegaConf.to_container(cfg.encoder, resolve=True)
    return {k: v for k, v in spec.items() if k != "standardize"}


def build(cfg: DictConfig) -> tuple[RCDMModule, L.LightningDataModule, L.Trainer]:
    """Everything `trainer.fit` needs, built from the composed config."""
    # The frozen encoder is in eval mode on purpose (its BatchNorm statistics must never move).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    from rcdm_lab.encoders import build_encoder
    from rcdm_lab.models import unet_out_channels

    require_values(cfg)
    spec = encoder_spec(cfg)
    encoder = build_encoder(**spec)
    datamodule = instantiate(cfg.data)
    datamodule.attach_encoder(encoder)
    for split in ("train", "val"):
        datamodule.dataset(split)  # an empty or unreadable dataset fails here, before the trainer starts
    diffusion = OmegaConf.to_container(cfg.diffusion, resolve=True)
    unet = instantiate(
        cfg.model.unet,
        image_size=cfg.resolution,
        ssl_dim=encoder.dim,
        out_channels=unet_out_channels(diffusion.get("learn_sigma", True)),
        learn_null_cond=cfg.model.cond_drop > 0,
        _convert_="all",
    )
    module = RCDMModule(
        unet=unet,
        diffusion=diffusion,
        encoder=encoder,
        encoder_spec=spec,
        optimizer=instantiate(cfg.model.optimizer),
        ema_decay=cfg.model.ema_decay,
        cond_drop=cfg.model.cond_drop,
        standardize=cfg.encoder.get("standardize", False),
        vlb_weight=cfg.model.vlb_weight,
        resolution=cfg.resolution,
        data_spec=OmegaConf.to_container(cfg.data, resolve=True),
        min_snr_gamma=cfg.model.get("min_snr_gamma"),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        seed=cfg.seed,
        compile=cfg.model.get("compile", False),
    )
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    # Always, not a `callbacks:` entry one could drop: DDP ranks' flips and dropout and an exact resume depend on it.
    callbacks.append(RandomStatePersistence())
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    precision = announce(resolve_precision(cfg.trainer.precision, trainer_device(cfg.trainer.accelerator)))
    trainer = instantiate(cfg.trainer, precision=precision.value, callbacks=callbacks, logger=logger,
                          plugins=[checkpoint_io(cfg.get("checkpoint_in_background", True)), *cluster_environment()],
                          default_root_dir=cfg.output_dir)
    return module, datamodule, trainer


def checkpoint_io(in_background: bool) -> CheckpointIO:
    """Atomic checkpoint writes, in a background thread unless `in_background` is false.

    The loop then waits only for the tensors to be cloned: for the paper's 423 M-parameter UNet with EMA and Adam
    (6.4 GB) it waited 17.9 s for a write in place and 6.8 s for the clone on a 2-core CPU
    (benchmarks/loop_stalls.py); on a GPU the clone is a device copy. The price is a second copy of the checkpoint
    in memory while it is written (checkpoint_in_background=false where that does not fit).
    """
    return AsyncCheckpointIO(AtomicCheckpointIO()) if in_background else AtomicCheckpointIO()


def cluster_environment() -> list[ClusterEnvironment]:
    """Lightning's SLURM environment without its auto-requeue, inside a SLURM job; else nothing (Lightning decides).

    A job stopped by its time limit or preempted is requeued by submitit, not by Lightning: one mechanism, and
    submitit's, because it launched the job. Its handler re-submits the Hydra job with the same overrides, tells a
    time limit from a preemption and caps time-limit requeues (hydra.launcher.max_num_timeout), and it listens on
    SIGUSR2, which SLURM sends. Lightning's would listen on SIGUSR1 and save an hpc checkpoint from inside the signal
    handler of every rank, a collective at whatever point each rank was interrupted. The requeued job resumes from
    the periodic last.ckpt (resolve_ckpt_path), losing at most callbacks.checkpoint.every_n_train_steps steps.
    """
    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def requeued_job() -> bool:
    """Whether this process belongs to a SLURM job that was requeued (time limit, preemption or node failure).

    SLURM counts a job's restarts in SLURM_RESTART_COUNT (unset or 0 on its first start), whoever requeued it.
    """
    count = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    return count.isdigit() and int(count) > 0


def adopt_submitit_local_tasks() -> None:
    """Under submitit_local, hand the job's tasks (one per device) to Lightning as its DDP processes.

    On SLURM, Lightning's SLURM environment reads the tasks' ranks from SLURM's variables; a local submitit job has
    only its own, so they are exported as torch.distributed's (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...), which
    Lightning then takes as processes started for it instead of starting its own: it would restart the command line,
    which in a submitit job is submitit's and not rcdm-train's.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """Which checkpoint to resume from, refusing to silently overwrite an existing run.

    A requeued SLURM job resumes its run's last.ckpt without being asked: its overrides are those it was submitted
    with (ckpt_path=null), and refusing would end a training that the requeue was meant to continue.
    """
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    is_launcher = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if cfg.ckpt_path is None and requeued_job():
        if not last.exists():
            rank_zero_info(f"requeued job: no checkpoint in {last.parent} yet, starting from scratch")
            return None
        rank_zero_info(f"requeued job (SLURM_RESTART_COUNT={os.environ['SLURM_RESTART_COUNT']}): resuming {last}")
        return str(last)
    if cfg.ckpt_path is None:
        if last.exists() and is_launcher:
            raise RCDMError(f"{cfg.output_dir} already holds a run ({last}). Resume it with ckpt_path=last, "
                            "or start another one with name=<new name>")
        return None
    if cfg.ckpt_path == "last":
        if not last.exists():
            rank_zero_info(f"ckpt_path=last: no checkpoint in {last.parent} yet, starting from scratch")
            return None
        return str(last)
    if not Path(cfg.ckpt_path).is_file():
        raise RCDMError(f"ckpt_path={cfg.ckpt_path} does not exist; use ckpt_path=last to resume this run")
    return str(cfg.ckpt_path)


def refuse_single_run_of_a_sweep() -> None:
    """A paper item declares its runs as a sweep; without -m Hydra would train one run with the default encoder."""
    if not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    params = declared_runs()
    if params:
        item = HydraConfig.get().runtime.choices.get("experiment")
        runs = ", ".join(f"{key}={value}" for key, value in params.items())
        raise RCDMError(f"experiment={item} trains its runs as a sweep ({runs}): add -m, "
                        f"i.e. rcdm-train -m experiment={item}")


MIN_CURVE_POINTS = 20   # logged loss values below which a run has no curve worth drawing


@rank_zero_only
def write_convergence_plot(run_dir: Path) -> Path | None:
    """<run>/convergence.png from the CSV logger's metrics.csv (loss per quarter of the chain, faithfulness)."""
    from rcdm_lab.viz.plots import convergence_plot, read_metrics_csv

    metrics = run_dir / "logs" / "metrics.csv"
    if not metrics.is_file():
        return None   # another logger (wandb draws its own curves)
    if len(read_metrics_csv(metrics).get("train/loss", ((), ()))[0]) < MIN_CURVE_POINTS:
        return None   # a smoke run of a few steps has no curve to show
    try:
        path = convergence_plot(metrics, run_dir / "convergence.png", title=f"{run_dir.name}: convergence")
    except RCDMError as error:   # a run too short to have logged a loss: nothing to draw, nothing lost
        rank_zero_info(f"rcdm-train: no convergence plot ({error})")
        return None
    rank_zero_info(f"rcdm-train: convergence curves in {path}")
    return path


def train(cfg: DictConfig) -> Path:
    """Train (or resume) and return the path of the final checkpoint."""
    refuse_single_run_of_a_sweep()
    require_values(cfg)
    validate_train(cfg)  # before anything is rendered, cached or downloaded
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    ckpt_path = resolve_ckpt_path(cfg)
    # After resolve_ckpt_path: every task of a local job refuses an existing run then, not only the first.
    adopt_submitit_local_tasks()
    module, datamodule, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if cfg.trainer.get("max_time"):
        rank_zero_info(f"trainer.max_time={cfg.trainer.max_time}: training ran {trainer.global_step} of "
                       f"{cfg.trainer.max_steps} steps; how many fit depends on this machine's speed, so results "
                       "will differ between machines (set trainer.max_time=null to train a fixed number of steps)")
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    saver = trainer.checkpoint_callback
    if saver is not None and getattr(saver, "_last_global_step_saved", -1) != trainer.global_step:
        # ModelCheckpoint saves every N steps only: a run whose max_steps is not a multiple of N (the demo: 650 with
        # N = 200) would otherwise end with last.ckpt at step 600 -- sampled from, and resumed for 50 more steps by
        # every later `make demo`. Only then: a checkpoint saved at the final step inside the loop holds the RNG
        # state of that moment, which an exact resume needs (after fit the data loader has drawn the next shuffle).
        # Every rank calls this; the checkpoint IO writes once, atomically.
        trainer.save_checkpoint(last)
    # The write may run in a background thread (checkpoint_io): the checkpoint is on disk before anyone is told.
    trainer.strategy.checkpoint_io.teardown()
    write_convergence_plot(Path(cfg.output_dir))
    rank_zero_info(f"rcdm-train: checkpoint {last} (step {trainer.global_step}); "
                   f"sample with: rcdm-sample ckpt={last} images=PATH")
    return last


main = hydra_entry("train", train, moved=moved_into_sampling("callbacks.preview."))

if __name__ == "__main__":
    sys.exit(main())
