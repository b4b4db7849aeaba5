"""The ADM UNet conditioned on a frozen encoder's representation h = f(x) (RCDM).

Parameter names and shapes follow guided-diffusion / facebookresearch/RCDM, so released checkpoints load
with ``strict=True``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.models.blocks import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_init,
)

COND_MODES = ("emb", "norm")


def _number_list(values: Sequence[float] | str, name: str) -> list[float]:
    """Lists, tuples, ListConfigs or "1,2,2" strings -> numbers; integral values stay ints (readable)."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        numbers = [float(v) for v in items if str(v).strip()]
    except (TypeError, ValueError) as err:
        raise RCDMError(f"{name} must be a list of numbers such as [1, 2, 2, 2], got {values!r}") from err
    return [int(n) if n.is_integer() else n for n in numbers]


def _feature_map_sizes(image_size: int, levels: int) -> list[int]:
    if levels < 1:
        raise RCDMError("channel_mult is empty: give one multiplier per resolution level, e.g. [1, 2, 2, 2]")
    if image_size % 2 ** (levels - 1):
        raise RCDMError(
            f"image_size={image_size} cannot be halved {levels - 1} times (once per channel_mult level after "
            f"the first): use an image_size divisible by {2 ** (levels - 1)} or fewer channel_mult entries"
        )
    return [image_size // 2**level for level in range(levels)]


def unet_out_channels(learn_sigma: bool, image_channels: int = 3) -> int:
    """The UNet's output channels: eps per image channel, plus (IDDPM's learned sigma) the variance interpolation v.

    The one place this rule is stated: rcdm-train sizes its UNet with it, the official loader reads the released
    flags with it, and `learns_sigma` inverts it.
    """
    return 2 * image_channels if learn_sigma else image_channels


def learns_sigma(unet_config: Mapping[str, Any]) -> bool:
    """Whether a UNet with this ``config`` outputs the variance too (the diffusion must then learn sigma)."""
    return unet_config["out_channels"] == unet_out_channels(True, unet_config.get("in_channels", 3))


class UNetModel(nn.Module):
    """ADM UNet predicting eps (and the variance interpolation when ``out_channels`` is 2x the input).

    ``attention_resolutions`` are feature-map sizes in pixels (32 means "at the 32x32 level").
    ``cond_mode="emb"`` adds ``ssl_emb(feat)`` to the time embedding (released RCDM code);
    ``cond_mode="norm"`` projects ``feat`` with ``cond_proj`` and modulates every ResBlock GroupNorm
    (the paper's text). ``learn_null_cond`` adds a learned ``null_feat`` used where ``drop_cond`` is True,
    for classifier-free guidance.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        model_channels: int = 128,
        out_channels: int = 6,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 2, 2),
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        use_new_attention_order: bool = False,
        ssl_dim: int = 2048,
        cond_mode: str = "emb",
        cond_norm_dim: int = 512,
        learn_null_cond: bool = False,
    ):
        super().__init__()
        channel_mult = _number_list(channel_mult, "channel_mult")
        attention_resolutions = [int(r) for r in _number_list(attention_resolutions, "attention_resolutions")]
        self.config = {
            "image_size": int(image_size),
            "in_channels": int(in_channels),
            "model_channels": int(model_channels),
            "out_channels": int(out_channels),
            "num_res_blocks": int(num_res_blocks),
            "attention_resolutions": attention_resolutions,
            "dropout": float(dropout),
            "channel_mult": channel_mult,
            "num_heads": int(num_heads),
            "num_head_channels": int(num_head_channels),
            "num_heads_upsample": int(num_heads_upsample),
            "use_scale_shift_norm": bool(use_scale_shift_norm),
            "resblock_updown": bool(resblock_updown),
            "use_new_attention_order": bool(use_new_attention_order),
            "ssl_dim": int(ssl_dim),
            "cond_mode": str(cond_mode),
            "cond_norm_dim": int(cond_norm_dim),
            "learn_null_cond": bool(learn_null_cond),
        }
        if cond_mode not in COND_MODES:
            raise RCDMError(f"unknown cond_mode {cond_mode!r}: use one of {', '.join(COND_MODES)}")
        sizes = _feature_map_sizes(image_size, len(channel_mult))
        unused = sorted(set(attention_resolutions) - set(sizes), reverse=True)
        if unused:
            raise RCDMError(
                f"attention_resolutions {unused} are not feature-map sizes of this UNet (it has {sizes} px): "
                f"list only sizes from {sizes}"
            )
        widths = [int(mult * model_channels) for mult in channel_mult]
        if min(widths) < 1:
            raise RCDMError(f"channel_mult {channel_mult} x model_channels {model_channels} gives an empty level")

        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.ssl_dim = ssl_dim
        self.cond_mode = cond_mode
        self.learn_null_cond = learn_null_cond

        time_embed_dim = 4 * model_channels
        if learn_null_cond:
            self.null_feat = nn.Parameter(torch.zeros(ssl_dim))
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if cond_mode == "emb":
            self.ssl_emb = nn.Linear(ssl_dim, time_embed_dim)
            cond_channels = 0
        else:
            self.cond_proj = nn.Linear(ssl_dim, cond_norm_dim)
            cond_channels = cond_norm_dim

        resblock = functools.partial(
            ResBlock,
            emb_channels=time_embed_dim,
            dropout=dropout,
            use_scale_shift_norm=use_scale_shift_norm,
            cond_channels=cond_channels,
        )
        attention = functools.partial(
            AttentionBlock,
            num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order,
        )
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        attend_at = set(attention_resolutions)

        ch = widths[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for level, (width, size) in enumerate(zip(widths, sizes, strict=True)):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, out_channels=width)]
                ch = width
                if size in attend_at:
                    layers.append(attention(ch, num_heads=num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(widths) - 1:
                down = resblock(ch, down=True) if resblock_updown else Downsample(ch, use_conv=True)
                self.input_blocks.append(EmbedSequential(down))
                skip_channels.append(ch)

        self.middle_block = EmbedSequential(resblock(ch), attention(ch, num_heads=num_heads), resblock(ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width, size = widths[level], sizes[level]
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), out_channels=width)]
                ch = width
                if size in attend_at:
                    layers.append(attention(ch, num_heads=heads_up))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, up=True) if resblock_updown else Upsample(ch, use_conv=True))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(widths[0], out_channels, 3, padding=1)))

    def _conditioning(self, feat: Tensor, drop_cond: Tensor | None) -> Tensor:
        if feat.ndim != 2 or feat.shape[1] != self.ssl_dim:
            raise RCDMError(
                f"representation has shape {tuple(feat.shape)} but the UNet expects (batch, {self.ssl_dim}): "
                f"set the model's ssl_dim to the encoder's output dimension"
            )
        if drop_cond is None:
            return feat
        if not self.learn_null_cond:
            if bool(drop_cond.any()):
                raise ValueError("drop_cond needs a model built with learn_null_cond=True")
            return feat
        return torch.where(drop_cond.to(torch.bool).reshape(-1, 1), self.null_feat.to(feat.dtype), feat)

    def forward(self, x: Tensor, timesteps: Tensor, feat: Tensor, drop_cond: Tensor | None = None) -> Tensor:
        """Predict from noisy ``x`` (B, C, H, W) at integer ``timesteps`` (B,) given ``feat`` (B, ssl_dim).

        Rows where ``drop_cond`` (B,) bool is True use the learned null representation instead of ``feat``.
        """
        feat = self._conditioning(feat, drop_cond)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        cond = None
        if self.cond_mode == "emb":
            emb = emb + self.ssl_emb(feat)
        else:
            cond = self.cond_proj(feat)

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, cond)
            skips.append(h)
        h = self.middle_block(h, emb, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)
        # Under autocast the net runs in low precision; hand the loss the input's dtype.
        return self.out(h).to(x.dtype)
