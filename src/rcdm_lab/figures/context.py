"""What every figure gets: the trained model(s), the input images, fixed noise, sampling settings, an output folder.

A figure module only decides how to make representations h and how to lay out the grid; loading checkpoints,
choosing input images, sampling and writing files are done here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.data.folder import list_images, load_image
from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import resize_and_center_crop
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.grid import save_png


@dataclass
class FigureContext:
    runs: list[TrainedRun]
    sampling: dict[str, Any]          # RCDMPipeline.sample settings (sampler, steps, guidance, eta, batch_size, ...)
    out_dir: Path
    seed: int = 0
    images: str | None = None         # the user's images= (a file or a folder); None: the validation set
    labels: list[str] = field(default_factory=list)   # one display name per run (compare_models, ...)
    probe: str | None = None          # a probe.pt from rcdm-probe (adversarial, confidence)

    @property
    def run(self) -> TrainedRun:
        """The model of a single-model figure (the first one given)."""
        return self.runs[0]

    def require_runs(self, at_least: int, figure: str) -> None:
        if len(self.runs) < at_least:
            raise RCDMError(f"{figure} compares models: pass ckpts=[a.ckpt,b.ckpt,...] (got {len(self.runs)})")

    # ------------------------------------------------------------------------------------------------ inputs
    def input_images(self, count: int, size: int | None = None, offset: int = 0) -> tuple[Tensor, list[str]]:
        """`count` images in [0, 1] and their names.

        From the user's `images=` file/folder when given (sorted, cycling if it has fewer; squared to `size`,
        default the encoder's input size, so any mix of sizes batches), else the validation items
        offset..offset+count of the first model's data, exactly as the dataset gives them to the encoder.
        """
        if self.images:
            size = size or int(self.run.pipeline.encoder.input_size)
            paths = list_images(self.images)
            chosen = [paths[(offset + i) % len(paths)] for i in range(count)]
            images = torch.cat([resize_and_center_crop(load_image(p)[None], size) for p in chosen])
            return images, [p.stem for p in chosen]
        items = self.run.val_items(offset + count, "figure inputs")
        images = items["image"][offset:]
        return images, [f"val {int(i)}" for i in items["index"][offset:]]

    def noise(self, count: int, run: TrainedRun | None = None, seed_offset: int = 0) -> Tensor:
        """(count, 3, R, R) x_T from the figure's seed: columns share it when the paper compares them."""
        resolution = (run or self.run).pipeline.resolution
        generator = torch.Generator().manual_seed(self.seed + seed_offset)
        return torch.randn(count, 3, resolution, resolution, generator=generator)

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(self, h: Tensor, num_per_condition: int, run: TrainedRun | None = None,
               noise: Tensor | None = None) -> Tensor:
        """Samples in [0, 1], (N * k, 3, R, R) grouped by conditioning; all conditionings in batched calls.

        Without `noise`, every conditioning gets the same k noise images, so differences between rows come
        from h alone (the paper's columns share noise).
        """
        run = run or self.run
        if noise is None:
            noise = self.noise(num_per_condition, run).repeat(len(h), 1, 1, 1)
        settings: Mapping[str, Any] = {**self.sampling, "seed": self.seed, "noise": noise}
        return run.sample(h, num_per_condition, settings)

    # ------------------------------------------------------------------------------------------------ outputs
    def save(self, grid: Tensor, name: str = "figure.png") -> str:
        return str(save_png(grid, self.out_dir / name))
