"""Exponential moving average of the UNet weights, the copy used for sampling (ADM: rate 0.9999)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA shadow of `model`, updated with `ema.update_parameters(model)` after each optimizer step.

    Buffers are averaged too (`use_buffers=True`) so the shadow is a complete, self-consistent network. The shadow's
    parameters never require grad: it is not trained, and DDP must not wait for gradients that never come.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema

