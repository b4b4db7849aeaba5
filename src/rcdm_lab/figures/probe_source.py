"""The labelled factor and linear probe that the probe-based figures read (adversarial Fig. 4/29, confidence Fig. 12).

A probe comes from `probe=<probe.pt>` (written by rcdm-probe) when given, else it is fitted here on the run's
training representations, exactly as rcdm-probe would (same binning of continuous factors, same L-BFGS fit).
The class-mean figure (Fig. 27) picks its factor and class labels the same way.
"""

from __future__ import annotations

from rcdm_lab.checkpoint import describe_encoder_mismatch
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.metrics.probe import Factor, LinearProbe, probing_targets, train_linear_probe
from rcdm_lab.trained_run import TrainedRun

# rcdm-probe's default (conf/probe.yaml probe.continuous_bins): a fitted probe bins continuous factors alike.
CONTINUOUS_BINS = 4
# Tried in this order when no factor is named: folder / CIFAR datasets label "class", the shapes dataset "shape".
DEFAULT_FACTORS = ("class", "shape")


def factor_labels(run: TrainedRun, factor: str | None = None, continuous_bins: int = CONTINUOUS_BINS) -> Factor:
    """The train/val class indices and class names of `factor` (default "class", else "shape") of the run's data.

    Continuous factors (shapes: scale, x, y, rotation) become `continuous_bins` quantile classes of the train split,
    with rcdm-probe's own binning, so a fitted probe and a probe.pt agree on what a class is.
    """
    train_set, val_set = run.datamodule.dataset("train"), run.datamodule.dataset("val")
    available = list(run.labels("train"))
    if not available:
        raise RCDMError(f"{run.ckpt}: its dataset has no labels, so there is nothing to probe or average per class; "
                        "use a labelled dataset (shapes, CIFAR, a folder with one subfolder per class)")
    if factor is None:
        factor = next((name for name in DEFAULT_FACTORS if name in available), None)
        if factor is None:
            raise RCDMError(f"no default factor in this dataset: pass figure.factor=<one of {available}>")
    if factor not in available:
        raise RCDMError(f"unknown factor {factor!r}: pass figure.factor=<one of {available}>")
    targets = {target.name: target for target in probing_targets(train_set, val_set, continuous_bins)}
    return targets[factor]


def probe_for(ctx: FigureContext, run: TrainedRun, factor: str | None = None,
              continuous_bins: int = CONTINUOUS_BINS, target: Factor | None = None) -> LinearProbe:
    """The linear probe of `factor` on `run`'s representation: ctx.probe's, checked against the encoder, or fitted.

    The probe is returned on the run's device, in eval mode. `target`: `factor_labels(run, factor)` when the caller
    has it already (labelling every item of both splits is not free on a large dataset).
    """
    target = target if target is not None else factor_labels(run, factor, continuous_bins)
    identity = run.pipeline.encoder.identity()
    if ctx.probe:
        probe = LinearProbe.load(ctx.probe, target.name)
        mismatch = describe_encoder_mismatch(probe.encoder_identity, identity)
        if mismatch:
            # A probe reading another encoder's h classifies noise; say which run of rcdm-probe would fit.
            raise RCDMError(f"probe {ctx.probe} was trained on another encoder than {run.ckpt} ({mismatch}); "
                            f"train one with rcdm-probe encoder={identity['name']} layer={identity['layer']} "
                            f"(the checkpoint's encoder), or drop probe= to fit one on the run's data")
    else:
        if len(target.class_names) < 2:
            raise RCDMError(f"factor {target.name!r} has a single class ({target.class_names}); a probe needs two "
                            "or more: choose another figure.factor")
        # Fitted where the model runs: a GPU fits an ImageNet-sized probe in seconds.
        device = run.pipeline.device
        h_train = run.representations("train").to(device)
        probe, _ = train_linear_probe(h_train, target.y_train.to(device), num_classes=len(target.class_names),
                                      class_names=target.class_names, factor=target.name,
                                      encoder_identity=identity)
    return probe.to(run.pipeline.device).eval()


def resolve_class(names: list[str], wanted: int | str, factor: str) -> int:
    """The class index of `wanted` (an index, or a class name) among `names`; an error listing them otherwise."""
    if isinstance(wanted, bool):
        raise RCDMError(f"class {wanted!r} of factor {factor!r}: give a class name or index")
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.lstrip("-").isdigit()):
        index = int(wanted)
        if 0 <= index < len(names):
            return index
        raise RCDMError(f"class index {index} out of range for factor {factor!r} ({len(names)} classes: {names})")
    if wanted in names:
        return names.index(wanted)
    raise RCDMError(f"unknown class {wanted!r} of factor {factor!r}: use one of {names} (or an index)")
