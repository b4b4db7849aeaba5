"""Which labelled factors do RCDM samples keep from their conditioning image? With numbers a person can trust.

For N validation conditionings x k samples, a factor classifier (`factor_classifier`: small CNNs, one per factor,
trained on the real training images, independent of every encoder under study) reads each factor off every sample.
Per factor:

- kept: the fraction of a conditioning's k samples whose predicted factor equals the conditioning's TRUE factor,
  averaged over conditionings, with a 95 % bootstrap interval resampling conditionings (`intervals`);
- chance: what kept would be if the samples carried no information about their conditioning but had the right
  marginal, sum_c p_c^2 with p the factor's distribution over the N conditionings' true values;
- ceiling: the classifier's accuracy on the N real conditioning images -- kept cannot be expected above it, since
  a sample identical to its conditioning scores exactly the ceiling;
- kept_above_chance: kept - chance, with its interval (the same per-conditioning values minus chance);
- varies: the fraction of pairs of a conditioning's samples the classifier reads as different (0: every sample
  shows the same value; needs k >= 2), with its interval and its chance value 1 - sum_c p_c^2 (independent draws
  from the marginal);
- chance_sample_marginal: kept of samples independent of their conditioning but with the marginal the samples
  actually have (a model that always draws the most common class scores that class's frequency, above `chance`).

A factor the representation keeps has kept well above chance, near the ceiling, and varies low; one it discards has
kept near chance and varies near its chance value. Continuous factors (scale, position, rotation) are read as
quantile bins of their training values, so "kept" there means "in the same bin".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.factor_classifier import (
    ClassifierSettings,
    FactorClassifier,
    factor_classifier_for,
    predict_factors,
)
from rcdm_lab.metrics.intervals import mean_interval
from rcdm_lab.settings import Rule, flag, integer, number

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun

__all__ = ["kept", "varies", "marginal", "chance_kept", "chance_varies", "agreement", "factor_agreement",
           "predict_factors", "evaluate", "RULES"]


# ------------------------------------------------------------------------------------------ pure functions
def _grouped(predicted: Tensor) -> Tensor:
    predicted = torch.as_tensor(predicted)
    if predicted.ndim != 2 or predicted.shape[1] < 1:
        raise ValueError(f"predictions must be (N conditionings, k samples), got {tuple(predicted.shape)}")
    return predicted.long()


def kept(predicted: Tensor, truth: Tensor) -> Tensor:
    """(N,) fraction of each conditioning's k samples whose predicted class (N, k) equals its true class (N,)."""
    predicted, truth = _grouped(predicted), torch.as_tensor(truth).long()
    if truth.shape != (len(predicted),):
        raise ValueError(f"{len(predicted)} conditionings of predictions but truth of shape {tuple(truth.shape)}")
    return (predicted == truth[:, None]).double().mean(dim=1)


def varies(predicted: Tensor) -> Tensor:
    """(N,) fraction of the k (k - 1) / 2 pairs of each conditioning's samples (N, k) whose classes differ."""
    predicted = _grouped(predicted)
    k = predicted.shape[1]
    if k < 2:
        raise RCDMError("varies needs at least 2 samples per conditioning: with one sample nothing can vary")
    same = (predicted[:, :, None] == predicted[:, None, :]).double().sum(dim=(1, 2)) - k   # ordered pairs i != j
    return 1 - same / (k * (k - 1))


def marginal(truth: Tensor, num_classes: int) -> Tensor:
    """(C,) distribution of the true classes (N,) over `num_classes`."""
    truth = torch.as_tensor(truth).long().flatten()
    if not len(truth):
        raise ValueError("the marginal of no conditionings is undefined")
    return torch.bincount(truth, minlength=int(num_classes)).double() / len(truth)


def chance_kept(truth: Tensor, num_classes: int) -> float:
    """sum_c p_c^2: kept of samples that ignore their conditioning but follow the conditionings' marginal p."""
    return float(marginal(truth, num_classes).pow(2).sum())


def chance_varies(truth: Tensor, num_classes: int) -> float:
    """1 - sum_c p_c^2: how often two independent draws from the conditionings' marginal p differ."""
    return 1 - chance_kept(truth, num_classes)


# Every interval here is a 95 % bootstrap interval over conditionings (the keys say so: *_ci95).
LEVEL = 0.95


def _interval(values: Tensor, seed: int) -> list[float]:
    return list(mean_interval(values, level=LEVEL, seed=seed))


