"""Fig. 4/29: what a representation keeps of an image attacked with the Fast Gradient Sign Method (FGSM).

A linear probe reads a factor (the class) off each model's representation; FGSM perturbs the input image by
eps * sign(grad of the probe's cross-entropy) -- away from the probe's clean prediction, or towards
`target_class` -- and RCDM samples from the attacked image's representation. A row per (eps, image, model):
the attacked image, then samples, each labelled with the probe's prediction; predictions that differ from the
clean image's are framed in red. A representation that is robust keeps producing the clean class as eps grows.
Every model is attacked through its own encoder and probe, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_lab.encoders.frozen import FrozenEncoder
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.figures.probe_source import probe_for, resolve_class
from rcdm_lab.metrics.probe import LinearProbe
from rcdm_lab.settings import integer, satisfies
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 4/29"
SUMMARY = "FGSM against a linear probe at a sweep of ε; probe labels under every image, changed ones framed red"
SEVERAL_MODELS = False


def parse_eps(values: Sequence[float | int | str]) -> tuple[list[float], list[str]]:
    """Attack strengths as floats in [0, 1] (pixel units of images in [0, 1]) and their display names.

    Accepts numbers and fractions written "8/255", the way attack strengths are usually quoted.
    """
    if isinstance(values, (str, int, float)) or len(values) == 0:
        raise RCDMError(f"figure.eps must be a non-empty list of attack strengths, e.g. [0, 2/255, 8/255]; "
                        f"got {values!r}")
    eps, names = [], []
    for value in values:
        try:
            if isinstance(value, str) and "/" in value:
                numerator, denominator = value.split("/")
                number = float(numerator) / float(denominator)
            else:
                number = float(value)
        except (ValueError, ZeroDivisionError) as error:
            raise RCDMError(f"figure.eps entry {value!r} is not a number or a fraction like 8/255") from error
        if not 0.0 <= number <= 1.0:
            raise RCDMError(f"figure.eps entry {value!r} = {number:g} is outside [0, 1]: images are in [0, 1], "
                            "so eps is in pixel units of that range (e.g. 8/255)")
        eps.append(number)
        names.append(str(value) if isinstance(value, str) else f"{number:.3g}")
    return eps, names


def fgsm(encoder: FrozenEncoder, probe: LinearProbe, images: Tensor, eps: Sequence[float],
         target: int | None = None) -> tuple[Tensor, Tensor]:
    """Attacked images (E, N, 3, H, W) for each eps, and the probe's clean predictions (N,).

    Untargeted: x + eps * sign(grad CE(probe(f(x)), clean prediction)), i.e. away from the predicted class;
    targeted: x - eps * sign(grad CE(., target)), i.e. towards `target`. Clipped to [0, 1]. One gradient for all
    eps (single-step FGSM), so eps = 0 gives back x exactly.
    """
    x = images.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():  # also when a caller runs under no_grad: the attack needs d loss / d x
        logits = probe(encoder.forward_with_input_grad(x))
        clean = logits.argmax(dim=1).detach()
        goal = clean if target is None else torch.full_like(clean, target)
        # Summed, not averaged: each image's gradient is then its own loss's, whatever the batch size.
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, goal, reduction="sum"), x)
    direction = grad.sign() if target is None else -grad.sign()
    attacked = torch.stack([(x.detach() + e * direction).clamp(0, 1) for e in eps])
    return attacked, clean


def _model_names(ctx: FigureContext) -> list[str]:
    if len(ctx.labels) == len(ctx.runs):
        return list(ctx.labels)
    return [f"model {m}" for m in range(len(ctx.runs))]


@dataclass(frozen=True)
class Settings:
    num_images: int                    # input images attacked (validation items 0.., or images=<folder>)
    samples_per_image: int             # samples per attacked image and model (the same noise for every row)
    eps: list[int | float | str]       # attack strengths in [0, 1] pixel units; numbers or fractions like 8/255
    factor: str | None                 # the probed label; null: "class", else "shape" (shapes dataset)
    target_class: str | int | None     # null: untargeted (away from the clean prediction); a class name or index

    def __post_init__(self) -> None:
        check_settings(self, [integer("num_images"), integer("samples_per_image"),
                              satisfies("eps", parse_eps, "a list of attack strengths in [0, 1] pixel units: "
                                                          "numbers or fractions like 8/255")])


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    n, k = settings.num_images, settings.samples_per_image
    eps, eps_names = parse_eps(settings.eps)
    images, names = ctx.input_images(n)
    model_names = _model_names(ctx)
    num_eps = len(eps)

    per_model, grids = [], []
    for run, model in zip(ctx.runs, model_names, strict=True):
        probe = probe_for(ctx, run, settings.factor)
        target = None if settings.target_class is None else resolve_class(probe.class_names, settings.target_class,
                                                                           probe.factor)
        x = images.to(run.pipeline.device)
        attacked, clean = fgsm(run.pipeline.encoder, probe, x, eps, target)
        # Predictions and conditionings through the encoder's ordinary (no-grad) path: what RCDM is fed.
        h = run.pipeline.encode(attacked.flatten(0, 1))
        with torch.no_grad():
            logits = probe(h)
        goal = clean.repeat(num_eps) if target is None else torch.full_like(clean.repeat(num_eps), target)
        losses = F.cross_entropy(logits, goal, reduction="none").view(num_eps, n)
        predicted = logits.argmax(dim=1).view(num_eps, n)
        samples = ctx.sample(h, k, run=run)   # every (eps, image) conditioning shares the same k noise images
        sample_predicted = probe.predict(run.pipeline.encode(samples)).view(num_eps, n, k)
        grids.append((attacked.cpu(), samples.view(num_eps, n, k, *samples.shape[1:]).cpu(), predicted.cpu(),
                      sample_predicted.cpu(), clean.cpu(), probe.class_names))

        label = probe.class_names
        rows = []
        for e in range(num_eps):
            changed = predicted[e] != clean
            matches = sample_predicted[e] == predicted[e][:, None]
            row = {
                "eps": eps[e],
                "eps_label": eps_names[e],
                "attacked_labels": [label[int(c)] for c in predicted[e]],
                "fraction_changed": float(changed.double().mean()),
                "loss": losses[e].tolist(),   # CE against the clean prediction (untargeted) or the target
                "max_abs_change": float((attacked[e] - x).abs().max()),
                "sample_labels": [[label[int(c)] for c in image_row] for image_row in sample_predicted[e]],
                "samples_match_attacked": float(matches.double().mean()),
                "samples_match_clean": float((sample_predicted[e] == clean[:, None]).double().mean()),
            }
            if target is not None:
                row["fraction_at_target"] = float((predicted[e] == target).double().mean())
            rows.append(row)
        per_model.append({"model": model, "factor": probe.factor, "probe": ctx.probe or "fitted on the train split",
                          "target_class": None if target is None else label[target],
                          "clean_labels": [label[int(c)] for c in clean], "per_eps": rows})

    rows, row_labels, cell_labels, frames = [], [], [], []
    several = len(ctx.runs) > 1
    for e in range(num_eps):
        for i in range(n):
            for model, (attacked, samples, predicted, sample_predicted, clean, label) in zip(model_names, grids,
                                                                                            strict=True):
                rows.append([attacked[e, i], *samples[e, i]])
                row_labels.append(f"{eps_names[e]} {names[i]}" + (f" {model}" if several else ""))
                predictions = [int(predicted[e, i]), *sample_predicted[e, i].tolist()]
                cell_labels.append([label[c] for c in predictions])
                frames.append([c != int(clean[i]) for c in predictions])
    png = ctx.save(labelled_rows(rows, row_labels, cell_labels, frames))
    return {"figure_png": png, "images": names, "eps": eps, "samples_per_image": k, "models": per_model}
