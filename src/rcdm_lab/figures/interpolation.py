"""Fig. 1c/14/15: samples along the straight line between the representations of two images.

Columns walk alpha from `start` to `stop` (the whole 0 -> 1 path by default; the official script only covered
0.5-0.7); each row keeps one noise image along the whole path, so a row changes only because h does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.distances import squared_distances_to
from rcdm_lab.settings import integer, number
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 1c/14/15"
SUMMARY = "samples along (1−α) h(a) + α h(b), α over 0→1, one noise per row"
SEVERAL_MODELS = False


@dataclass(frozen=True)
class Settings:
    first_image: int    # image a: input image number first_image (validation item, or the images= folder's)
    num_steps: int      # columns between (and including) the two ends
    start: float        # alpha of the first column (0: image a's representation)
    stop: float         # alpha of the last column (1: image b's representation)
    noise_rows: int     # rows, each with its own noise image kept along the whole path
    second_image: int | None = None   # image b: input image number second_image; null: first_image + 1

    def __post_init__(self) -> None:
        check_settings(self, [integer("first_image", minimum=0), integer("num_steps", minimum=2), number("start"),
                              number("stop"), integer("noise_rows"), integer("second_image", minimum=0, optional=True)])
        if self.second_image == self.first_image:
            raise RCDMError(f"figure.second_image={self.second_image} is figure.first_image: interpolate between two "
                            "different images")

    @property
    def pair(self) -> tuple[int, int]:
        """The input-image numbers of a and b."""
        return self.first_image, self.first_image + 1 if self.second_image is None else self.second_image


def interpolate(h_a: torch.Tensor, h_b: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """(S, D) points (1 - alpha) h_a + alpha h_b; exactly h_a at alpha = 0 and h_b at alpha = 1."""
    alphas = alphas.to(h_a)[:, None]
    return (1 - alphas) * h_a[None] + alphas * h_b[None]


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    num_steps, num_rows = settings.num_steps, settings.noise_rows
    pair = list(settings.pair)
    images, names = ctx.input_images(max(pair) + 1)
    images, names = images[pair], [names[i] for i in pair]
    h_a, h_b = ctx.run.pipeline.encode(images)
    alphas = torch.linspace(settings.start, settings.stop, num_steps)
    path = interpolate(h_a, h_b, alphas)
    # Conditioning s, sample r uses noise row r: the same x_T all along a row.
    samples = ctx.sample(path, num_rows, noise=ctx.noise(num_rows).repeat(num_steps, 1, 1, 1))
    by_row = samples.view(num_steps, num_rows, *samples.shape[1:]).transpose(0, 1)
    rows = [[images[0], *by_row[r], images[1]] for r in range(num_rows)]
    alpha_labels = [[""] + [f"a={a:.2f}" for a in alphas.tolist()] + [""]] * num_rows
    png = ctx.save(labelled_rows(rows, [f"noise {r}" for r in range(num_rows)], alpha_labels))
    sample_reps = ctx.run.pipeline.encode(samples).view(num_steps, num_rows, -1)
    return {
        "figure_png": png,
        "images": names,
        "alphas": alphas.tolist(),
        # The first and last conditionings are exactly the two images' representations on the full path.
        "first_equals_h_a": bool(torch.equal(path[0], h_a)),
        "last_equals_h_b": bool(torch.equal(path[-1], h_b)),
        # Mean squared L2 from the samples at each alpha to the two endpoints: should hand over from a to b.
        "sq_l2_to_a": squared_distances_to(h_a.expand(num_steps, -1), sample_reps).mean(1).tolist(),
        "sq_l2_to_b": squared_distances_to(h_b.expand(num_steps, -1), sample_reps).mean(1).tolist(),
    }
