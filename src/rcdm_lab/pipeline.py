"""Inference: images -> representations -> samples, for a trained (or released) RCDM.

Every experiment is "make some representations h, sample from them, arrange and measure"; this is the shared
"encode" and "sample" part. Build one with `RCDMPipeline.from_checkpoint(path)` (rcdm-train checkpoints, see
`rcdm_lab.checkpoint`) or `RCDMPipeline.from_official(path, encoder=...)` (the released facebookresearch/RCDM weights).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rcdm_lab.checkpoint import Checkpoint, read_checkpoint
from rcdm_lab.diffusion import build_diffusion, check_sampler_options, classifier_free, sample
from rcdm_lab.diffusion.gaussian import GaussianDiffusion
from rcdm_lab.diffusion.samplers import StepCallback
from rcdm_lab.errors import RCDMError
from rcdm_lab.precision import announce, resolve_precision


@dataclass
class RCDMPipeline:
    unet: nn.Module
    diffusion: GaussianDiffusion
    encoder: nn.Module | None
    rep_mean: torch.Tensor | None = None
    rep_std: torch.Tensor | None = None
    resolution: int = 32

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | Checkpoint,
        device: str | torch.device = "cpu",
        encoder: nn.Module | None = None,
        encoder_weights: str | None = None,
    ) -> RCDMPipeline:
        """Rebuild UNet (EMA weights), diffusion and encoder from an rcdm-train checkpoint (a path, or already read).

        The encoder is rebuilt from the checkpoint's recorded spec (or `encoder_weights` replaces the recorded
        weights source, e.g. a local file when the run used a path on another machine) and must have the same
        weights digest as the one the model was trained with.
        """
        from rcdm_lab.encoders import build_encoder
        from rcdm_lab.models import UNetModel

        if not isinstance(checkpoint, Checkpoint):
            checkpoint = read_checkpoint(checkpoint)
        record = checkpoint.record
        unet = UNetModel(**record.unet)
        unet.load_state_dict(checkpoint.ema_unet_state_dict(), strict=True)
        if encoder is None:
            encoder = build_encoder(**record.encoder.build_spec(weights=encoder_weights))
        checkpoint.check_encoder(encoder.identity())
        rep_mean, rep_std = checkpoint.representation_stats() or (None, None)
        pipeline = cls(
            unet=unet,
            diffusion=build_diffusion(**record.diffusion),
            encoder=encoder,
            rep_mean=rep_mean,
            rep_std=rep_std,
            resolution=record.resolution,
        )
        return pipeline.to(device)

    @classmethod
    def from_official(
        cls,
        path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
        encoder: nn.Module,
        flags: Mapping[str, Any] | str | None = None,
        device: str | torch.device = "cpu",
    ) -> RCDMPipeline:
        """A released facebookresearch/RCDM checkpoint (UNet weights only) with the encoder it was trained on."""
        from rcdm_lab.models import OFFICIAL_128_FLAGS, learns_sigma, load_official_unet

        flags = OFFICIAL_128_FLAGS if flags is None else flags
        unet = load_official_unet(path_or_state_dict, flags)
        if unet.config["ssl_dim"] != encoder.dim:
            raise RCDMError(f"the checkpoint expects a {unet.config['ssl_dim']}-d representation but the encoder "
                            f"gives {encoder.dim}-d; pick the encoder/layer the checkpoint was trained on")
        diffusion = build_diffusion(schedule="linear", num_timesteps=1000, learn_sigma=learns_sigma(unet.config))
        return cls(unet=unet, diffusion=diffusion, encoder=encoder, resolution=unet.config["image_size"]).to(device)

    def to(self, device: str | torch.device) -> RCDMPipeline:
        self.unet.to(device).eval()
        if self.encoder is not None:
            self.encoder.to(device)
        if self.rep_mean is not None:
            self.rep_mean, self.rep_std = self.rep_mean.to(device), self.rep_std.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def supports_guidance(self) -> bool:
        return bool(getattr(self.unet, "learn_null_cond", False))

    # ------------------------------------------------------------------------------------------ using
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Representations (N, D) of images in [0, 1] (N, 3, H, W), any size."""
        if self.encoder is None:
            raise RCDMError("this pipeline has no encoder; build it with one to encode images")
        chunks = [self.encoder(images[i:i + batch_size].to(self.device)) for i in range(0, len(images), batch_size)]
        return torch.cat(chunks)

    def condition(self, h: torch.Tensor) -> torch.Tensor:
        """What the UNet is fed for representation h (standardised if the model was trained that way)."""
        if self.rep_mean is None:
            return h
        return (h - self.rep_mean) / self.rep_std

    @torch.no_grad()
    def sample(
        self,
        h: torch.Tensor,
        num_per_condition: int = 1,
        *,
        sampler: str = "ddpm",
        steps: int | str = 100,
        guidance: float = 1.0,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        batch_size: int = 64,
        precision: str = "auto",
        progress: bool = False,
        callback: StepCallback | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Samples in [-1, 1], shape (N * num_per_condition, 3, R, R), grouped by conditioning (row-major).

        `noise` (optional, (N * num_per_condition, 3, R, R)) fixes x_T, e.g. to share noise along an interpolation
        path. Otherwise x_T comes from `seed`, so the same seed gives the same samples. `precision` is resolved
        for this pipeline's device (`rcdm_lab.precision`): "auto" autocasts to bf16 only where it is native.
        `options` are the sampler's own (e.g. `eta=` for DDIM; see `rcdm_lab.diffusion.samplers`), and
        `callback` gets a `StepInfo` at every step of every batch of `batch_size`.
        """
        check_sampler_options(sampler, options)   # a bad option fails before the first network call
        if guidance != 1.0 and not self.supports_guidance:
            raise RCDMError(f"guidance={guidance} needs a model trained with condition dropout (model.cond_drop > 0, "
                            "e.g. 0.15); this one was not. Use guidance=1")
        feat = self.condition(h.to(self.device).float()).repeat_interleave(num_per_condition, dim=0)
        shape = (len(feat), 3, self.resolution, self.resolution)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=self.device)
        elif tuple(noise.shape) != shape:
            raise RCDMError(f"noise has shape {tuple(noise.shape)} but samples of shape {shape} were asked for "
                            f"({len(h)} conditionings x {num_per_condition})")
        model_fn = classifier_free(self.unet, guidance)
        autocast_dtype = announce(resolve_precision(precision, self.device)).autocast_dtype
        out = []
        for start in range(0, len(feat), batch_size):
            stop = start + batch_size
            with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out.append(sample(
                    self.diffusion, model_fn, noise[start:stop].to(self.device), sampler=sampler, steps=steps,
                    generator=generator, cond={"feat": feat[start:stop]}, callback=callback, progress=progress,
                    **options,
                ).float())
        return torch.cat(out)
