"""Linear probes on frozen representations: which labelled factors can a linear layer read off h = f(x)?

The paper's Table a compares trunk and head representations by the top-1 accuracy of such probes. A probe
takes RAW h and standardises it itself, so it can sit after the encoder in a differentiable pipeline
(e.g. FGSM: backpropagate a probe's loss through probe and encoder to the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError

if TYPE_CHECKING:  # only for annotations: probes need not import the data module (and Lightning)
    from rcdm_lab.data.base import RCDMDataset

PROBE_FORMAT_VERSION = 1
# Dimensions whose training std is below this fraction of the largest one (e.g. ReLU features that are always 0)
# are left unscaled: dividing by ~0 would turn float noise into huge inputs. Relative, not absolute: some
# random-init encoders (MobileNetV2) output h ~1e-9 whose variation is still informative.
_MIN_RELATIVE_STD = 1e-6


class LinearProbe(nn.Module):
    """logits = W ((h - mean) / std) + b, with mean and std the training set's per-dimension statistics."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int, class_names: Sequence[str] | None = None,
                 factor: str = "class", encoder_identity: dict | None = None) -> None:
        super().__init__()
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be (D,) vectors of one shape, got {mean.shape} and {std.shape}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.linear = nn.Linear(mean.numel(), int(num_classes))
        self.class_names = [str(name) for name in class_names] if class_names is not None else \
            [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.factor = factor
        self.encoder_identity = dict(encoder_identity or {})

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def standardise(self, h: Tensor) -> Tensor:
        return (h - self.mean) / self.std

    def forward(self, h: Tensor) -> Tensor:
        """(B, D) raw representations -> (B, C) logits; differentiable w.r.t. h."""
        return self.linear(self.standardise(h))

    @torch.no_grad()
    def predict(self, h: Tensor, batch_size: int = 8192) -> Tensor:
        """(B,) predicted class indices (in batches, so a big split never holds all logits at once)."""
        return torch.cat([self(h[i:i + batch_size]).argmax(dim=1) for i in range(0, len(h), batch_size)])

    def record(self) -> dict[str, Any]:
        """Everything needed to rebuild this probe (plain tensors and JSON-like values only)."""
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "factor": self.factor,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], encoder_identity: dict | None = None) -> LinearProbe:
        state = record["state_dict"]
        probe = cls(state["mean"], state["std"], record["num_classes"], record["class_names"],
                    record.get("factor", "class"), encoder_identity)
        probe.load_state_dict(state)
        return probe

    def save(self, path: str | Path) -> None:
        save_probes(path, {self.factor: self}, self.encoder_identity)

    @classmethod
    def load(cls, path: str | Path, factor: str | None = None) -> LinearProbe:
        """The probe of `factor` in a probe.pt file (`factor` may be omitted when the file holds one probe)."""
        probes = load_probes(path)
        if factor is None:
            if len(probes) != 1:
                raise RCDMError(f"{path} holds probes for {sorted(probes)}: pass factor=<one of them>")
            return next(iter(probes.values()))
        if factor not in probes:
            raise RCDMError(f"{path} has no probe for factor {factor!r}; it has {sorted(probes)}")
        return probes[factor]


