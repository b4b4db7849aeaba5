from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.figures import interpolation, samples


def test_samples_figure_rows_are_inputs_then_samples(figure_ctx, settings_for):
    result = samples.make(figure_ctx, settings_for("samples", num_images=3, samples_per_image=2))
    picture = Image.open(result["figure_png"])
    assert picture.height > picture.width / 3   # three rows of three cells
    assert result["images"] == ["val 0", "val 1", "val 2"]


def test_samples_figure_measures_diversity_within_each_conditioning(figure_ctx, monkeypatch, settings_for):
    # Controlled samples: column j of every row is the constant image j / 4, so within a row the two samples differ
    # by 0.25 per pixel (squared: 1/16), while rows are identical -- diversity across rows would say 0.
    def controlled(h, k, run=None, noise=None):
        columns = torch.arange(k, dtype=torch.float32).repeat(len(h)) / 4
        return columns.view(-1, 1, 1, 1).expand(-1, 3, 16, 16).clone()

    monkeypatch.setattr(figure_ctx, "sample", controlled)
    result = samples.make(figure_ctx, settings_for("samples", num_images=3, samples_per_image=2))
    assert result["diversity"]["pixel_mean_sq_diff"] == pytest.approx(1 / 16)


def test_samples_figure_reads_any_folder_of_images(figure_ctx, tmp_path, settings_for):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(50, 30), (20, 40)]):
        Image.new("RGB", size, (80 * i, 100, 200)).save(folder / f"p{i}.png")
    figure_ctx.images = str(folder)
    result = samples.make(figure_ctx, settings_for("samples", num_images=2, samples_per_image=2))
    assert result["images"] == ["p0", "p1"]


def test_interpolation_walks_from_the_first_images_representation_to_the_second(figure_ctx, sample_calls,
                                                                                 settings_for):
    alphas = torch.linspace(0, 1, 5)
    h_a, h_b = torch.randn(2, 7)
    path = interpolation.interpolate(h_a, h_b, alphas)
    assert torch.equal(path[0], h_a) and torch.equal(path[-1], h_b)
    torch.testing.assert_close(path[2], (h_a + h_b) / 2)

    result = interpolation.make(figure_ctx, settings_for("interpolation", first_image=1, num_steps=4, start=0.0,
                                                         stop=1.0, noise_rows=2))
    # What was sampled, against the two validation images encoded here: items 1 and 2 (first_image=1).
    items = figure_ctx.run.val_items(3)
    expected_a, expected_b = figure_ctx.run.pipeline.encode(items["image"][1:3])
    conditionings = sample_calls[0]["h"]
    assert conditionings.shape == (4, expected_a.numel())
    assert torch.equal(conditionings[0], expected_a) and torch.equal(conditionings[-1], expected_b)
    torch.testing.assert_close(conditionings[1], (2 * expected_a + expected_b) / 3)
    assert result["images"] == ["val 1", "val 2"]
    assert torch.allclose(torch.tensor(result["alphas"]), torch.linspace(0, 1, 4))


def test_interpolation_rows_share_noise_along_the_path(figure_ctx, sample_calls, settings_for):
    interpolation.make(figure_ctx, settings_for("interpolation", first_image=0, num_steps=3, start=0.0, stop=1.0,
                                                noise_rows=2))
    noise = sample_calls[0]["noise"].view(3, 2, *sample_calls[0]["noise"].shape[1:])   # (path step, row, ...)
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    assert not torch.equal(noise[0, 0], noise[0, 1])
