"""Fig. 2/24 and Fig. 36: the same input images through several RCDMs, one per representation.

Each model gets a block of rows -- an input image, then k samples from that model's representation of it -- and
every block sees the same inputs and the same noise (when the models share a resolution), so a difference between
blocks is a difference between representations. A representation that keeps more of the image (a backbone, an SSL
encoder) gives samples that vary less than one that keeps little (a projector head, a random network): the
per-model sample diversity, in pixels and in that model's own encoder space, puts a number on it.

The block builder here is shared by the figures that compare models (training_checkpoints, augmentations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.experiments.context import FigureContext
from rcdm_lab.metrics.diversity import sample_diversity
from rcdm_lab.settings import Rule, integer
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.grid import labelled_rows


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


def positive_int(settings: dict[str, Any], key: str) -> int:
    value = int(settings[key])
    if value < 1:
        raise RCDMError(f"figure.{key} must be at least 1, got {value}")
    return value


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
    rows = [[images[i], *samples[i * k:(i + 1) * k]] for i in range(len(images))]
    return ModelBlock(label, run, list(names), rows, h.cpu(), samples, sample_reps, k)


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


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_images"),
    integer("first_image", minimum=0),
    integer("samples_per_image"),
]


def make(ctx: FigureContext, settings: dict[str, Any]) -> dict[str, Any]:
    # With one checkpoint this is the samples figure; a single model here almost always means ckpt= (or a sweep)
    # where ckpts=[a,b] was meant, so say so rather than quietly draw a one-block "comparison".
    ctx.require_runs(2, "compare_models")
    n, k = positive_int(settings, "num_images"), positive_int(settings, "samples_per_image")
    images, names = ctx.input_images(n, offset=int(settings.get("first_image", 0)))
    blocks = model_blocks(ctx, images, names, k)
    rows, row_labels = block_rows(blocks)
    png = ctx.save(labelled_rows(rows, row_labels))
    models = {block.label: model_summary(block) for block in blocks}
    print_diversity("compare_models", blocks, models)
    return {"figure_png": png, "images": names, "samples_per_image": k, "same_noise": same_noise(blocks),
            "models": models}