def save_probes(path: str | Path, probes: dict[str, LinearProbe], encoder_identity: dict | None = None) -> None:
    """One file for every factor's probe, with the identity of the encoder whose h they read."""
    payload = {
        "format": PROBE_FORMAT_VERSION,
        "encoder": dict(encoder_identity or {}),
        "probes": {factor: probe.record() for factor, probe in probes.items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_probes(path: str | Path) -> dict[str, LinearProbe]:
    path = Path(path)
    if not path.is_file():
        raise RCDMError(f"probe file {path} does not exist: train probes with rcdm-probe first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != PROBE_FORMAT_VERSION:
        raise RCDMError(f"{path} is not a probe file of format {PROBE_FORMAT_VERSION}: re-run rcdm-probe")
    encoder = payload.get("encoder", {})
    return {factor: LinearProbe.from_record(record, encoder) for factor, record in payload["probes"].items()}


def feature_stats(h: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (constant dimensions get std 1, so they pass through unscaled)."""
    h64 = h.double()
    mean = h64.mean(dim=0)
    std = h64.std(dim=0) if len(h64) > 1 else torch.ones_like(mean)
    floor = _MIN_RELATIVE_STD * float(std.max()) if len(std) else 0.0
    std = torch.where((std > floor) & (std > 0), std, torch.ones_like(std))
    return mean.float(), std.float()


def accuracy(probe: LinearProbe, h: Tensor, y: Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return float((probe.predict(h) == y).double().mean())


def majority_rate(y_train: Tensor, y_eval: Tensor, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent training class: the chance level a probe must beat."""
    if len(y_eval) == 0:
        return float("nan")
    majority = torch.bincount(y_train, minlength=num_classes).argmax()
    return float((y_eval == majority).double().mean())


def _fit_lbfgs(probe: LinearProbe, z: Tensor, y: Tensor, steps: int, weight_decay: float) -> float:
    """Full-batch L-BFGS on standardised features: a convex problem, so a few hundred steps converge."""
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def objective() -> Tensor:
        # Weight decay as an explicit L2 term on W (not b): L-BFGS has no decoupled decay.
        return F.cross_entropy(probe.linear(z), y) + 0.5 * weight_decay * probe.linear.weight.pow(2).sum()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # step() returns the loss at the start; report the one reached
        return float(objective())


def train_linear_probe(
    h_train: Tensor,
    y_train: Tensor,
    h_val: Tensor | None = None,
    y_val: Tensor | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    factor: str = "class",
    steps: int = 300,
    weight_decay: float = 1e-4,
    seed: int = 0,
    encoder_identity: dict | None = None,
) -> tuple[LinearProbe, dict[str, float]]:
    """A linear classifier of y from RAW h (standardised inside the probe), and its train/val top-1 and chance.

    h: (N, D) float; y: (N,) class indices. Runs on h's device; 10k x 1280 features take seconds on a CPU.
    """
    if h_train.ndim != 2 or y_train.shape != (len(h_train),):
        raise ValueError(f"expected h (N, D) and y (N,), got {tuple(h_train.shape)} and {tuple(y_train.shape)}")
    if len(h_train) < 2:
        raise RCDMError(f"a linear probe needs at least 2 training items, got {len(h_train)}")
    h_train, y_train = h_train.float(), y_train.long()
    num_classes = int(num_classes if num_classes is not None else int(y_train.max()) + 1)
    mean, std = feature_stats(h_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(mean, std, num_classes, class_names, factor, encoder_identity).to(h_train.device)
    # Zero init: the optimum of a convex problem should not depend on a random start.
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    z = probe.standardise(h_train).detach()
    loss = _fit_lbfgs(probe, z, y_train, steps, weight_decay)
    probe.eval()
    metrics = {"train_loss": loss, "train_acc": accuracy(probe, h_train, y_train), "num_train": len(y_train)}
    if h_val is not None and y_val is not None:
        y_val = y_val.long().to(h_train.device)
        metrics.update(val_acc=accuracy(probe, h_val.float().to(h_train.device), y_val),
                       chance=majority_rate(y_train, y_val, num_classes), num_val=len(y_val))
    return probe.cpu(), metrics


def quantile_bins(train_values: Tensor, num_bins: int = 4) -> Tensor:
    """The num_bins - 1 inner edges splitting the training values into (roughly) equal-count bins."""
    quantiles = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)[1:-1]
    return torch.quantile(train_values.double(), quantiles)


def bin_values(values: Tensor, edges: Tensor) -> Tensor:
    """Bin index of each value (0 .. len(edges)); a value equal to an edge goes to the upper bin."""
    return torch.bucketize(values.double(), edges, right=True)


def bin_names(edges: Tensor, low: float, high: float) -> list[str]:
    bounds = [low, *edges.tolist(), high]
    return [f"[{a:.3g}, {b:.3g})" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ------------------------------------------------------------------------------ probing targets from datasets
@dataclass
class Factor:
    """One probing target: class indices per split, and what each class means."""

    name: str
    kind: str  # "class", or "continuous" (binned into quantile classes)
    y_train: Tensor
    y_val: Tensor
    class_names: list[str]


def label_columns(dataset: RCDMDataset) -> dict[str, Tensor]:
    """{factor: (N,) labels} of every item, without rendering or decoding images."""
    rows = [dataset.labels(i) for i in range(len(dataset))]
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def probing_targets(train_set: RCDMDataset, val_set: RCDMDataset, num_bins: int) -> list[Factor]:
    """Every labelled factor as class indices; continuous ones binned at the TRAIN split's quantiles."""
    train_labels, val_labels = label_columns(train_set), label_columns(val_set)
    factors = []
    for name, kind in train_set.factor_kinds.items():
        y_train, y_val = train_labels[name], val_labels[name]
        if kind == "class":
            class_names = [str(c) for c in train_set.class_names(name)]
            factors.append(Factor(name, kind, y_train.long(), y_val.long(), class_names))
        else:  # "continuous" (RCDMDataset admits no other kind)
            edges = quantile_bins(y_train, num_bins)
            low, high = float(min(y_train.min(), y_val.min())), float(max(y_train.max(), y_val.max()))
            factors.append(Factor(name, kind, bin_values(y_train, edges), bin_values(y_val, edges),
                                  bin_names(edges, low, high)))
    return factors
