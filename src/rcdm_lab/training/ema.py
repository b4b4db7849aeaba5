"""Exponential moving average of the UNet weights, the copy used for sampling (ADM: rate 0.9999).

A fixed rate with no warm-up keeps the first weights for a long time: at 0.9999 the weights of step 1 still make
up 0.9999 ** 20000 = 13.5 % of the EMA after ADM's 20 000 steps, and sampling only ever sees the EMA. So the rate
warms up: the first update copies the trained weights (`AveragedModel` does), and the n-th update after it uses

    decay_n = min(rate, (1 + n) / (10 + n))        (n = 1, 2, ...: updates already averaged)

i.e. 0.18, 0.25, 0.31, ... rising to `rate` (0.9999 is reached after ~90 000 updates, 0.995 after ~1 800).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(rate: float, num_averaged: int) -> float:
    """The decay of the update that follows `num_averaged` earlier ones (>= 1)."""
    return min(rate, (1 + num_averaged) / (10 + num_averaged))


def _warmup_ema_update(rate: float):
    @torch.no_grad()
    def update(ema_tensors: list[Tensor], model_tensors: list[Tensor], num_averaged: Tensor) -> None:
        decay = warmup_decay(rate, int(num_averaged))
        if ema_tensors[0].is_floating_point():
            torch._foreach_lerp_(ema_tensors, model_tensors, 1 - decay)
        else:  # integer buffers (e.g. BatchNorm counters): no lerp kernel
            for ema, current in zip(ema_tensors, model_tensors, strict=True):
                ema.copy_(current)

    return update


def make_ema(model: nn.Module, rate: float) -> AveragedModel:
    """An EMA shadow of `model`, updated with `ema.update_parameters(model)` after each optimizer step.

    Buffers are averaged too (`use_buffers=True`) so the shadow is a complete, self-consistent network. The shadow's
    parameters never require grad: it is not trained, and DDP must not wait for gradients that never come.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
    ema = AveragedModel(model, multi_avg_fn=_warmup_ema_update(rate), use_buffers=True)
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema
