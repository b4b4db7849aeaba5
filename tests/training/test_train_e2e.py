"""Train a tiny RCDM end to end, then sample from it: the walking skeleton, checked at every joint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.diffusion import sample
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_testing import compose_train, run_cli

pytestmark = pytest.mark.slow


def test_checkpoint_is_self_describing_and_holds_no_encoder_weights(trained_checkpoint):
    checkpoint = read_checkpoint(trained_checkpoint)
    meta = checkpoint.record
    assert meta.encoder.spec["name"] == "mobilenet_v2" and meta.encoder.spec["layer"] == "backbone"
    assert meta.encoder.identity["dim"] == 1280
    assert len(meta.encoder.identity["weights_digest"]) >= 8
    assert meta.unet["ssl_dim"] == 1280 and meta.unet["image_size"] == 16
    assert meta.resolution == 16
    assert checkpoint.contents["global_step"] == 4
    assert not [k for k in checkpoint.state_dict if k.startswith("encoder.")]
    assert any(k.startswith("ema.module.") for k in checkpoint.state_dict)


def test_training_logs_loss_per_quarter_and_writes_preview_grids(trained_checkpoint):
    run = trained_checkpoint.parents[1]
    with open(run / "logs" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/loss", "train/mse", "train/vlb"} <= columns
    assert any(c.startswith("train/loss_q") for c in columns)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(np.isfinite(losses))
    grids = sorted((run / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]


def test_frozen_encoder_is_untouched_by_training(tmp_path):
    from rcdm_lab.cli.train import build

    module, datamodule, trainer = build(compose_train(tmp_path, "trainer.max_steps=2"))
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    trainer.fit(module, datamodule=datamodule)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.encoder.parameters()}
    assert not any(p.requires_grad for p in module.encoder.parameters())
    assert not module.encoder.training
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"encoder tensor {key} changed during training"


def test_checkpoint_reloads_strictly_with_equal_outputs(trained_checkpoint, tmp_path):
    from rcdm_lab.cli.train import build

    module, _, _ = build(compose_train(tmp_path, "model.cond_drop=0.2"))
    checkpoint = read_checkpoint(trained_checkpoint)
    module.load_state_dict(checkpoint.state_dict, strict=True)
    pipeline = RCDMPipeline.from_checkpoint(trained_checkpoint)
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), torch.randn(2, 1280)
    module.ema.module.eval()
    with torch.no_grad():
        assert torch.equal(module.ema.module(x, t, feat=h), pipeline.unet(x, t, feat=h))


def test_guidance_one_is_plain_conditional_sampling(trained_checkpoint):
    pipeline = RCDMPipeline.from_checkpoint(trained_checkpoint)
    h = torch.randn(2, 1280)
    plain = pipeline.sample(h, 2, sampler="ddim", steps=3, guidance=1.0, seed=7, precision="32")
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(4, 3, 16, 16, generator=generator)
    direct = sample(pipeline.diffusion, pipeline.unet, noise, sampler="ddim", steps=3,
                    generator=generator, cond={"feat": h.repeat_interleave(2, 0)})
    assert torch.equal(plain, direct)
    assert torch.equal(plain, pipeline.sample(h, 2, sampler="ddim", steps=3, guidance=1.0, seed=7, precision="32"))


def test_guidance_runs_conditional_and_null_halves(trained_checkpoint, monkeypatch):
    # A 4-step model's samples saturate at +-1, so check the wiring rather than the pixels.
    pipeline = RCDMPipeline.from_checkpoint(trained_checkpoint)
    forward, calls = pipeline.unet.forward, []

    def recording_forward(x, t, feat, drop_cond=None):
        calls.append((len(x), None if drop_cond is None else drop_cond.tolist()))
        return forward(x, t, feat=feat, drop_cond=drop_cond)

    monkeypatch.setattr(pipeline.unet, "forward", recording_forward)
    pipeline.sample(torch.randn(2, 1280), 2, sampler="ddim", steps=3, guidance=4.0, seed=7)
    assert calls == [(8, [False] * 4 + [True] * 4)] * 3


def test_rcdm_sample_on_any_images(trained_checkpoint, tmp_path):
    import skimage.data

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.jpg")           # 300 x 451 RGB photo
    Image.fromarray(skimage.data.camera()).save(folder / "camera.png")         # 512 x 512 grayscale
    out = tmp_path / "out"
    result = run_cli("rcdm-sample", f"ckpt={trained_checkpoint}", f"images={folder}", "n=3", "sampling.steps=2",
                     "sampling.sampler=ddim", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}")
    assert result.returncode == 0, result.stderr
    saved = torch.load(out / "samples.pt")
    assert saved["samples"].shape == (2, 3, 3, 16, 16)
    assert saved["representations"].shape == (2, 1280)
    assert saved["samples"].min() >= -1 and saved["samples"].max() <= 1
    grid = Image.open(out / "samples.png")
    assert grid.width > grid.height  # one row per image: conditioning + 3 samples
    assert "samples.png" in result.stdout


def test_wandb_logger_runs_offline_and_receives_the_sample_grids(tmp_path, monkeypatch):
    from rcdm_lab.cli.train import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(compose_train(tmp_path, "logger=wandb", "trainer.max_steps=2"))
    grids = list((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/images/samples/grid_*.png"))
    assert len(grids) == 1   # the step-2 grid (every_n_steps=2); the end-of-training one is the same step


def test_condition_dropout_replaces_h_at_the_configured_rate(tmp_path):
    from rcdm_lab.cli.train import build

    module = build(compose_train(tmp_path, "model.cond_drop=0.15"))[0]
    masks = []
    module.unet.register_forward_pre_hook(lambda unet, args, kwargs: masks.append(kwargs["drop_cond"]),
                                          with_kwargs=True)
    # Only the mask matters here: a stand-in forward (hooks still run) saves a 4000-image UNet pass.
    module.unet.forward = lambda x, t, feat, drop_cond=None: torch.zeros(len(x), 6, *x.shape[2:])
    batch = {"x0": torch.zeros(4000, 3, 16, 16), "h": torch.randn(4000, 1280)}
    module.diffusion_losses(batch, torch.Generator().manual_seed(0), module.cond_drop)
    assert masks[0].dtype == torch.bool and masks[0].shape == (4000,)
    # 0.15 +- 4 standard deviations of a binomial fraction over 4000 draws.
    assert abs(masks[0].float().mean().item() - 0.15) < 4 * (0.15 * 0.85 / 4000) ** 0.5


@pytest.mark.parametrize("clip, bound", [(1e-3, 1e-3), (None, None)])
def test_gradient_clipping_bounds_the_update(tmp_path, clip, bound):
    from rcdm_lab.cli.train import build

    overrides = ["model.optimizer._target_=torch.optim.SGD", "~model.optimizer.weight_decay", "model.optimizer.lr=1.0",
                 "trainer.max_steps=1", f"trainer.gradient_clip_val={'null' if clip is None else clip}",
                 "callbacks.preview.every_n_steps=0"]
    module, datamodule, trainer = build(compose_train(tmp_path, *overrides))
    before = [p.detach().clone() for p in module.unet.parameters()]
    trainer.fit(module, datamodule=datamodule)
    # Plain SGD at lr 1: the update is the (clipped) gradient itself.
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(module.unet.parameters(), before, strict=True)])
    if bound is None:
        assert update.norm() > 100 * 1e-3   # unclipped, the first gradient is far above the bound tested above
    else:
        assert update.norm() <= bound * (1 + 1e-3)


def test_a_wall_clock_cap_says_how_many_steps_ran_and_that_results_will_differ(tmp_path, caplog):
    from rcdm_lab.cli.train import train

    caplog.set_level("INFO")
    train(compose_train(tmp_path, "trainer.max_steps=1000", "trainer.max_time=00:00:00:01",
                        "callbacks.preview.every_n_steps=0"))
    message = next(r.getMessage() for r in caplog.records if "trainer.max_time" in r.getMessage())
    assert "training ran " in message and " of 1000 steps" in message and "results will differ" in message
