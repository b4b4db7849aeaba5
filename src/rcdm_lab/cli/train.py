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
from lightning.pytorch.utilities import rank_zero_info
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
                          plugins=[AtomicCheckpointIO()], default_root_dir=cfg.output_dir)
    return module, datamodule, trainer


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """Which checkpoint to resume from, refusing to silently overwrite an existing run."""
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    is_launcher = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
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


def train(cfg: DictConfig) -> Path:
    """Train (or resume) and return the path of the final checkpoint."""
    refuse_single_run_of_a_sweep()
    require_values(cfg)
    validate_train(cfg)  # before anything is rendered, cached or downloaded
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    ckpt_path = resolve_ckpt_path(cfg)
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
    rank_zero_info(f"rcdm-train: checkpoint {last} (step {trainer.global_step}); "
                   f"sample with: rcdm-sample ckpt={last} images=PATH")
    return last


main = hydra_entry("train", train, moved=moved_into_sampling("callbacks.preview."))

if __name__ == "__main__":
    sys.exit(main())
