"""rcdm-pretrain: train a small encoder with method=supervised|simclr|vicreg|barlow (Hydra app, conf/pretrain.yaml).

Writes to outputs/pretrain/<name>/: encoder.pt (the final encoder, for `encoder=local encoder.weights=PATH`),
encoder-epoch<N>.pt for each of save_epochs, checkpoints/last.ckpt (resume with ckpt_path=last), timing.json and
probe.json: the linear-probe top-1 of every labelled factor from the backbone and from the head.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import hydra_entry, require_values
from rcdm_lab.cli.train import resolve_ckpt_path
from rcdm_lab.errors import RCDMError
from rcdm_lab.precision import announce, normalise_precision, resolve_precision, trainer_device
from rcdm_lab.settings import check, flag, integer, number, satisfies
from rcdm_lab.training.checkpoint_io import AtomicCheckpointIO
from rcdm_lab.training.randomness import RandomStatePersistence

if TYPE_CHECKING:  # the pretrain modules are imported when a run starts (fast --help, fast config errors)
    from rcdm_lab.pretrain.augment import AugmentSettings
    from rcdm_lab.pretrain.methods import MethodSettings
    from rcdm_lab.pretrain.networks import NetworkSettings

ENCODER_FILE = "encoder.pt"

PRETRAIN_RULES = [
    integer("seed", minimum=0),
    integer("image_size", minimum=8),
    integer("epochs"),
    integer("batch_size", minimum=2),
    integer("warmup_epochs", minimum=0),
    integer("num_workers", minimum=0),
    integer("threads", optional=True),
    flag("probe.enabled"),
    flag("probe.continuous"),
    integer("probe.steps"),
    number("probe.weight_decay", at_least=0),
    integer("probe.continuous_bins", minimum=2),
    satisfies("trainer.precision", normalise_precision, "one of auto, 32, bf16-mixed, 16-mixed"),
]


def epoch_file(epoch: int) -> str:
    return f"encoder-epoch{epoch}.pt"


@dataclass(frozen=True)
class PretrainSettings:
    """The typed settings of one run, checked before anything is rendered."""

    network: NetworkSettings
    method: MethodSettings
    augment: AugmentSettings
    save_epochs: tuple[int, ...]


def settings_of(cfg: DictConfig) -> PretrainSettings:
    from rcdm_lab.pretrain.augment import AugmentSettings
    from rcdm_lab.pretrain.methods import MethodSettings
    from rcdm_lab.pretrain.networks import NetworkSettings

    require_values(cfg)
    check(cfg, PRETRAIN_RULES)
    if cfg.trainer.get("devices", 1) != 1 or cfg.trainer.get("num_nodes", 1) != 1:
        raise RCDMError("rcdm-pretrain trains in one process (trainer=cpu or trainer=gpu with trainer.devices=1): "
                        "its per-epoch seeded shuffle and augmentations are not sharded across ranks")
    network = OmegaConf.to_container(cfg.network, resolve=True)
    unknown = sorted(set(network) - {"widths", "blocks"})
    if unknown:
        raise RCDMError(f"network has no setting(s) {', '.join(unknown)}; use widths, blocks")
    save_epochs = OmegaConf.to_container(cfg.save_epochs, resolve=True) if cfg.save_epochs is not None else []
    if not isinstance(save_epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) and
                                                    1 <= e <= cfg.epochs for e in save_epochs):
        raise RCDMError(f"save_epochs={save_epochs!r} is not allowed: use a list of epochs from 1 to "
                        f"epochs={cfg.epochs}, e.g. [1, 5]")
    return PretrainSettings(
        network=NetworkSettings(widths=tuple(network.get("widths", (16, 32, 64))), blocks=network.get("blocks", 1)),
        method=MethodSettings.from_config(OmegaConf.to_container(cfg.method, resolve=True)),
        augment=AugmentSettings.from_config(OmegaConf.to_container(cfg.augment, resolve=True)),
        save_epochs=tuple(sorted(set(save_epochs))),
    )


class EncoderExport(L.Callback):
    """Writes encoder-epoch<N>.pt after each epoch N of ``save_epochs`` (atomically; rank zero only)."""

    def __init__(self, output_dir: str | Path, save_epochs: tuple[int, ...], export: Any) -> None:
        self.output_dir, self.save_epochs, self.export = Path(output_dir), tuple(save_epochs), export

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.save_epochs and trainer.is_global_zero:
            path = self.export(pl_module, epoch, self.output_dir / epoch_file(epoch))
            rank_zero_info(f"rcdm-pretrain: wrote {path} (epoch {epoch})")


def build(cfg: DictConfig, settings: PretrainSettings) -> tuple[Any, Any, L.Trainer, Any]:
    """The module, data module and trainer of a run, and the function that exports the encoder file."""
    from rcdm_lab.pretrain.data import PretrainDataModule
    from rcdm_lab.pretrain.export import write_encoder_file
    from rcdm_lab.pretrain.module import PretrainModule

    method = settings.method
    datamodule = PretrainDataModule(instantiate(cfg.data.dataset), image_size=int(cfg.image_size),
                                    batch_size=int(cfg.batch_size), augment=settings.augment, views=method.views,
                                    target=method.target if method.supervised else None, seed=int(cfg.seed),
                                    num_workers=int(cfg.num_workers))
    datamodule.check()  # a missing target factor or a too small dataset fails here, before rendering
    mean, std = datamodule.pixel_stats()
    steps_per_epoch = datamodule.steps_per_epoch()
    module = PretrainModule(settings.network, method, mean=mean.tolist(), std=std.tolist(),
                            total_steps=steps_per_epoch * int(cfg.epochs),
                            warmup_steps=steps_per_epoch * int(cfg.warmup_epochs),
                            num_classes=len(datamodule.class_names) if datamodule.class_names else None,
                            seed=int(cfg.seed))
    target = {"factor": method.target, "class_names": list(datamodule.class_names)} if method.supervised else None
    dataset = datamodule.fingerprint()

    def export(pl_module: Any, epoch: int, path: Path) -> Path:
        payload = pl_module.encoder_payload(augment=settings.augment.record(), input_size=int(cfg.image_size),
                                            epoch=epoch, dataset=dataset, target=target)
        return write_encoder_file(path, payload)

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks += [RandomStatePersistence(), EncoderExport(cfg.output_dir, settings.save_epochs, export)]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    precision = announce(resolve_precision(cfg.trainer.precision, trainer_device(cfg.trainer.accelerator)))
    trainer = instantiate(cfg.trainer, precision=precision.value, callbacks=callbacks, logger=logger,
                          plugins=[AtomicCheckpointIO()], default_root_dir=cfg.output_dir)
    return module, datamodule, trainer, export


def pretrain(cfg: DictConfig) -> Path:
    """Train (or resume), export encoder.pt, write probe.json; return the encoder file's path."""
    settings = settings_of(cfg)
    threads = torch.get_num_threads()
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _pretrain(cfg, settings)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (tests, a notebook) keeps its setting


