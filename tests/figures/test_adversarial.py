from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import adversarial
from rcdm_lab.figures.probe_source import probe_for
from rcdm_lab.metrics.probe import LinearProbe

# 1e-4 stays in the first-order regime where one gradient-sign step must move the loss the intended way (the tiny
# test encoder is a random-init MobileNetV2, so far from linear that 1/255 can already overshoot); 0.25 checks bounds.
SETTINGS = {"num_images": 2, "samples_per_image": 2, "eps": [0, 1e-4, 0.25], "factor": None, "target_class": None}


@pytest.fixture
def settings(settings_for):
    """settings(**overrides): SETTINGS over the shipped conf/figure/adversarial.yaml, as rcdm-figure builds them."""
    return lambda **overrides: settings_for("adversarial", **{**SETTINGS, **overrides})


def test_input_gradient_encoding_is_the_frozen_encoder(tiny_run, figure_ctx):
    images, _ = figure_ctx.input_images(2)
    encoder = tiny_run.pipeline.encoder
    x = images.clone().requires_grad_(True)
    h = encoder.forward_with_input_grad(x)
    torch.testing.assert_close(h, encoder(images))
    h.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())   # the encoder stays frozen


def test_fgsm_eps_zero_is_the_clean_image_and_changes_stay_within_eps(tiny_run, figure_ctx):
    images, _ = figure_ctx.input_images(2)
    probe = probe_for(figure_ctx, tiny_run)
    eps = [0.0, 2 / 255, 16 / 255]
    attacked, clean = adversarial.fgsm(tiny_run.pipeline.encoder, probe, images, eps)
    assert attacked.shape == (3, *images.shape)
    assert torch.equal(attacked[0], images)
    assert torch.equal(probe.predict(tiny_run.pipeline.encode(attacked[0])), clean)
    for e, x_adv in zip(eps, attacked, strict=True):
        assert (x_adv - images).abs().max() <= e + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (attacked[2] - images).abs().max() > 0   # the attack did move pixels


def test_untargeted_attack_raises_the_loss_and_labels_the_figure(figure_ctx, settings):
    result = adversarial.make(figure_ctx, settings())
    (model,) = result["models"]
    first, small, large = model["per_eps"]
    assert first["eps"] == 0 and first["fraction_changed"] == 0 and first["max_abs_change"] == 0
    assert first["attacked_labels"] == model["clean_labels"]
    # Away from the clean prediction: the cross-entropy against it goes up (at least not down beyond float error).
    assert all(loss >= clean - 1e-6 for loss, clean in zip(small["loss"], first["loss"], strict=True))
    assert sum(small["loss"]) > sum(first["loss"])
    for row in (small, large):
        assert 0 < row["max_abs_change"] <= row["eps"] + 1e-6
        assert len(row["sample_labels"]) == 2 and all(len(labels) == 2 for labels in row["sample_labels"])
        assert 0 <= row["samples_match_attacked"] <= 1
    assert result["eps"] == pytest.approx([0, 1e-4, 0.25])
    picture = Image.open(result["figure_png"])
    assert picture.height > picture.width   # 3 eps x 2 images = 6 rows of 3 cells


def test_targeted_attack_moves_towards_the_target(figure_ctx, settings):
    result = adversarial.make(figure_ctx, settings(num_images=1, samples_per_image=1, eps=[0, 1e-4],
                                                   target_class="circle"))
    (model,) = result["models"]
    clean, small = model["per_eps"]
    assert model["target_class"] == "circle"
    assert 0 <= small["fraction_at_target"] <= 1
    assert small["loss"][0] < clean["loss"][0]   # CE towards the target goes down


def test_each_model_is_attacked_through_its_own_encoder(figure_ctx, tiny_run, settings):
    figure_ctx.runs, figure_ctx.labels = [tiny_run, tiny_run], ["a", "b"]
    result = adversarial.make(figure_ctx, settings(num_images=1, samples_per_image=1, eps=[0, 0.1]))
    assert [m["model"] for m in result["models"]] == ["a", "b"]
    assert result["models"][0]["per_eps"] == result["models"][1]["per_eps"]   # same model: same attack


def test_a_probe_file_must_come_from_the_checkpoints_encoder(figure_ctx, tiny_run, tmp_path):
    probe = probe_for(figure_ctx, tiny_run).cpu()
    good = tmp_path / "good.pt"
    probe.save(good)
    figure_ctx.probe = str(good)
    loaded = probe_for(figure_ctx, tiny_run)
    torch.testing.assert_close(loaded.linear.weight.cpu(), probe.linear.weight)

    other = LinearProbe(probe.mean, probe.std, probe.num_classes, probe.class_names, probe.factor,
                        {**probe.encoder_identity, "layer": "head"})
    other.load_state_dict(probe.state_dict())
    other.save(tmp_path / "other.pt")
    figure_ctx.probe = str(tmp_path / "other.pt")
    with pytest.raises(RCDMError, match="rcdm-probe"):
        probe_for(figure_ctx, tiny_run)


@pytest.mark.parametrize("bad", [{"eps": ["x"]}, {"eps": [2]}, {"eps": []}, {"target_class": "dragon"},
                                 {"factor": "species"}])
def test_bad_settings_name_the_fix(figure_ctx, settings, bad):
    with pytest.raises(RCDMError):
        adversarial.make(figure_ctx, settings(samples_per_image=1, **bad))


def test_continuous_factors_are_binned_like_rcdm_probe(figure_ctx, tiny_run):
    probe = probe_for(figure_ctx, tiny_run, "scale")
    assert probe.num_classes == 4 and probe.class_names[0].startswith("[")
