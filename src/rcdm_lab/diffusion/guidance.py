"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a model-output function."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rcdm_lab.diffusion.samplers import ModelOutputFn
from rcdm_lab.errors import RCDMError


def _doubled(value: object) -> object:
    # Scalars and 0-d tensors are shared by both halves; batched tensors need one copy per half.
    if isinstance(value, Tensor) and value.ndim > 0:
        return torch.cat([value, value], dim=0)
    return value


def classifier_free(model_fn: ModelOutputFn, scale: float) -> ModelOutputFn:
    """A model-output function whose eps is eps_uncond + scale * (eps_cond - eps_uncond).

    Both passes share one batched forward on [x, x]; the second half gets drop_cond=True, which the UNet turns
    into its learned null representation. Variance channels (learned sigma) come from the conditional half.
    scale = 1 is plain conditional sampling and returns `model_fn` unchanged (one forward, not two).
    """
    if not math.isfinite(scale):
        raise RCDMError(f"guidance scale must be a finite number, got {scale}")
    if scale == 1:
        return model_fn

    def guided(x: Tensor, t: Tensor, **cond) -> Tensor:
        if "drop_cond" in cond:
            raise RCDMError("classifier-free guidance sets drop_cond itself; do not pass drop_cond in cond")
        batch, channels = x.shape[:2]
        drop_cond = torch.arange(2 * batch, device=x.device) >= batch
        doubled = {name: _doubled(value) for name, value in cond.items()}
        output = model_fn(torch.cat([x, x]), torch.cat([t, t]), drop_cond=drop_cond, **doubled)
        conditional, unconditional = output[:batch], output[batch:]
        eps_c, eps_u = conditional[:, :channels], unconditional[:, :channels]
        eps = eps_u + scale * (eps_c - eps_u)
        return torch.cat([eps, conditional[:, channels:]], dim=1)

    return guided
