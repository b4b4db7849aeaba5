"""Numerics that must equal guided-diffusion's: embeddings, attention orderings, ResBlock, resampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from rcdm_lab.models import UNetModel
from rcdm_lab.models.blocks import AttentionBlock, Downsample, ResBlock, Upsample, norm_groups, timestep_embedding


def fill_randomly(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return module


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_is_cos_then_sin_with_max_period_10000(dim):
    t = torch.tensor([0, 1, 17, 999])
    half = dim // 2
    expected = torch.zeros(len(t), dim, dtype=torch.float64)
    for row, step in enumerate(t.tolist()):
        for j in range(half):
            freq = 10000.0 ** (-j / half)
            expected[row, j] = math.cos(step * freq)
            expected[row, half + j] = math.sin(step * freq)
    got = timestep_embedding(t, dim)
    assert got.shape == (4, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    assert torch.equal(got[0, :half], torch.ones(half))  # t = 0: cos half first


def reference_attention(block: AttentionBlock, x: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """guided-diffusion's QKVAttentionLegacy / QKVAttention written as plain einsums."""
    b, c, hgt, wdt = x.shape
    flat = x.reshape(b, c, -1)
    normed = F.group_norm(flat, 32, block.norm.weight, block.norm.bias, eps=1e-5)
    qkv = F.conv1d(normed, block.qkv.weight, block.qkv.bias)
    ch = c // heads
    if new_order:
        q, k, v = (part.reshape(b * heads, ch, -1) for part in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    attended = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    out = F.conv1d(attended, block.proj_out.weight, block.proj_out.bias)
    return (flat + out).reshape(b, c, hgt, wdt)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_einsum_reference(new_order):
    block = fill_randomly(AttentionBlock(64, num_heads=4, use_new_attention_order=new_order))
    x = torch.randn(2, 64, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_attention(block, x, 4, new_order), rtol=1e-5, atol=1e-5)
        # The two packings read different channels as q/k/v: the flag must matter.
        other = reference_attention(block, x, 4, not new_order)
        assert (block(x) - other).abs().max() > 1e-3


def test_fresh_attention_block_is_identity():
    block = AttentionBlock(32, num_heads=2)
    x = torch.randn(1, 32, 3, 3)
    assert torch.equal(block(x), x)


def test_num_head_channels_overrides_num_heads_and_upsample_heads_apply_to_output_blocks():
    assert AttentionBlock(128, num_heads=4, num_head_channels=32).num_heads == 4
    assert AttentionBlock(128, num_heads=3, num_head_channels=64).num_heads == 2
    assert AttentionBlock(96, num_heads=3).num_heads == 3
    model = UNetModel(
        image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(8,),
        num_heads=2, num_heads_upsample=4, ssl_dim=4,
    )  # fmt: skip
    assert model.input_blocks[1][1].num_heads == 2
    assert model.middle_block[1].num_heads == 2
    assert {block[1].num_heads for block in model.output_blocks} == {4}


def reference_resblock(block: ResBlock, x, emb, scale_shift: bool, resample=None):
    """guided-diffusion's ResBlock._forward, step by step (resample applied after SiLU, before the conv)."""
    norm_in, _, conv_in = block.in_layers
    norm_out, _, _, conv_out = block.out_layers
    gn = lambda h, norm: F.group_norm(h, norm.num_groups, norm.weight, norm.bias, 1e-5)  # noqa: E731
    h = F.silu(gn(x, norm_in))
    if resample is not None:
        h, x = resample(h), resample(x)
    h = conv_in(h)
    emb_out = block.emb_layers[1](F.silu(emb))[..., None, None]
    if scale_shift:
        scale, shift = emb_out.chunk(2, dim=1)
        h = gn(h, norm_out) * (1 + scale) + shift
    else:
        h = gn(h + emb_out, norm_out)
    return block.skip_connection(x) + conv_out(F.silu(h))


@pytest.mark.parametrize(
    ("kwargs", "resample"),
    [
        (dict(out_channels=64, use_scale_shift_norm=True), None),
        (dict(out_channels=64, use_scale_shift_norm=False), None),
        (dict(down=True), lambda t: F.avg_pool2d(t, 2)),
        (dict(up=True), lambda t: F.interpolate(t, scale_factor=2, mode="nearest")),
    ],
)
def test_resblock_matches_guided_diffusion_formula(kwargs, resample):
    block = fill_randomly(ResBlock(32, emb_channels=16, dropout=0.5, **kwargs)).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        expected = reference_resblock(block, x, emb, kwargs.get("use_scale_shift_norm", True), resample)
        torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-5)


def test_resblock_skip_is_identity_or_1x1_conv():
    assert isinstance(ResBlock(32, 16, 0.0).skip_connection, torch.nn.Identity)
    skip = ResBlock(32, 16, 0.0, out_channels=64).skip_connection
    assert isinstance(skip, torch.nn.Conv2d) and skip.kernel_size == (1, 1)


def test_dropout_sits_before_the_last_conv_only():
    block = ResBlock(32, 16, dropout=0.3)
    dropouts = [name for name, m in block.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == ["out_layers.2"]


def test_resampling_is_nearest_up_and_avgpool_or_stride2_conv_down():
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(Upsample(4, use_conv=False)(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(Downsample(4, use_conv=False)(x), x.reshape(1, 4, 3, 2, 3, 2).mean(dim=(3, 5)))
    conv = Downsample(4, use_conv=True, out_channels=8).op
    assert (conv.stride, conv.padding, conv.kernel_size) == ((2, 2), (1, 1), (3, 3))
    assert Downsample(4, use_conv=True, out_channels=8)(x).shape == (1, 8, 3, 3)


def test_group_norm_uses_adm_32_groups_and_narrow_widths_fall_back_to_a_divisor():
    assert [norm_groups(c) for c in (32, 256, 768, 16, 48, 8)] == [32, 32, 32, 16, 16, 8]
    model = UNetModel(image_size=8, model_channels=32, channel_mult=(1, 2), attention_resolutions=(), ssl_dim=4)
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
