"""The LightningModule: wires a UNet, a Gaussian diffusion and a frozen encoder together, and nothing more.

`training_step` draws t and noise, asks the UNet for eps (and the variance) and hands both to the diffusion's hybrid
loss. Sampling lives in `rcdm_lab.diffusion.samplers` behind `RCDMPipeline`; preview grids live in a callback; what a
checkpoint records and checks lives in `rcdm_lab.checkpoint`; the global RNGs are seeded and saved by
`training.randomness.RandomStatePersistence`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from rcdm_lab.checkpoint import CheckpointRecord, EncoderRecord, check_resumable, write_record
from rcdm_lab.diffusion import build_diffusion
from rcdm_lab.errors import RCDMError
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_lab.training.ema import make_ema
from rcdm_lab.training.randomness import step_generator

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class RCDMModule(L.LightningModule):
    """RCDM training: learn p(x | h) with h = encoder(x) from a frozen encoder.

    Args:
        unet: the denoiser, called as ``unet(x_t, t, feat=h, drop_cond=mask)``.
        diffusion: keyword arguments of :func:`rcdm_lab.diffusion.build_diffusion` (kept so checkpoints rebuild it).
        encoder: the frozen encoder; part of the module (it moves with it, it can encode on the fly) but never of
            the optimizer or of the checkpoint's weights -- a checkpoint records which encoder it needs instead.
        encoder_spec: the keyword arguments that rebuild `encoder` (name, layer, weights, input_size, input_norm).
        optimizer: a partial optimizer (e.g. AdamW) to call on the UNet's parameters.
        ema_decay: rate of the EMA copy of the UNet used for sampling (warmed up, see `training.ema`).
        cond_drop: probability of replacing h by the UNet's learned null vector (classifier-free guidance).
        standardize: feed the UNet (h - mean) / std with per-dimension training-set statistics.
        vlb_weight: lambda of IDDPM's hybrid loss.
        min_snr_gamma: Min-SNR-gamma weighting of the eps loss (None: IDDPM's uniform weighting).
        scheduler: a partial learning-rate scheduler stepped every optimizer step (None: constant rate, as ADM).
        seed: the run's seed; each step's draws derive from (seed, rank, step) -- see `training.randomness`.
        data_spec: the (resolved) data config the model is trained on, recorded in checkpoints so evaluations
            and figures find the same dataset and representation cache (`TrainedRun.load`).
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: dict[str, Any],
        encoder: nn.Module,
        encoder_spec: dict[str, Any],
        optimizer: OptimizerFactory,
        ema_decay: float = 0.9999,
        cond_drop: float = 0.0,
        standardize: bool = False,
        vlb_weight: float = 0.001,
        resolution: int | None = None,
        data_spec: dict[str, Any] | None = None,
        min_snr_gamma: float | None = None,
        scheduler: SchedulerFactory | None = None,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if cond_drop > 0 and not getattr(unet, "learn_null_cond", False):
            raise RCDMError("model.cond_drop > 0 needs a UNet built with learn_null_cond=True (rcdm-train does this)")
        self.unet = unet
        self.ema = make_ema(unet, ema_decay)
        self.diffusion_config = dict(diffusion)
        self.diffusion = build_diffusion(**self.diffusion_config)
        self.encoder = encoder
        self.encoder_spec = dict(encoder_spec)
        self.optimizer_factory = optimizer
        self.cond_drop = cond_drop
        self.standardize = standardize
        self.vlb_weight = vlb_weight
        self.min_snr_gamma = min_snr_gamma
        self.scheduler_factory = scheduler
        self.seed = int(seed)
        self.compile_unet = bool(compile)
        self.resolution = resolution or unet.config["image_size"]
        self.data_spec = dict(data_spec) if data_spec is not None else None
        dim = encoder.dim
        # Statistics of h over the training set; identity until fitted. Saved with the checkpoint so sampling
        # standardises exactly as training did.
        self.register_buffer("rep_mean", torch.zeros(dim))
        self.register_buffer("rep_std", torch.ones(dim))
        self.register_buffer("rep_stats_fitted", torch.tensor(False))
        # The encoder's weights are not this model's weights: keep them out of checkpoints and don't expect them
        # back when loading one (the encoder is rebuilt from `encoder_spec` and checked by its weights digest).
        self.register_state_dict_post_hook(_drop_encoder_entries)
        self.register_load_state_dict_post_hook(_forgive_missing_encoder_entries)
        self.save_hyperparameters(
            {"diffusion": self.diffusion_config, "encoder": self.encoder_spec, "unet": unet.config,
             "ema_decay": ema_decay, "cond_drop": cond_drop, "standardize": standardize, "vlb_weight": vlb_weight,
             "min_snr_gamma": min_snr_gamma, "seed": self.seed}
        )

    # ----------------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_unet:
            # In place (nn.Module.compile): the state-dict keys, and so checkpoints, stay those of the plain UNet;
            # the EMA copy that samples stays eager. Measured at the model=adm-like config at 32 px, batch 32, fp32
            # on 2 CPU cores: 98 s to compile, then 1.81 against 1.86 s per step -- break-even after ~2 000 steps.
            self.unet.compile()
        if stage == "fit" and self.standardize and not bool(self.rep_stats_fitted):
            mean, std = self.trainer.datamodule.representation_stats()
            self.set_representation_stats(mean, std)

    def set_representation_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.rep_mean.copy_(mean)
        self.rep_std.copy_(floored_std(std))
        self.rep_stats_fitted.fill_(True)

    def condition(self, h: torch.Tensor) -> torch.Tensor:
        """What the UNet is fed for a representation h."""
        return (h - self.rep_mean) / self.rep_std if self.standardize else h

    def diffusion_losses(self, batch: dict[str, Any], generator: torch.Generator,
                         cond_drop: float = 0.0) -> tuple[dict[str, Tensor], Tensor]:
        """Per-example hybrid losses at a random t for each image, and those t; every draw from `generator`."""
        x0, feat = batch["x0"], self.condition(batch["h"])
        batch_size = x0.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (batch_size,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.diffusion.q_sample(x0, t, noise)
        drop = None
        if cond_drop > 0:
            drop = torch.rand(batch_size, device=x0.device, generator=generator) < cond_drop
        output = self.unet(x_t, t, feat=feat, drop_cond=drop)
        losses = self.diffusion.training_losses(output, x0, x_t, t, noise, vlb_weight=self.vlb_weight,
                                                min_snr_gamma=self.min_snr_gamma)
        return losses, t

    def _generator(self, batch_idx: int, stream: int = 0) -> torch.Generator:
        # (global_step, batch_idx) is unique per micro-batch, also under gradient accumulation.
        return step_generator(self.seed, self.global_rank, self.global_step, batch_idx, self.device, stream)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses, t = self.diffusion_losses(batch, self._generator(batch_idx), self.cond_drop)
        loss = losses["loss"].mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", losses["mse"].mean())
        self.log("train/vlb", losses["vlb"].mean())
        self._log_loss_per_quarter(losses["loss"].detach(), t)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Held-out loss, always with the real representation: is the model learning p(x | h) or memorising x?
        losses, _ = self.diffusion_losses(batch, self._generator(batch_idx, stream=1))
        self.log("val/loss", losses["loss"].mean(), sync_dist=True)
        self.log("val/mse", losses["mse"].mean(), sync_dist=True)

    def _log_loss_per_quarter(self, loss: torch.Tensor, t: torch.Tensor) -> None:
        # Where in the chain the model struggles: q0 = the last, fine-detail steps, q3 = the first, noisiest ones.
        quarter = (t * 4) // self.diffusion.num_timesteps
        for q in range(4):
            in_quarter = quarter == q
            if in_quarter.any():
                self.log(f"train/loss_q{q}", loss[in_quarter].mean())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Right after the weights change (and only then, under gradient accumulation). Not in on_train_batch_end:
        # Lightning runs callbacks' hooks first, so ModelCheckpoint would save an EMA one update behind.
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.unet)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.optimizer_factory(self.unet.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------------------------------- inference
    def pipeline(self) -> RCDMPipeline:
        """Sampling with the EMA weights, sharing this module's tensors (no copy)."""
        return RCDMPipeline(
            unet=self.ema.module,
            diffusion=self.diffusion,
            encoder=self.encoder,
            rep_mean=self.rep_mean if self.standardize else None,
            rep_std=self.rep_std if self.standardize else None,
            resolution=self.resolution,
        )

    # ----------------------------------------------------------------------------------------- checkpoints
    def describe(self) -> CheckpointRecord:
        """Everything needed to rebuild this model for sampling, stored in each checkpoint."""
        return CheckpointRecord(
            unet=self.unet.config,
            diffusion=self.diffusion_config,
            encoder=EncoderRecord(spec=self.encoder_spec, identity=self.encoder.identity()),
            standardize=self.standardize,
            cond_drop=self.cond_drop,
            resolution=self.resolution,
            data=self.data_spec,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        write_record(checkpoint, self.describe())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resumable(checkpoint, self.encoder.identity(), self.unet.config)


def floored_std(std: Tensor, fraction: float = 0.01) -> Tensor:
    """Per-dimension std with each entry at least `fraction` of the mean std.

    A dimension that (almost) never varies on the training set carries no information there, and dividing by its
    ~0 std would blow up any image that does move it (an out-of-distribution conditioning).
    """
    return std.clamp_min(fraction * float(std.mean().clamp_min(1e-30)))


def _drop_encoder_entries(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


def _forgive_missing_encoder_entries(module: nn.Module, incompatible_keys: Any) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("encoder.")]
