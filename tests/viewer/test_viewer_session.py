"""rcdm-viewer's functions, called directly: what a view renders, what Save writes, what a bad input gets."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import gradio as gr
import pytest
import torch
from PIL import Image

from rcdm_lab.cli import figure as figure_cli
from rcdm_lab.cli.viewer import figure_defaults
from rcdm_lab.metrics.diversity import representation_spread
from rcdm_lab.viewer.app import ViewerHandlers, build_app
from rcdm_lab.viewer.session import Controls, Picture, ViewerSession
from rcdm_testing import compose_config

FAST = {"sampler": "ddim", "steps": 2, "guidance": 1.0, "eta": 0.0, "batch_size": 64, "precision": "auto",
        "progress": False, "seed": 0}
CONTROLS = Controls(sampler="ddim", steps=2, guidance=1.0, seed=3, samples=3)


def new_session(tmp_path: Path, *ckpts: Path, labels: tuple[str, ...] = ()) -> ViewerSession:
    session = ViewerSession(models=[], sampling=dict(FAST), out_root=tmp_path / "viewer",
                            figure_defaults=figure_defaults())
    for i, ckpt in enumerate(ckpts):
        session.load(str(ckpt), labels[i] if labels else None)
    return session


def a_photo(path: Path, size: tuple[int, int] = (40, 28)) -> Path:
    pixels = torch.linspace(0, 255, size[0] * size[1] * 3).round().to(torch.uint8).view(size[1], size[0], 3)
    Image.fromarray(pixels.numpy()).save(path)
    return path


@pytest.mark.parametrize("source", ["validation", "upload"])
def test_a_saved_view_is_exactly_what_its_rcdm_figure_command_renders(trained_checkpoint, tmp_path, source):
    session = new_session(tmp_path, trained_checkpoint)
    picture = Picture(val_index=2) if source == "validation" else Picture(upload=str(a_photo(tmp_path / "p.png")))
    view = session.samples(picture, CONTROLS)
    saved = session.save(view)
    record = json.loads((saved / "figure.json").read_text())
    assert Path(record["figure_png"]) == saved / "figure.png" and (saved / "figure.png").is_file()
    assert (saved.parent / "index.html").is_file()

    # The printed command, run through rcdm-figure, renders the same pixels and the same numbers.
    overrides = shlex.split(view.command)[1:]
    cfg = compose_config("figure", *overrides, f"output_dir={tmp_path / 'by_command'}", f"sampling.eta={FAST['eta']}",
                         f"sampling.batch_size={FAST['batch_size']}")
    by_command = figure_cli.run(cfg)
    assert Path(by_command["figure_png"]).read_bytes() == (saved / "figure.png").read_bytes()
    assert by_command["spread"] == record["spread"]
    assert by_command["images"] == record["images"] == (["val 2"] if source == "validation" else ["0"])


def test_the_same_model_twice_gets_the_same_noise_side_by_side(trained_checkpoint, tmp_path):
    session = new_session(tmp_path, trained_checkpoint, trained_checkpoint, labels=("left", "right"))
    view = session.samples(Picture(val_index=1), CONTROLS)
    assert view.kind == "compare_models" and view.results["same_noise"]
    left, right = view.samples   # one sampling call per model
    assert torch.equal(left, right)
    assert set(view.results["models"]) == {"left", "right"}


def test_the_interpolation_slider_starts_at_image_a_s_own_samples(trained_checkpoint, tmp_path):
    session = new_session(tmp_path, trained_checkpoint)
    handlers = ViewerHandlers(session)
    *_, view = handlers.interpolation(0, None, 3, None, "ddim", 2, 1.0, 5, 2, 4)
    assert view.results["first_equals_h_a"] and view.results["last_equals_h_b"]
    # Row r keeps noise r along the whole path, and alpha = 0 is h(a) exactly: the first point's samples are image
    # A's samples with the same seed.
    own = session.samples(Picture(val_index=0), Controls("ddim", 2, 1.0, 5, 2)).samples[0]
    path = view.samples[0].view(4, 2, *own.shape[1:])
    torch.testing.assert_close(path[0], own, atol=1e-4, rtol=0)
    assert not torch.allclose(path[-1], own, atol=1e-3)
    assert len(handlers.at_alpha(view, 3)) == 2 and handlers.at_alpha(view, 99) == handlers.at_alpha(view, 3)


def test_manipulation_takes_the_second_image_as_the_target(trained_checkpoint, tmp_path):
    session = new_session(tmp_path, trained_checkpoint)
    view = session.manipulation(Picture(val_index=0), Picture(val_index=2), CONTROLS, mode="most_common", k=20,
                                n_common=0, n_rare=5, zero_threshold=0.0)
    assert [row["kind"] for row in view.results["rows"]] == ["original", "zeroed", "replaced"]
    assert view.results["targets"] == ["val 2"]
    assert "figure.target_offset=[2]" in view.command


def test_bad_inputs_are_messages_in_the_page_and_the_app_keeps_serving(trained_checkpoint, tmp_path):
    session = new_session(tmp_path, trained_checkpoint, tmp_path / "missing.ckpt")
    handlers = ViewerHandlers(session)
    assert "missing.ckpt did not load" in handlers.models_markdown() and len(session.models) == 1
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(gr.Error, match="cannot read image .*corrupt.png"):
        handlers.samples(0, str(corrupt), "ddim", 2, 1.0, 0, 2, False)
    with pytest.raises(gr.Error, match="validation image 99 does not exist"):
        handlers.samples(99, None, "ddim", 2, 1.0, 0, 2, False)
    with pytest.raises(gr.Error, match="unknown sampler|sampling.sampler"):
        handlers.samples(0, None, "no-such-sampler", 2, 1.0, 0, 2, False)
    with pytest.raises(gr.Error, match="nothing to save"):
        handlers.save(None)
    # After all that the page still samples.
    grid, *_ = handlers.samples(0, None, "ddim", 2, 1.0, 0, 2, False)
    assert Path(grid).is_file()
    build_app(session, samples=2, thumbnails=2)   # and a page over a session with a failed checkpoint builds


def test_representation_spread_against_a_known_spread():
    # Two conditionings, 4 samples each; dimension 0 copies h (held), dimension 1 spreads like the data, dimension 2
    # never varies in the data (left out).
    h = torch.tensor([[1.0, 0.0, 5.0], [2.0, 0.0, 5.0]])
    spread_dim = torch.tensor([1.0, -1.0, 1.0, -1.0])   # variance 4/3 over the 4 samples
    reps = torch.stack([torch.stack([h[i, 0].expand(4), spread_dim, h[i, 2].expand(4)], 1) for i in range(2)])
    result = representation_spread(h, reps.reshape(8, 3), 4, torch.tensor([1.0, 4 / 3, 0.0]))
    assert result["varying_dims"] == 2
    assert result["held_fraction"] == pytest.approx(0.5)
    assert result["dim_variance_ratio"].tolist() == pytest.approx([0.0, 1.0])
    assert result["sq_l2_to_conditioning"] == [[1.0] * 4] * 2
    assert result["mean_relative_sq_l2"] == pytest.approx(1 / (2 * (1 + 4 / 3)))


def test_a_released_checkpoint_without_data_views_uploads_and_its_command_renders_them(tmp_path):
    from omegaconf import OmegaConf

    from rcdm_lab.cli.common import CONF_DIR
    from rcdm_lab.models import UNetModel, unet_kwargs_from_flags

    flags = {"image_size": 16, "num_channels": 16, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "8", "num_heads": 2, "learn_sigma": True, "ssl_dim": 1280,
             "resblock_updown": True, "use_scale_shift_norm": True}
    torch.manual_seed(0)
    released = UNetModel(**unet_kwargs_from_flags(flags))
    for parameter in released.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    path = tmp_path / "rcdm_ema_tiny.pt"
    torch.save({f"module.{k}": v for k, v in released.state_dict().items()}, path)   # the released layout
    overrides = [f"official.flags.{k}='{v}'" if isinstance(v, str) else f"official.flags.{k}={v}"
                 for k, v in flags.items()] + ["official.encoder.name=mobilenet_v2", "official.encoder.input_size=32"]
    official = OmegaConf.to_container(OmegaConf.merge(
        {"official": OmegaConf.load(CONF_DIR / "official" / "default.yaml")},
        OmegaConf.from_dotlist([o.replace("'", "") for o in overrides])).official)
    official["flags"]["channel_mult"], official["flags"]["attention_resolutions"] = "1,2", "8"
    session = ViewerSession(models=[], sampling=dict(FAST), out_root=tmp_path / "viewer",
                            figure_defaults=figure_defaults(), official=official, command_options=overrides)
    assert "no data" in session.load(f"official:{path}")
    with pytest.raises(Exception, match="no validation images"):
        session.samples(Picture(val_index=0), CONTROLS)
    view = session.samples(Picture(upload=str(a_photo(tmp_path / "p.png"))), CONTROLS)
    assert list(view.results["spread"]) == ["sq_l2_to_conditioning"]   # no data to compare the spread with
    cfg = compose_config("figure", *shlex.split(view.command)[1:], f"output_dir={tmp_path / 'by_command'}",
                         f"sampling.eta={FAST['eta']}")
    by_command = figure_cli.run(cfg)
    assert Path(by_command["figure_png"]).read_bytes() == Path(view.png).read_bytes()