def agreement(predicted: Tensor, truth: Tensor, num_classes: int, ceiling_predicted: Tensor | None = None,
              seed: int = 0) -> dict[str, Any]:
    """kept / chance / kept_above_chance / varies (and their intervals) of one factor, from class indices.

    predicted: (N, k) classes read off each conditioning's samples; truth: (N,) the conditionings' true classes;
    ceiling_predicted: (N,) classes read off the real conditioning images (gives `ceiling`). `varies` and its
    interval are None for k = 1. Intervals (*_ci95) are 95 % bootstrap intervals over conditionings, seeded.
    """
    predicted, truth = _grouped(predicted), torch.as_tensor(truth).long()
    per_conditioning = kept(predicted, truth)
    chance = chance_kept(truth, num_classes)
    result: dict[str, Any] = {
        "kept": float(per_conditioning.mean()),
        "kept_ci95": _interval(per_conditioning, seed),
        "chance": chance,
        "ceiling": None,
        "kept_above_chance": float(per_conditioning.mean()) - chance,
        "kept_above_chance_ci95": _interval(per_conditioning - chance, seed),
        "chance_sample_marginal": float((marginal(truth, num_classes) *
                                         marginal(predicted.flatten(), num_classes)).sum()),
        "varies": None,
        "varies_ci95": None,
        "varies_chance": chance_varies(truth, num_classes),
        "num_classes": int(num_classes),
    }
    if ceiling_predicted is not None:
        ceiling_predicted = torch.as_tensor(ceiling_predicted).long().flatten()
        if ceiling_predicted.shape != truth.shape:
            raise ValueError(f"{len(truth)} conditionings but {len(ceiling_predicted)} ceiling predictions")
        result["ceiling"] = float((ceiling_predicted == truth).double().mean())
    if predicted.shape[1] >= 2:
        spread = varies(predicted)
        result["varies"] = float(spread.mean())
        result["varies_ci95"] = _interval(spread, seed)
    return result


def factor_agreement(classifier: FactorClassifier, images: Tensor, truth_labels: Mapping[str, Tensor], k: int,
                     conditioning_images: Tensor | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{factor: `agreement`} of samples (N * k, 3, R, R) in [0, 1], grouped by conditioning (k consecutive each).

    truth_labels are the N conditionings' RAW labels as the dataset gives them ({factor: (N,)}, e.g.
    `run.val_items(n)["labels"]`; continuous values are binned with the classifier's training edges).
    conditioning_images (N, 3, R, R) in [0, 1], when given, yield each factor's `ceiling`. Any images work: samples
    of perturbed or interpolated representations as much as rcdm-eval's.
    """
    k = int(k)
    truth = classifier.targets(truth_labels)
    n = len(next(iter(truth.values())))
    if k < 1 or len(images) != n * k:
        raise RCDMError(f"{len(images)} samples are not {k} per conditioning for {n} conditionings")
    if conditioning_images is not None and len(conditioning_images) != n:
        raise RCDMError(f"{len(conditioning_images)} conditioning images for {n} conditionings")
    predicted = predict_factors(classifier, images)
    ceiling = predict_factors(classifier, conditioning_images) if conditioning_images is not None else None
    results = {}
    for name, spec in classifier.specs.items():
        results[name] = {
            "kind": spec.kind,
            **agreement(predicted[name].view(n, k), truth[name], spec.num_classes,
                        None if ceiling is None else ceiling[name], seed=seed),
        }
    return results


# ------------------------------------------------------------------------------------------------ rcdm-eval
# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_conditionings", minimum=2, optional=True),
    integer("samples_per_conditioning"),
    integer("classifier.width"),
    integer("classifier.convs"),
    flag("classifier.shared"),
    integer("classifier.epochs"),
    number("classifier.lr", above=0, example="1e-2"),
    number("classifier.weight_decay", at_least=0),
    integer("classifier.batch_size", minimum=2),
    integer("classifier.continuous_bins", minimum=2),
    flag("classifier.augment"),
    integer("classifier.num_train", minimum=2, optional=True),
    integer("classifier.seed", minimum=0),
]


def _sampling_words(sampling: Mapping[str, Any]) -> str:
    keys = ("sampler", "steps", "guidance", "seed")
    return ", ".join(f"{key}={sampling[key]}" for key in keys if sampling.get(key) is not None)


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """rcdm-eval metric=factors: kept / chance / ceiling / varies per factor for N conditionings x k samples."""
    from rcdm_lab.cli.common import run_name_of
    from rcdm_lab.viz.plots import factor_bars

    # The classifier first: a dataset without labels fails before any sampling.
    classifier, info = factor_classifier_for(run, ClassifierSettings.from_mapping(settings.get("classifier")))
    n = run.count("val", settings["num_conditionings"], "factors.num_conditionings", default=256)
    if n < 2:
        raise RCDMError(f"factors.num_conditionings: a bootstrap interval needs at least 2 conditionings, the "
                        f"validation split has {n}")
    k = int(settings["samples_per_conditioning"])
    items = run.val_items(n, "factors.num_conditionings")
    samples = run.sample(items["h"], k, sampling)
    conditionings = (items["x0"] + 1) / 2   # the real images at the model's resolution, as the UNet saw them
    per_factor = factor_agreement(classifier, samples, items["labels"], k, conditioning_images=conditionings)
    results: dict[str, Any] = {
        "num_conditionings": n,
        "samples_per_conditioning": k,
        "per_factor": per_factor,
        "classifier": info,
    }
    title = f"{run_name_of(str(run.ckpt))}: factors kept ({n} conditionings x {k}, " \
            f"{_sampling_words(sampling)})"
    results["factors_png"] = str(factor_bars(
        {name: row["kept"] for name, row in per_factor.items()},
        {name: row["kept_ci95"] for name, row in per_factor.items()},
        {name: row["chance"] for name, row in per_factor.items()},
        {name: row["ceiling"] for name, row in per_factor.items()},
        out_dir / "factors.png", title=title))
    return results
