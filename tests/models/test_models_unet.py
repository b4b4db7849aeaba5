"""UNetModel behaviour: shapes, conditioning, null conditioning, config round trip, bad input, bf16."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from rcdm_lab.errors import RCDMError
from rcdm_lab.models import UNetModel

SSL_DIM = 10


def tiny_kwargs(**overrides):
    kwargs = dict(
        image_size=16,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
        ssl_dim=SSL_DIM,
        cond_norm_dim=16,
    )
    return {**kwargs, **overrides}


def randomize(model: torch.nn.Module, seed: int = 0, skip: str | None = None) -> torch.nn.Module:
    """Zero-initialised output convs make a fresh UNet output exactly 0; give every weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if skip is None or skip not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def inputs(model: UNetModel, batch: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    x = torch.randn(batch, model.in_channels, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    feat = torch.randn(batch, model.ssl_dim, generator=generator)
    return x, t, feat


@pytest.mark.parametrize(
    "overrides",
    [
        dict(cond_mode="emb"),
        dict(cond_mode="norm"),
        dict(cond_mode="norm", resblock_updown=False, use_new_attention_order=True),
        dict(image_size=32, channel_mult=(1, 1, 2), attention_resolutions=(16, 8), resblock_updown=False),
        dict(image_size=32, channel_mult=(1, 2, 2), attention_resolutions=(32,), use_new_attention_order=True),
        dict(attention_resolutions=(), use_scale_shift_norm=False, out_channels=3, in_channels=1),
        dict(channel_mult=(0.5, 1), model_channels=64, num_head_channels=16, num_heads_upsample=4),
        dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=2),
    ],
)
def test_output_has_input_resolution_and_out_channels(overrides):
    model = randomize(UNetModel(**tiny_kwargs(**overrides)))
    x, t, feat = inputs(model, batch=3)
    out = model(x, t, feat)
    assert out.shape == (3, model.out_channels, model.image_size, model.image_size)
    assert torch.isfinite(out).all()


def test_fresh_model_outputs_zero_because_output_conv_is_zero_initialised():
    model = UNetModel(**tiny_kwargs()).eval()
    x, t, feat = inputs(model)
    assert torch.equal(model(x, t, feat), torch.zeros(2, 6, 16, 16))


@pytest.mark.parametrize("cond_mode", ["emb", "norm"])
def test_representation_changes_output_and_same_representation_repeats_it(cond_mode):
    model = randomize(UNetModel(**tiny_kwargs(cond_mode=cond_mode)))
    x, t, feat = inputs(model)
    with torch.no_grad():
        out = model(x, t, feat)
        again = model(x, t, feat.clone())
        other = model(x, t, feat + 1.0)
    assert torch.equal(out, again)
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample reacts


def test_norm_mode_starts_as_unconditional_net():
    # Only the per-norm gamma/beta layers are zero-initialised: with them at zero, feat must not matter.
    model = randomize(UNetModel(**tiny_kwargs(cond_mode="norm")), skip="_norm_cond")
    x, t, feat = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x, t, feat), model(x, t, torch.randn_like(feat)))


def test_cond_modes_own_their_layers():
    emb_keys = UNetModel(**tiny_kwargs(cond_mode="emb")).state_dict().keys()
    norm_keys = UNetModel(**tiny_kwargs(cond_mode="norm")).state_dict().keys()
    assert "ssl_emb.weight" in emb_keys and not any("cond" in k for k in emb_keys)
    assert "ssl_emb.weight" not in norm_keys and "cond_proj.weight" in norm_keys
    # Two conditional norms in every ResBlock: in_layers.0 and out_layers.0.
    assert sum(k.endswith("in_layers.0.weight") for k in norm_keys) == sum(
        k.endswith("in_norm_cond.weight") for k in norm_keys
    )
    assert sum(k.endswith("out_layers.0.weight") for k in norm_keys) == sum(
        k.endswith("out_norm_cond.weight") for k in norm_keys
    )


@pytest.mark.parametrize("cond_mode", ["emb", "norm"])
def test_drop_cond_replaces_exactly_the_flagged_rows_by_null_feat(cond_mode):
    model = randomize(UNetModel(**tiny_kwargs(cond_mode=cond_mode, learn_null_cond=True)))
    x, t, feat = inputs(model, batch=4)
    mask = torch.tensor([True, False, True, False])
    explicit = feat.clone()
    explicit[mask] = model.null_feat.detach()
    with torch.no_grad():
        dropped = model(x, t, feat, drop_cond=mask)
        reference = model(x, t, explicit)
        kept = model(x, t, feat)
    torch.testing.assert_close(dropped, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped[~mask], kept[~mask], rtol=0, atol=1e-6)
    assert (dropped[mask] - kept[mask]).abs().amax() > 1e-3


def test_null_feat_exists_only_when_learned():
    assert "null_feat" not in UNetModel(**tiny_kwargs()).state_dict()
    learned = UNetModel(**tiny_kwargs(learn_null_cond=True))
    assert learned.state_dict()["null_feat"].shape == (SSL_DIM,)
    assert learned.null_feat.requires_grad


def test_drop_cond_without_null_feat_is_refused_unless_nothing_is_dropped():
    model = randomize(UNetModel(**tiny_kwargs()))
    x, t, feat = inputs(model)
    with pytest.raises(ValueError, match="learn_null_cond"):
        model(x, t, feat, drop_cond=torch.tensor([False, True]))
    with torch.no_grad():
        assert torch.equal(model(x, t, feat, drop_cond=torch.tensor([False, False])), model(x, t, feat))


def test_feature_width_mismatch_names_ssl_dim():
    model = UNetModel(**tiny_kwargs())
    x, t, _ = inputs(model)
    with pytest.raises(RCDMError, match="ssl_dim"):
        model(x, t, torch.randn(2, SSL_DIM + 1))


def test_config_is_json_and_rebuilds_the_same_model():
    kwargs = tiny_kwargs(
        cond_mode="norm",
        learn_null_cond=True,
        channel_mult=OmegaConf.create([1, 2]),
        attention_resolutions=OmegaConf.create([8]),
    )
    model = UNetModel(**kwargs)
    config = json.loads(json.dumps(model.config))
    assert config["channel_mult"] == [1, 2] and config["attention_resolutions"] == [8]
    rebuilt = UNetModel(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.config == model.config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(cond_mode="film"), "cond_mode"),
        (dict(num_heads=3), "num_heads"),
        (dict(model_channels=48, num_head_channels=64), "num_head_channels"),
        (dict(image_size=15), "image_size=15 cannot be halved"),
        (dict(attention_resolutions=(16, 12)), r"attention_resolutions \[12\]"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult="1,x"), "channel_mult"),
    ],
)
def test_bad_constructor_input_names_the_fix(overrides, message):
    with pytest.raises(RCDMError, match=message):
        UNetModel(**tiny_kwargs(**overrides))


def test_builds_on_meta_device_without_touching_memory():
    with torch.device("meta"):
        model = UNetModel(**tiny_kwargs(cond_mode="norm", learn_null_cond=True))
    assert all(p.is_meta for p in model.parameters())


def test_bf16_autocast_forward_is_close_to_fp32():
    model = randomize(UNetModel(**tiny_kwargs(attention_resolutions=(16, 8))))
    x, t, feat = inputs(model)
    with torch.no_grad():
        reference = model(x, t, feat)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, feat)
    assert low.dtype == torch.float32
    assert ((low - reference).norm() / reference.norm()).item() < 0.05
