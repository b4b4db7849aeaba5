from __future__ import annotations

import pytest
import torch
from PIL import Image

from rcdm_lab.viz.grid import conditioning_grid, save_png


def test_first_column_is_the_conditioning_then_its_samples_in_order():
    conditioning = torch.stack([torch.full((3, 40, 40), v) for v in (0.0, 1.0)])   # black, white; other size
    samples = torch.stack([torch.full((3, 8, 8), v) for v in (-1.0, -0.5, 0.5, 1.0)])  # 2 per conditioning
    grid = conditioning_grid(conditioning, samples, padding=2, separator=4)
    assert grid.shape == (3, 2 * 10 + 2, 3 * 10 + 2 + 4)
    assert grid[:, 2:10, 2:10].eq(0).all() and grid[:, 12:20, 2:10].eq(255).all()
    first_sample = grid[:, 2:10, 16:24]
    assert first_sample.eq(0).all()
    assert grid[:, 12:20, 26:34].eq(255).all()          # row 2, second sample = value 1.0
    assert grid[0, 2:10, 26:34].float().mean() == pytest.approx(64, abs=1)   # -0.5 -> 0.25 * 255


def test_rows_must_divide_samples(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        conditioning_grid(torch.zeros(3, 3, 8, 8), torch.zeros(4, 3, 8, 8))
    path = save_png(torch.zeros(3, 5, 7, dtype=torch.uint8), tmp_path / "g.png", upscale=2)
    assert Image.open(path).size == (14, 10)
