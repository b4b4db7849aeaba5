"""Unconditional sampling with RCDM (the paper's Appendix B): draw representations from a kernel density estimate.

RCDM generates from a representation h. To sample without a conditioning image, h is drawn from the Gaussian
kernel density estimate of the training set's representations, ``p(h) = 1/N sum_n N(h; f(x_n), sigma^2 I)``:
pick a training representation uniformly, add isotropic noise of standard deviation sigma (0.01 in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.settings import Rule, integer, number

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun


def kde_sample(reps: Tensor, num_samples: int, sigma: float = 0.01,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``num_samples`` draws from the Gaussian KDE of ``reps`` (N, D): (h (num_samples, D), indices (num_samples,)).

    ``indices`` are the training representations each h was drawn around (``h - reps[indices]`` is the kernel
    noise). Both lie on reps' device; h has reps' floating dtype (float32 for integer reps). A seeded ``generator``
    (on the CPU or on reps' device) makes the draw reproducible.
    """
    if reps.ndim != 2 or reps.shape[0] == 0 or reps.shape[1] == 0:
        raise RCDMError(f"kde_sample needs a non-empty (N, D) tensor of training representations, got shape "
                        f"{tuple(reps.shape)}; encode the training set first (flatten with reps.flatten(1))")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise RCDMError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise RCDMError(f"the KDE bandwidth sigma must be a finite number >= 0 (the paper uses 0.01), got {sigma}")
    # Draw where the generator lives (torch requires it), then move: the same seed gives the same samples whatever
    # the device of reps.
    draw_device = generator.device if generator is not None else reps.device
    indices = torch.randint(len(reps), (num_samples,), generator=generator, device=draw_device)
    noise = torch.randn(num_samples, reps.shape[1], generator=generator, device=draw_device)
    indices = indices.to(reps.device)
    dtype = reps.dtype if reps.is_floating_point() else torch.float32
    h = reps[indices].to(dtype) + sigma * noise.to(device=reps.device, dtype=dtype)
    return h, indices


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    number("sigma", above=0),
    integer("num_samples"),
    integer("columns"),
]


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """rcdm-eval metric=kde: a grid of unconditional samples (Fig. 20) and the KDE noise actually drawn."""
    from rcdm_lab.viz.grid import labelled_rows, save_png

    n, sigma, columns = int(settings["num_samples"]), float(settings["sigma"]), int(settings["columns"])
    train_reps = run.representations("train")
    h, indices = kde_sample(train_reps, n, sigma, torch.Generator().manual_seed(int(sampling.get("seed", 0))))
    samples = run.sample(h, 1, sampling)
    rows = [list(samples[start:start + columns]) for start in range(0, n, columns)]
    png = save_png(labelled_rows(rows, gap_after_first=False), out_dir / "kde_samples.png")
    return {
        "num_samples": n,
        "sigma": sigma,
        "measured_sigma": float((h - train_reps[indices]).std()),
        "distinct_training_points": int(indices.unique().numel()),
        "samples_png": str(png),
    }
