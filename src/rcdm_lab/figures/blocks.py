"""Building blocks several figures share: rows of a conditioning image followed by its samples, and model blocks.

A model block is one model's part of a comparison figure (compare_models, training_checkpoints, augmentations): the
same inputs and the same noise (when the models share a resolution) go through every model, so a difference between
blocks is a difference between representations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.metrics.diversity import representation_spread, sample_diversity
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.plots import dim_variance_plot


def sample_rows(first_column: Sequence[Tensor], samples: Tensor, k: int) -> list[list[Tensor]]:
    """Row i: first_column[i] (the conditioning or input image), then its k samples samples[i * k:(i + 1) * k]."""
    return [[first_column[i], *samples[i * k:(i + 1) * k]] for i in range(len(first_column))]


@dataclass
class ModelBlock:
    """One model's part of a comparison figure: its conditionings h, samples and their representations."""

    label: str
    run: TrainedRun
    names: list[str]           # one per input image (the row names)
    rows: list[list[Tensor]]   # per input image: [input, *its k samples], images in [0, 1]
    h: Tensor                  # (N, D) representations of the inputs, in this model's encoder space
    samples: Tensor            # (N * k, 3, R, R) in [0, 1], grouped by input
    sample_reps: Tensor        # (N * k, D) the samples re-encoded by this model's encoder
    k: int

    def diversity(self) -> dict[str, float]:
        return sample_diversity(self.samples, self.sample_reps, self.k)


def checked_labels(ctx: FigureContext) -> list[str]:
    """ctx.labels, after checking there is exactly one distinct name per model (the JSON is keyed by them)."""
    labels = [str(label) for label in ctx.labels]
    if len(labels) != len(ctx.runs):
        raise RCDMError(f"labels has {len(labels)} names for {len(ctx.runs)} checkpoints: give one per checkpoint, "
                        "e.g. labels=[backbone,head]")
    if len(set(labels)) != len(labels):
        raise RCDMError(f"labels {labels} repeat a name; give every checkpoint its own, e.g. labels=[a,b]")
    return labels


def model_block(ctx: FigureContext, run: TrainedRun, label: str, images: Tensor, names: Sequence[str],
                k: int) -> ModelBlock:
    """Encode `images` with `run`'s encoder and sample k images from each representation, all in one batch.

    Every input gets the same k noise images, drawn from the figure's seed at the model's resolution: two models
    of the same resolution therefore start from exactly the same x_T.
    """
    h = run.pipeline.encode(images)
    samples = ctx.sample(h, k, run=run, noise=ctx.noise(k, run).repeat(len(h), 1, 1, 1)).cpu()
    sample_reps = run.pipeline.encode(samples).cpu()
    images = images.cpu()
    return ModelBlock(label, run, list(names), sample_rows(images, samples, k), h.cpu(), samples, sample_reps, k)


def model_blocks(ctx: FigureContext, images: Tensor, names: Sequence[str], k: int) -> list[ModelBlock]:
    """One block per model of ctx.runs (in the given order), all over the same inputs."""
    labels = checked_labels(ctx)
    return [model_block(ctx, run, label, images, names, k) for run, label in zip(ctx.runs, labels, strict=True)]


def block_rows(blocks: Sequence[ModelBlock], by_image: bool = False) -> tuple[list[list[Tensor]], list[str]]:
    """The figure's rows and row labels: model after model (each a block of inputs), or with `by_image` input after
    input (each a block of models, so one image's rows read as a progression through the models)."""
    if by_image:
        order = [(block, i) for i in range(len(blocks[0].rows)) for block in blocks]
        return [b.rows[i] for b, i in order], [f"{b.names[i]}: {b.label}" for b, i in order]
    order = [(block, i) for block in blocks for i in range(len(block.rows))]
    return [b.rows[i] for b, i in order], [f"{b.label}: {b.names[i]}" for b, i in order]


def same_noise(blocks: Sequence[ModelBlock]) -> bool:
    """Whether every model sampled from the very same x_T (the noise is drawn per resolution from one seed)."""
    return len({block.run.pipeline.resolution for block in blocks}) == 1


def model_summary(block: ModelBlock) -> dict[str, Any]:
    return {"encoder_dim": int(block.h.shape[1]), "resolution": int(block.run.pipeline.resolution),
            "diversity": block.diversity()}


def print_diversity(figure: str, blocks: Sequence[ModelBlock], summaries: dict[str, dict[str, Any]]) -> None:
    for block in blocks:
        diversity = summaries[block.label]["diversity"]
        print(f"{figure} {block.label}: sample diversity {diversity['pixel_mean_sq_diff']:.4g} per pixel, "
              f"{diversity['representation_mean_pairwise_sq_l2']:.4g} squared L2 in its {block.h.shape[1]}-d "
              "representation space")


def representation_spreads(ctx: FigureContext, per_model: Mapping[str, tuple[TrainedRun, Tensor, Tensor]],
                           k: int) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per model label: how far its samples stay from their conditioning and which dimensions they hold.

    `per_model` maps a label to (run, h (N, D), sample_reps (N * k, D)); each model is measured against the
    per-dimension variance of its own validation gallery (rcdm_lab.metrics.diversity.representation_spread); a
    released checkpoint without data gets the distances only.
    With k >= 2 the variance ratios of every model are drawn, sorted, in <out_dir>/dim_variance.png (its path is
    returned, None for k = 1).
    """
    spreads, ratios = {}, {}
    for label, (run, h, sample_reps) in per_model.items():
        data_variance = run.representations("val").var(0) if run.has_data else None
        spread = representation_spread(h, sample_reps, k, data_variance)
        if "dim_variance_ratio" in spread:
            ratios[label or "samples"] = spread.pop("dim_variance_ratio")
        spreads[label] = spread
    if not ratios:
        return spreads, None
    return spreads, str(dim_variance_plot(ratios, ctx.out_dir / "dim_variance.png"))
