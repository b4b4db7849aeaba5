"""Fig. 20 (Appendix B): unconditional samples, with h drawn from a kernel density estimate of training h.

h = f(x_n) + N(0, sigma^2 I) for random training images x_n; each row shows the training image whose
representation was perturbed (first column), then samples from the perturbed h. With sigma = 0.01 the rows stay
close to their training image's representation -- how much the samples vary is the model's, not the KDE's doing.
"""

from __future__ import annotations

from typing import Any

import torch

from rcdm_lab.experiments.context import FigureContext
from rcdm_lab.metrics.kde import kde_sample
from rcdm_lab.settings import Rule, integer, number
from rcdm_lab.viz.grid import labelled_rows

# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_rows"),
    integer("samples_per_row"),
    number("sigma", above=0),
]


def make(ctx: FigureContext, settings: dict[str, Any]) -> dict[str, Any]:
    n, k, sigma = int(settings["num_rows"]), int(settings["samples_per_row"]), float(settings["sigma"])
    train_reps = ctx.run.representations("train")
    generator = torch.Generator().manual_seed(ctx.seed)
    h, indices = kde_sample(train_reps, n, sigma=sigma, generator=generator)
    samples = ctx.sample(h, k)
    sources = ctx.run.images("train", indices)
    rows = [[sources[i], *samples[i * k:(i + 1) * k]] for i in range(n)]
    png = ctx.save(labelled_rows(rows, [f"train {int(i)}" for i in indices]))
    return {
        "figure_png": png,
        "sigma": sigma,
        "train_indices": indices.tolist(),
        # The KDE noise actually drawn, as a check of sigma (its std over all dims of all rows).
        "measured_sigma": float((h - train_reps[indices]).std()) if sigma > 0 else 0.0,
    }
