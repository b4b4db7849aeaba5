from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.errors import RCDMError
from rcdm_lab.viz.plots import box_plot, rank_counts, rank_histogram


def _opens_as_png(path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_box_plot_writes_a_png_in_a_new_folder(tmp_path):
    generator = torch.Generator().manual_seed(0)
    groups = {"random validation": torch.rand(50, generator=generator) * 10 + 5, "flip": [0.5, 0.7, 0.6],
              "samples": torch.rand(4, 8, generator=generator)}
    path = box_plot(groups, tmp_path / "new" / "box.png", title="distances to h")
    assert path == tmp_path / "new" / "box.png"
    width, height = _opens_as_png(path)
    assert 300 <= width <= 2000 and 300 <= height <= 1000
    assert _opens_as_png(box_plot(groups, str(tmp_path / "log.png"), log_scale=True))


def test_box_plot_refuses_bad_groups(tmp_path):
    with pytest.raises(RCDMError, match="at least one group"):
        box_plot({}, tmp_path / "x.png")
    with pytest.raises(RCDMError, match="'flip'"):
        box_plot({"flip": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-finite"):
        box_plot({"flip": [1.0, float("inf")]}, tmp_path / "x.png")


def test_log_box_plot_survives_exact_zeros(tmp_path):
    # A training duplicate of the conditioning gives distance 0, which a plain log axis cannot show.
    path = box_plot({"train neighbours": [0.0, 0.5, 2.0], "flip": [1.0, 3.0]}, tmp_path / "zeros.png", log_scale=True)
    assert _opens_as_png(path)


def test_rank_counts_pile_the_tail_into_the_last_bin():
    assert rank_counts([1, 1, 2, 5, 3, 9, 4], max_rank=3) == [2, 1, 1, 3]
    assert rank_counts(torch.tensor([[1.0, 2.0], [2.0, 2.0]]), max_rank=2) == [1, 3, 0]
    with pytest.raises(ValueError, match="integers >= 1"):
        rank_counts([0, 1], max_rank=3)
    with pytest.raises(ValueError, match="integers >= 1"):
        rank_counts([1.5], max_rank=3)
    with pytest.raises(RCDMError, match="max_rank"):
        rank_counts([1], max_rank=0)


def test_rank_histogram_writes_a_png(tmp_path):
    ranks = {"l2": torch.tensor([1, 1, 1, 2, 3, 40]), "cosine": [1, 1, 2, 2, 5, 7]}
    width, height = _opens_as_png(rank_histogram(ranks, tmp_path / "ranks.png", max_rank=5, title="Fig. 17"))
    assert 400 <= width <= 2000 and 300 <= height <= 800
    assert _opens_as_png(rank_histogram(ranks, tmp_path / "auto" / "ranks.png"))   # max_rank = 40, tick subset
    with pytest.raises(RCDMError, match="at least one metric"):
        rank_histogram({}, tmp_path / "x.png")
