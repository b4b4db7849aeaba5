"""Fig. 20 (Appendix B): unconditional samples, with h drawn from a kernel density estimate of training h.

h = f(x_n) + N(0, sigma^2 I) for random training images x_n; each row shows the training image whose
representation was perturbed (first column), then samples from the perturbed h. With sigma = 0.01 the rows stay
close to their training image's representation -- how much the samples vary is the model's, not the KDE's doing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.kde import kde_sample
from rcdm_lab.settings import integer, number
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 20"
SUMMARY = "KDE samples, each row next to the training image whose h was perturbed"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    num_rows: int          # KDE draws, one row each
    samples_per_row: int   # samples from each drawn h
    sigma: float           # KDE bandwidth in the encoder's raw representation space (paper: 0.01)

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_rows"), integer("samples_per_row"), number("sigma", above=0)])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k, sigma = settings.num_rows, settings.samples_per_row, settings.sigma
    train_reps = ctx.run.representations("train")
    generator = torch.Generator().manual_seed(ctx.seed)
    h, indices = kde_sample(train_reps, n, sigma=sigma, generator=generator)
    samples = ctx.sample(h, k)
    sources = ctx.run.images("train", indices)
    png = ctx.save(labelled_rows(sample_rows(sources, samples, k), [f"train {int(i)}" for i in indices]))
    return {
        "figure_png": png,
        "sigma": sigma,
        "train_indices": indices.tolist(),
        # The KDE noise actually drawn, as a check of sigma (its std over all dims of all rows).
        "measured_sigma": float((h - train_reps[indices]).std()),
    }
