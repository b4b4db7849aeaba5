"""Layers of the ADM UNet (Dhariwal & Nichol 2021), with guided-diffusion's parameter names and numerics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from rcdm_lab.errors import RCDMError

ADM_NORM_GROUPS = 32


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos | sin]`` halves, shape (B, dim)."""
    half = dim // 2
    # Same operation order as guided-diffusion so released checkpoints see bit-identical inputs.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (meta tensors included) and return it."""
    for param in module.parameters():
        param.detach().zero_()
    return module


def norm_groups(channels: int) -> int:
    """ADM's 32 groups; narrower CPU-sized widths fall back to the largest divisor of 32 that fits."""
    return math.gcd(ADM_NORM_GROUPS, channels)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (as ADM does for fp16 / bf16 stability)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def group_norm(channels: int) -> GroupNorm32:
    return GroupNorm32(norm_groups(channels), channels)


def scale_shift(h: Tensor, params: Tensor) -> Tensor:
    """FiLM ``h * (1 + scale) + shift`` with ``params = [scale | shift]`` of shape (B, 2C)."""
    scale, shift = params.type(h.dtype)[..., None, None].chunk(2, dim=1)
    return h * (1 + scale) + shift


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Head count as in guided-diffusion: fixed width per head when ``num_head_channels != -1``."""
    if num_head_channels != -1:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise RCDMError(
                f"attention width {channels} is not divisible by num_head_channels={num_head_channels}: "
                f"pick num_head_channels dividing every attention width, or set it to -1 and use num_heads"
            )
        return channels // num_head_channels
    if num_heads <= 0 or channels % num_heads:
        raise RCDMError(
            f"attention width {channels} is not divisible by num_heads={num_heads} (or num_heads_upsample): "
            f"pick a head count dividing every attention width"
        )
    return num_heads


def qkv_attention(qkv: Tensor, num_heads: int, new_order: bool) -> Tensor:
    """Multi-head self-attention on a packed (B, 3*C, T) projection; returns (B, C, T).

    Legacy order packs ``[q, k, v]`` per head (heads outermost); the new order packs all heads' q, then k,
    then v. SDPA's default 1/sqrt(head_dim) scale equals ADM's split 1/sqrt(sqrt(d)) on both q and k.
    """
    batch, width, length = qkv.shape
    head_dim = width // (3 * num_heads)
    if new_order:
        packed = qkv.reshape(batch, 3, num_heads, head_dim, length)
    else:
        packed = qkv.reshape(batch, num_heads, 3, head_dim, length).transpose(1, 2)
    # One copy into (3, B, heads, T, head_dim): SDPA's fused CPU/GPU kernels want unit-stride head_dim.
    q, k, v = packed.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
    if q.device.type == "cpu":
        # On CPU the fused flash kernel's backward is ~4x slower than plain matmuls for ADM's short sequences
        # (8x8 .. 32x32 maps); measured 60 ms of a 475 ms training step at 32 px (benchmarks/train_step.py).
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(batch, num_heads * head_dim, length)


class AttentionBlock(nn.Module):
    """Residual self-attention over all positions; ``proj_out`` starts at zero (block = identity)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.num_heads = attention_heads(channels, num_heads, num_head_channels)
        self.use_new_attention_order = use_new_attention_order
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.use_new_attention_order)
        return (x + self.proj_out(h)).reshape(batch, channels, *spatial)


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``op``), or 2x2 average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            if out_channels not in (None, channels):
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """ADM residual block: time embedding via ``emb_layers``; optional up/down resampling inside the block.

    With ``cond_channels > 0`` both GroupNorms become conditional (``GN(h) * (1 + gamma) + beta``, gamma and
    beta linear in the conditioning vector, zero-initialised so training starts from the plain block).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
        cond_channels: int = 0,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.resample: nn.Module = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        else:
            self.resample = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)
        self.in_norm_cond = zero_init(nn.Linear(cond_channels, 2 * channels)) if cond_channels else None
        self.out_norm_cond = zero_init(nn.Linear(cond_channels, 2 * out_channels)) if cond_channels else None

    def _norm(self, norm: nn.Module, h: Tensor, modulation: nn.Module | None, cond: Tensor | None) -> Tensor:
        h = norm(h)
        if modulation is None:
            return h
        if cond is None:
            raise ValueError("this ResBlock was built with conditional norms and needs `cond`")
        return scale_shift(h, modulation(cond))

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None = None) -> Tensor:
        in_norm, in_act, in_conv = self.in_layers
        out_norm, out_act, out_dropout, out_conv = self.out_layers
        h = in_act(self._norm(in_norm, x, self.in_norm_cond, cond))
        # Resample after the activation but before the conv, on both branches (ADM's resblock_updown).
        h = in_conv(self.resample(h))
        x = self.resample(x)
        emb_out = self.emb_layers(emb)
        if self.use_scale_shift_norm:
            h = scale_shift(self._norm(out_norm, h, self.out_norm_cond, cond), emb_out)
        else:
            h = self._norm(out_norm, h + emb_out.type(h.dtype)[..., None, None], self.out_norm_cond, cond)
        h = out_conv(out_dropout(out_act(h)))
        return self.skip_connection(x) + h


class EmbedSequential(nn.Sequential):
    """Sequential that hands the embedding (and norm conditioning) to the ResBlocks it holds."""

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x
