"""Sampling from a released-format checkpoint, and standardised representations for badly scaled encoders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.data import ShapesDataset
from rcdm_lab.models import UNetModel, unet_kwargs_from_flags
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_testing import compose_train, run_cli

pytestmark = pytest.mark.slow

TINY_OFFICIAL_FLAGS = {"image_size": 16, "num_channels": 16, "num_res_blocks": 1, "channel_mult": "1,2",
                       "attention_resolutions": "8", "num_heads": 2, "learn_sigma": True, "ssl_dim": 1280,
                       "resblock_updown": True, "use_scale_shift_norm": True}


def test_rcdm_sample_accepts_an_official_checkpoint(tmp_path):
    torch.manual_seed(0)
    released = UNetModel(**unet_kwargs_from_flags(TINY_OFFICIAL_FLAGS))
    for parameter in released.parameters():   # a "trained" network: zero-initialised layers made non-zero
        torch.nn.init.normal_(parameter, std=0.05)
    torch.save({f"module.{k}": v for k, v in released.state_dict().items()}, tmp_path / "rcdm_ema_tiny.pt")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    flags = [f"official.flags.{k}='{v}'" if isinstance(v, str) else f"official.flags.{k}={v}"
             for k, v in TINY_OFFICIAL_FLAGS.items()]
    result = run_cli("rcdm-sample", f"ckpt=official:{tmp_path / 'rcdm_ema_tiny.pt'}", f"images={tmp_path / 'red.png'}",
                     "n=2", "sampling.steps=2", f"out={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}",
                     *flags, "official.encoder.name=mobilenet_v2",
                     "official.encoder.input_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "out" / "samples.pt")
    assert saved["samples"].shape == (1, 2, 3, 16, 16)


def test_official_checkpoint_with_the_wrong_representation_size_is_refused(tmp_path):
    from rcdm_lab.encoders import build_encoder
    from rcdm_lab.errors import RCDMError

    released = UNetModel(**unet_kwargs_from_flags({**TINY_OFFICIAL_FLAGS, "ssl_dim": 2048}))
    encoder = build_encoder("mobilenet_v2", input_size=32)
    with pytest.raises(RCDMError, match="2048-d.*1280-d"):
        RCDMPipeline.from_official(released.state_dict(), encoder=encoder,
                                   flags={**TINY_OFFICIAL_FLAGS, "ssl_dim": 2048})


def test_standardised_representations_of_a_random_encoder(tmp_path):
    # A random-init MobileNetV2 in eval mode gives features of ~1e-9: useless to a UNet unless standardised.
    from rcdm_lab.cli.train import train

    checkpoint = train(compose_train(tmp_path, "encoder.weights=random", "encoder.standardize=true",
                                     "trainer.max_steps=1"))
    state = read_checkpoint(checkpoint).state_dict
    assert bool(state["rep_stats_fitted"])
    assert state["rep_std"].max() < 1e-6          # the raw scale really is tiny ...
    pipeline = RCDMPipeline.from_checkpoint(checkpoint)
    shapes = ShapesDataset("val", image_size=32, num_val=8)
    h = pipeline.encode(torch.stack([shapes[i]["image"] for i in range(8)]))
    fed = pipeline.condition(h)
    assert h.abs().mean() < 1e-6
    assert 0.3 < fed.std().item() < 3             # ... and the UNet is fed unit-scale inputs
    torch.testing.assert_close(fed, (h - state["rep_mean"]) / state["rep_std"])
    noise_fed = pipeline.condition(pipeline.encode(torch.rand(8, 3, 32, 32)))
    assert noise_fed.abs().max() < 1e4            # out-of-distribution images stay finite and bounded


def test_dead_dimensions_are_not_amplified():
    from rcdm_lab.training.module import floored_std

    std = torch.tensor([0.0, 1e-9, 2.0, 2.0])
    torch.testing.assert_close(floored_std(std), torch.tensor([0.01, 0.01, 2.0, 2.0]))  # mean std = 1.0
