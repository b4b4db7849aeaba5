"""Official layout and checkpoint loading: key list, flags translation, strict load, mismatch reports."""

import ast
from importlib.resources import files

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.models import OFFICIAL_128_FLAGS, UNetModel, load_official_unet, unet_kwargs_from_flags
from rcdm_lab.models.official import default_channel_mult

README_MODEL_FLAGS_128 = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)
SMALL_FLAGS = {
    "image_size": 16,
    "num_channels": 32,
    "channel_mult": "1,2",
    "attention_resolutions": "8",
    "num_res_blocks": 1,
    "num_heads": 2,
    "learn_sigma": True,
    "resblock_updown": True,
    "ssl_dim": 12,
}


def official_key_shapes() -> list[tuple[str, tuple[int, ...]]]:
    text = files("rcdm_lab.models").joinpath("official_rcdm128_state_dict_keys.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [(key, tuple(ast.literal_eval(shape))) for key, shape in rows]


def test_official_128_flags_build_the_released_state_dict_layout_exactly():
    with torch.device("meta"):
        model = UNetModel(**unet_kwargs_from_flags(OFFICIAL_128_FLAGS))
    ours = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    official = official_key_shapes()
    assert len(official) == 494
    assert ours == official
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(torch.Size(shape).numel() for _, shape in official)
    assert round(n_params / 1e6, 1) == 422.6


def test_official_128_flags_translate_to_these_kwargs():
    assert unet_kwargs_from_flags(OFFICIAL_128_FLAGS) == {
        "image_size": 128,
        "in_channels": 3,
        "model_channels": 256,
        "out_channels": 6,
        "num_res_blocks": 2,
        "attention_resolutions": [32, 16, 8],
        "dropout": 0.0,
        "channel_mult": [1, 1, 2, 3, 4],
        "num_heads": 4,
        "num_head_channels": -1,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "use_new_attention_order": False,
        "ssl_dim": 2048,
        "cond_mode": "emb",
    }


def test_flag_string_from_the_readme_parses_like_the_mapping():
    assert unet_kwargs_from_flags(README_MODEL_FLAGS_128) == unet_kwargs_from_flags(OFFICIAL_128_FLAGS)
    parsed = unet_kwargs_from_flags("--image_size 64 --feat_cond --ssl_dim=256 --num_heads_upsample -1 --dropout 0.1")
    assert parsed["ssl_dim"] == 256 and parsed["dropout"] == 0.1 and parsed["num_heads_upsample"] == -1
    assert parsed["channel_mult"] == [1, 2, 3, 4] and parsed["attention_resolutions"] == [16, 8]
    assert parsed["out_channels"] == 3  # guided-diffusion's learn_sigma default is False
    assert unet_kwargs_from_flags({"image_size": 512, "channel_mult": ""})["channel_mult"][0] == 0.5


def test_default_channel_mult_by_image_size():
    assert default_channel_mult(64) == (1, 2, 3, 4)
    assert default_channel_mult(128) == (1, 1, 2, 3, 4)
    assert default_channel_mult(256) == (1, 1, 2, 2, 4, 4)
    assert default_channel_mult(512) == (0.5, 1, 1, 2, 2, 4, 4)
    with pytest.raises(RCDMError, match="pass channel_mult explicitly"):
        default_channel_mult(48)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"class_cond": "True"}, "class_cond=True is not supported"),
        ({"num_chanels": 256}, r"unknown flag\(s\) num_chanels.*num_channels"),
        ({"learn_sigma": "maybe"}, "learn_sigma='maybe' is not a boolean"),
        ({"num_channels": "wide"}, "num_channels='wide' is not an integer"),
        ("--image_size 64 stray", "cannot read 'stray'"),
    ],
)
def test_bad_flags_name_the_fix(flags, message):
    with pytest.raises(RCDMError, match=message):
        unet_kwargs_from_flags(flags)


def random_small_model(**flag_overrides) -> UNetModel:
    model = UNetModel(**unet_kwargs_from_flags({**SMALL_FLAGS, **flag_overrides}))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def test_load_official_unet_round_trips_a_saved_ddp_state_dict(tmp_path):
    source = random_small_model()
    path = tmp_path / "rcdm.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    loaded = load_official_unet(path, SMALL_FLAGS)
    assert not loaded.training
    x, t, feat = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.randn(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, feat), source(x, t, feat))


def test_load_from_a_half_precision_mapping_gives_trainable_fp32_without_aliasing():
    state = {k: v.half() for k, v in random_small_model().state_dict().items()}
    loaded = load_official_unet(state, SMALL_FLAGS)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.parameters())
    state = random_small_model().state_dict()
    loaded = load_official_unet(state, SMALL_FLAGS)
    with torch.no_grad():
        loaded.ssl_emb.bias.add_(1.0)
    assert not torch.equal(loaded.ssl_emb.bias, state["ssl_emb.bias"])


def test_mismatched_state_dict_lists_missing_unexpected_and_misshapen_keys():
    state = random_small_model().state_dict()
    state.pop("out.0.bias")
    state["extra.weight"] = torch.zeros(1)
    state["ssl_emb.weight"] = torch.zeros(128, 7)
    with pytest.raises(RCDMError) as caught:
        load_official_unet(state, SMALL_FLAGS)
    message = str(caught.value)
    assert "missing (1): out.0.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "wrong shape (1): ssl_emb.weight: found (128, 7) vs expected (128, 12)" in message
    assert "ssl_dim=7" in message


def test_mismatch_report_hints_at_width_and_sigma_flags():
    state = random_small_model(num_channels=64, learn_sigma=False).state_dict()
    with pytest.raises(RCDMError, match=r"num_channels=64.*learn_sigma=False"):
        load_official_unet(state, SMALL_FLAGS)


def test_long_mismatch_lists_are_cut_to_ten_with_a_count():
    state = random_small_model().state_dict()
    state.update({f"stray.{i}": torch.zeros(1) for i in range(15)})
    with pytest.raises(RCDMError, match=r"unexpected \(15\): stray\.0, .*stray\.9, \.\.\. \(\+5 more\)"):
        load_official_unet(state, SMALL_FLAGS)


def test_missing_or_unreadable_checkpoint_file(tmp_path):
    with pytest.raises(RCDMError, match="no checkpoint at"):
        load_official_unet(tmp_path / "absent.pt", SMALL_FLAGS)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(RCDMError, match="not a state dict of tensors"):
        load_official_unet(not_a_state_dict, SMALL_FLAGS)