def _pretrain(cfg: DictConfig, settings: PretrainSettings) -> Path:
    from rcdm_lab.pretrain.report import format_table, probe_report, write_report

    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    # oneDNN's CPU convolutions on the small pretraining networks corrupted the heap now and then in backward on a
    # 2-core AVX2 EPYC with torch 2.13 ("double free or corruption", ~1 run in 3-10; 0 of 10 with oneDNN off). The
    # native kernels are as fast at these widths; GPU training is unaffected (cuDNN, not oneDNN).
    torch.backends.mkldnn.enabled = False
    ckpt_path = resolve_ckpt_path(cfg)
    module, datamodule, trainer, export = build(cfg, settings)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    output_dir = Path(cfg.output_dir)
    path = output_dir / ENCODER_FILE
    if trainer.is_global_zero:
        export(module, trainer.current_epoch, path)
        rank_zero_info(f"rcdm-pretrain: {settings.method.name} encoder ({trainer.current_epoch} epochs, "
                       f"{trainer.global_step} steps) -> {path}; use it with: rcdm-train encoder=local "
                       f"encoder.weights={path} layer=backbone|head")
        if cfg.probe.enabled:
            factors = OmegaConf.to_container(cfg.probe.factors, resolve=True) if cfg.probe.factors is not None \
                else None
            start = time.perf_counter()
            report = probe_report(path, datamodule, steps=int(cfg.probe.steps),
                                  weight_decay=float(cfg.probe.weight_decay),
                                  continuous_bins=int(cfg.probe.continuous_bins), factors=factors,
                                  continuous=bool(cfg.probe.continuous), seed=int(cfg.seed))
            report["method"], report["augment"] = settings.method.record(), settings.augment.record()
            report["epochs"], report["steps"] = trainer.current_epoch, trainer.global_step
            report["probe_seconds"] = round(time.perf_counter() - start, 1)
            written = write_report(report, output_dir / "probe.json")
            print(format_table(report))
            print(f"rcdm-pretrain: wrote {written}")
    return path


main = hydra_entry("pretrain", pretrain)

if __name__ == "__main__":
    sys.exit(main())
