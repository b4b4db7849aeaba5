from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import blocks, compare_models


@pytest.fixture
def two_model_ctx(figure_ctx, tiny_run):
    """The conftest's fast context with the same checkpoint twice: any difference between blocks is a bug."""
    return replace(figure_ctx, runs=[tiny_run, tiny_run], labels=["a", "b"])


SETTINGS = {"num_images": 2, "first_image": 1, "samples_per_image": 3}


@pytest.fixture
def settings(settings_for):
    """settings(**overrides): SETTINGS over the shipped conf/figure/compare_models.yaml, as rcdm-figure builds them."""
    return lambda **overrides: settings_for("compare_models", **{**SETTINGS, **overrides})


def test_identical_models_with_identical_noise_give_identical_blocks(two_model_ctx):
    images, names = two_model_ctx.input_images(2)
    first, second = blocks.model_blocks(two_model_ctx, images, names, 3)
    assert torch.equal(first.samples, second.samples)
    assert first.samples.shape == (2 * 3, 3, 16, 16)
    # Every input shares the same k noise images, yet different inputs give different samples.
    assert not torch.equal(first.samples[:3], first.samples[3:])
    assert [len(row) for row in first.rows] == [4, 4] and torch.equal(first.rows[1][0], images[1].cpu())


def test_compare_models_json_has_one_entry_per_label_and_prints_them(two_model_ctx, capsys, settings):
    result = compare_models.make(two_model_ctx, settings())
    assert list(result["models"]) == ["a", "b"]
    assert result["models"]["a"]["diversity"] == result["models"]["b"]["diversity"]
    assert result["same_noise"] and result["images"] == ["val 1", "val 2"]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compare_models")]
    assert len(printed) == 2 and printed[0].startswith("compare_models a:")
    picture = Image.open(result["figure_png"])
    assert picture.height > picture.width / 4 * 2   # 2 models x 2 inputs = 4 rows of 1 + 3 cells


def test_block_rows_group_by_model_or_by_image():
    image = torch.zeros(3, 4, 4)
    models = [blocks.ModelBlock(label, None, ["x", "y"], [[image], [image]], torch.zeros(2, 1),
                                torch.zeros(2, 3, 4, 4), torch.zeros(2, 1), 1) for label in ("a", "b")]
    assert blocks.block_rows(models)[1] == ["a: x", "a: y", "b: x", "b: y"]
    assert blocks.block_rows(models, by_image=True)[1] == ["x: a", "x: b", "y: a", "y: b"]


def test_compare_models_needs_two_models_with_distinct_labels(figure_ctx, two_model_ctx, settings):
    with pytest.raises(RCDMError, match=r"ckpts=\["):
        compare_models.make(figure_ctx, settings())
    two_model_ctx.labels = ["a"]
    with pytest.raises(RCDMError, match="one per checkpoint"):
        compare_models.make(two_model_ctx, settings())
    two_model_ctx.labels = ["a", "a"]
    with pytest.raises(RCDMError, match="repeat"):
        compare_models.make(two_model_ctx, settings())
    two_model_ctx.labels = ["a", "b"]
    with pytest.raises(RCDMError, match="samples_per_image"):
        compare_models.make(two_model_ctx, settings(samples_per_image=0))
