"""Factor classifiers: small CNNs that read every labelled factor off an image, independent of any encoder.

`rcdm-eval metric=factors` asks which factors RCDM samples keep from their conditioning image. Reading factors off
samples with the encoder under study (or a probe on its h) would measure the encoder with itself, so a separate
classifier is trained on the REAL training images the RCDM saw (at the model's resolution, as the UNet saw them):
one small convolutional trunk and linear head per factor (`FactorClassifier`). Continuous factors are binned at the
training split's quantiles (`probe.quantile_bins`), so every factor is a classification. Its accuracy on the
held-out validation images says how far its readings of samples can be trusted; `metric=factors` reports it, and
the accuracy on the conditionings themselves as each factor's ceiling.

Measured with the defaults (conf/metric/factors.yaml: two convs per stage, 32 epochs) on `shapes` at 32 px (4 000
training and 1 000 validation images, seed 0, the study's data), 128 s on a 2-core AVX512-BF16 EPYC -- held-out
accuracy:

    shape 0.997   object_colour 0.999   background_colour 1.000   texture 1.000
    scale 0.623   x 0.935               y 0.935                   rotation 0.383      (4 bins each: chance 0.25)

Shape is what costs capacity and epochs (the colours and the texture are read at >= 99.5 % after a few): one conv
per stage read it at 0.855 in 16 epochs (38 s) and 0.926 in 24; width 16 at 24 epochs 0.959 (104 s). Scale and
rotation (modulo each shape's symmetry) are hard to read at 32 px; their low ceilings say so in every report.

Training is seeded with a fixed epoch count, and the result is cached under the data module's cache dir
(`factor_classifiers/<key>.pt`, key = train and val fingerprints, resolution, settings), so every model trained on
the same data is judged by the same classifier.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.probe import bin_names, bin_values, quantile_bins

if TYPE_CHECKING:
    from rcdm_lab.data.base import RCDMDataset
    from rcdm_lab.trained_run import TrainedRun

# Bump when the architecture, the training recipe or the file layout changes: it is part of every cache key.
CLASSIFIER_FORMAT_VERSION = 1
CACHE_SUBDIR = "factor_classifiers"
NO_LABELS = "metric=factors needs a dataset with factor labels, e.g. data=shapes"


# ------------------------------------------------------------------------------------------------- factors
@dataclass(frozen=True)
class FactorSpec:
    """One factor as a classification: its classes, and for a continuous factor the training-quantile bin edges."""

    name: str
    kind: str  # "class" or "continuous"
    class_names: tuple[str, ...]
    edges: tuple[float, ...] | None = None  # the num_bins - 1 inner edges (continuous factors only)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def targets(self, values: Tensor) -> Tensor:
        """(N,) class indices of raw labels as the dataset gives them (continuous values are binned)."""
        values = torch.as_tensor(values).flatten()
        if self.kind == "continuous":
            return bin_values(values, torch.tensor(self.edges, dtype=torch.float64))
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise RCDMError(f"factor {self.name!r} is a class factor but got non-integer labels")
        y = values.long()
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes:
            raise RCDMError(f"factor {self.name!r} labels must lie in 0..{self.num_classes - 1}")
        return y


def factor_specs(dataset: RCDMDataset, train_labels: Mapping[str, Tensor], num_bins: int = 4) -> list[FactorSpec]:
    """Every labelled factor of `dataset` as a classification; continuous ones binned at the train quantiles.

    A factor whose training values are all the same (a folder of images without class subfolders has one class,
    "") says nothing and is left out; a dataset left with no factor gets the one "needs factor labels" error.
    """
    kinds = dict(getattr(dataset, "factor_kinds", {}) or {})
    specs = []
    for name, kind in kinds.items():
        if name not in train_labels or len(torch.as_tensor(train_labels[name]).unique()) < 2:
            continue
        values = torch.as_tensor(train_labels[name])
        if kind == "class":
            try:
                names = tuple(str(c) for c in dataset.class_names(name))
            except (RCDMError, KeyError):   # a dataset without class names: the indices seen in training
                names = tuple(str(i) for i in range(int(values.max()) + 1))
            specs.append(FactorSpec(name, kind, names))
        else:
            edges = quantile_bins(values, num_bins).unique()   # a value held by many items: fewer, not empty, bins
            names = tuple(bin_names(edges, float(values.min()), float(values.max())))
            specs.append(FactorSpec(name, kind, names, tuple(float(e) for e in edges)))
    if not specs:
        raise RCDMError(NO_LABELS)
    return specs


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ClassifierSettings:
    """How the factor classifier is trained (conf/metric/factors.yaml `classifier:` documents each)."""

    width: int = 8
    convs: int = 2
    shared: bool = False
    epochs: int = 32
    lr: float = 1e-2
    weight_decay: float = 5e-4
    batch_size: int = 64
    continuous_bins: int = 4
    augment: bool = True
    num_train: int | None = None
    seed: int = 0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> ClassifierSettings:
        settings = dict(settings or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise RCDMError(f"unknown factor classifier settings {unknown}: use {sorted(known)}")
        return cls(**settings)


# ------------------------------------------------------------------------------------------------- model
def _conv_bn_relu(c_in: int, c_out: int, groups: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, groups=groups), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


_WHERE_CHANNELS = 8


def num_stages(resolution: int) -> int:
    """Downsampling stages after the 2x space-to-depth stem so the trunk ends at a 4x4 map (at most 5)."""
    return max(0, min(5, round(math.log2(max(resolution, 8) / 8))))


class FactorClassifier(nn.Module):
    """images (B, 3, R, R) in [0, 1] -> {factor: (B, C_factor) logits}: one small CNN trunk and linear head each.

    A trunk folds each 2x2 pixel block into 12 channels (space-to-depth: no convolution runs at full resolution,
    which on a CPU costs more in memory traffic than it adds), then `num_stages(R)` stages of `convs` 3x3
    conv-BN-ReLU and a 2x2 max-pool (widths 2w, 4w, 4w, ...) and a last 3x3 conv-BN-ReLU of width 4w: at 32 px,
    16x16 -> 8x8 -> 4x4. A head reads two views of its trunk's output: the global average (what is there, wherever
    it is: translation invariant, so shape and colour generalise across positions from few images) and a coarse
    4x4 map of a few 1x1-projected channels (where it is: the position factors need it). Images of another size
    are resized (antialiased) to R first.

    Each factor has its own trunk (`shared=False`, computed together as grouped convolutions): with one trunk
    shared by every head, the factors compete for it and the hard one loses -- on 32 px shapes (4 000 images, 12
    epochs) the shape head alone reached 92 % held-out accuracy, next to the colour and texture heads 60 %, next
    to all 8 heads 53 %, and 59 % with a trunk twice as wide. `shared=True` gives the single-trunk model (cheaper).
    """

    def __init__(self, specs: Sequence[FactorSpec], resolution: int, width: int = 8, convs: int = 1,
                 turned: bool = False, shared: bool = False) -> None:
        super().__init__()
        if not specs:
            raise RCDMError(NO_LABELS)
        self.specs = {spec.name: spec for spec in specs}
        self.resolution, self.width, self.convs = int(resolution), int(width), int(convs)
        # Trained to read the class factors of turned and mirrored images too: predictions average the 8 views.
        self.turned, self.shared = bool(turned), bool(shared)
        groups = self.num_trunks
        layers: list[nn.Module] = [nn.PixelUnshuffle(2)]
        # The image's 12 channels are every trunk's input: only the first convolution is not grouped.
        channels, split = 12, 1
        for stage in range(num_stages(self.resolution)):
            for _ in range(self.convs):
                out = groups * self.width * min(2 ** (stage + 1), 4)
                layers += _conv_bn_relu(channels, out, split)
                channels, split = out, groups
            layers.append(nn.MaxPool2d(2))
        top = 4 * self.width
        layers += _conv_bn_relu(channels, groups * top, split)
        self.trunk = nn.Sequential(*layers)
        self.where = nn.Sequential(nn.Conv2d(groups * top, groups * _WHERE_CHANNELS, 1, groups=groups),
                                   nn.AdaptiveAvgPool2d(4))
        features = top + _WHERE_CHANNELS * 16
        self.heads = nn.ModuleDict({spec.name: nn.Linear(features, spec.num_classes) for spec in specs})

    @property
    def num_trunks(self) -> int:
        return 1 if self.shared else len(self.specs)

    @property
    def factors(self) -> list[str]:
        return list(self.specs)

    def prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        images = images.float()
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images * 2 - 1

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        maps = self.trunk(self.prepare(images).contiguous(memory_format=torch.channels_last))
        batch, groups = len(maps), self.num_trunks
        what = maps.mean(dim=(2, 3)).reshape(batch, groups, -1)
        where = self.where(maps).reshape(batch, groups, -1)
        features = torch.cat([what, where], dim=2)   # (B, trunks, features)
        return {name: head(features[:, 0 if self.shared else i]) for i, (name, head) in enumerate(self.heads.items())}

    def targets(self, labels: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{factor: (N,) class index} of raw dataset labels, for every factor this classifier reads."""
        missing = [name for name in self.specs if name not in labels]
        if missing:
            raise RCDMError(f"labels lack factors {missing} that the classifier reads")
        return {name: spec.targets(labels[name]) for name, spec in self.specs.items()}

    def record(self) -> dict[str, Any]:
        return {"specs": [asdict(spec) for spec in self.specs.values()], "resolution": self.resolution,
                "width": self.width, "convs": self.convs, "turned": self.turned, "shared": self.shared,
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> FactorClassifier:
        specs = [FactorSpec(s["name"], s["kind"], tuple(s["class_names"]),
                            None if s["edges"] is None else tuple(s["edges"])) for s in record["specs"]]
        classifier = cls(specs, record["resolution"], record["width"], record["convs"], record["turned"],
                         record["shared"])
        classifier.load_state_dict(record["state_dict"])
        return classifier.eval()


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def predict_factors(classifier: FactorClassifier, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
    """{factor: (B,) predicted class index} of images (B, 3, R, R) in [0, 1] (samples, real images, anything).

    A classifier trained with turned and mirrored images (`turned`) reads each class factor as the average of its
    probabilities over the 8 turns and mirror images (`dihedral`), a few points more accurate than one view;
    continuous factors (which turning changes) are read off the image as it is.
    """
    was_training = classifier.training
    classifier.eval()
    device = _device_of(classifier)
    views = range(8) if classifier.turned else range(1)
    invariant = {name: spec.kind == "class" for name, spec in classifier.specs.items()}
    predictions: dict[str, list[Tensor]] = {name: [] for name in classifier.factors}
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            total: dict[str, Tensor] = {}
            for view in views:
                logits = classifier(dihedral(batch, torch.full((len(batch),), view, device=device)))
                for name, value in logits.items():
                    if view == 0:
                        total[name] = value.softmax(dim=1)
                    elif invariant[name]:
                        total[name] += value.softmax(dim=1)
            for name, value in total.items():
                predictions[name].append(value.argmax(dim=1).cpu())
    finally:
        classifier.train(was_training)
    if not len(images):
        return {name: torch.zeros(0, dtype=torch.long) for name in classifier.factors}
    return {name: torch.cat(chunks) for name, chunks in predictions.items()}


def accuracies(classifier: FactorClassifier, images: Tensor, labels: Mapping[str, Tensor]) -> dict[str, float]:
    """{factor: top-1 accuracy} on images with raw dataset labels."""
    predicted, truth = predict_factors(classifier, images), classifier.targets(labels)
    return {name: float((predicted[name] == truth[name]).double().mean()) for name in classifier.factors}


def majority_rates(classifier: FactorClassifier, train_labels: Mapping[str, Tensor],
                   labels: Mapping[str, Tensor]) -> dict[str, float]:
    """{factor: accuracy of always answering its most frequent training class}: what an accuracy must beat."""
    train, held_out = classifier.targets(train_labels), classifier.targets(labels)
    rates = {}
    for name, spec in classifier.specs.items():
        majority = torch.bincount(train[name], minlength=spec.num_classes).argmax()
        rates[name] = float((held_out[name] == majority).double().mean())
    return rates


# ---------------------------------------------------------------------------------------------- training
def _turn(images: Tensor, code: int) -> Tensor:
    turned = torch.rot90(images, code % 4, dims=(-2, -1)) if code % 4 else images
    return turned.flip(-1) if code >= 4 else turned


def dihedral(images: Tensor, codes: Tensor) -> Tensor:
    """Each image (B, 3, H, W) turned by codes % 4 quarter turns, then mirrored when codes >= 4 (codes in 0..7)."""
    codes = torch.as_tensor(codes).to(images.device)
    if len(codes) and bool((codes == codes[0]).all()):
        return _turn(images, int(codes[0]))
    out = images.clone()
    for code in codes.unique().tolist():
        chosen = codes == code
        out[chosen] = _turn(images[chosen], code)
    return out


def train_factor_classifier(images: Tensor, labels: Mapping[str, Tensor], specs: Sequence[FactorSpec],
                            settings: ClassifierSettings = ClassifierSettings(),
                            device: str | torch.device = "cpu") -> FactorClassifier:
    """A FactorClassifier trained on images (N, 3, R, R) (uint8, or float in [0, 1]) with raw dataset labels.

    AdamW with a one-cycle learning rate over a fixed `settings.epochs`, the summed cross-entropy of the heads,
    seeded (initialisation, batch order, augmentation) so the same data and settings give the same classifier.
    With `settings.augment`, half of each batch is turned by quarter turns and mirrored (`dihedral`) and only the
    class factors learn from that half: it assumes that a class factor does not change when the image is turned
    or mirrored (true of shapes' shape, colours and textures), while continuous ones (position, rotation) do.
    """
    if len(images) < 2:
        raise RCDMError(f"the factor classifier needs at least 2 training images, got {len(images)}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        classifier = FactorClassifier(specs, images.shape[-1], settings.width, settings.convs, settings.augment,
                                      settings.shared)
    classifier.to(device, memory_format=torch.channels_last).train()
    targets = torch.stack([spec.targets(labels[spec.name]) for spec in specs], dim=1)  # (N, F)
    batch_size = min(settings.batch_size, len(images))
    steps_per_epoch = len(images) // batch_size   # drop the ragged last batch: BatchNorm on 1 item fails
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr,
                                                   total_steps=settings.epochs * steps_per_epoch, pct_start=0.2)
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            x = images[batch]
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
            # The first half of the batch turned and flipped: only the class factors learn from it.
            moved = torch.zeros(len(batch), dtype=torch.bool)
            if settings.augment:
                moved[: len(batch) // 2] = True
                x = torch.cat([dihedral(x[moved], torch.randint(8, (int(moved.sum()),), generator=generator)),
                               x[~moved]])
            x, y, moved = x.to(device), targets[batch].to(device), moved.to(device)
            logits = classifier(x)
            loss = 0
            for i, spec in enumerate(specs):
                if spec.kind == "class":
                    loss = loss + F.cross_entropy(logits[spec.name], y[:, i])
                else:   # turning moves the position and changes the rotation: the untouched half only
                    loss = loss + F.cross_entropy(logits[spec.name][~moved], y[~moved, i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval()


# ------------------------------------------------------------------------------------------------ caching
def classifier_key(train_fingerprint: str, val_fingerprint: str, resolution: int,
                   settings: ClassifierSettings) -> str:
    """Short hex digest of everything that determines the classifier and its held-out accuracy."""
    recipe = {"format": CLASSIFIER_FORMAT_VERSION, "train": train_fingerprint, "val": val_fingerprint,
              "resolution": int(resolution), "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _uint8_images(run: TrainedRun, split: str, count: int, chunk: int = 512) -> Tensor:
    """(count, 3, R, R) uint8 images of `split` (cached images are uint8 already: lossless, 4x less memory)."""
    return torch.cat([run.images(split, range(start, min(start + chunk, count))).mul(255).round().to(torch.uint8)
                      for start in range(0, count, chunk)])


def _save_atomically(path: Path, payload: dict) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)   # a reader never sees half a file


def _load(path: Path) -> tuple[FactorClassifier, dict] | None:
    """The cached classifier and its info; None (and a warning) when the file is unreadable or not ours."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CLASSIFIER_FORMAT_VERSION:
            raise ValueError(f"format {payload.get('format')!r}")
        return FactorClassifier.from_record(payload["classifier"]), dict(payload["info"])
    except Exception as error:  # noqa: BLE001 -- any damage (truncation, pickle junk, wrong keys) means rebuild
        warnings.warn(f"factor classifier cache {path} is unreadable ({type(error).__name__}: {error}); "
                      "training it again", stacklevel=3)
        return None


def factor_classifier_for(run: TrainedRun, settings: ClassifierSettings | Mapping[str, Any] | None = None,
                          cache_dir: str | os.PathLike | None = None) -> tuple[FactorClassifier, dict[str, Any]]:
    """The factor classifier of `run`'s data (trained on its train split, scored on its val split), cached.

    Returns the classifier (on the run's device, eval mode) and its info: held-out accuracy per factor, the
    majority-class rate each factor's accuracy must beat, split sizes, training seconds, cache path and whether
    the cached classifier was reused. Raises RCDMError for a dataset without factor labels.
    """
    from rcdm_lab.data.cache import _exclusive_lock

    if not isinstance(settings, ClassifierSettings):
        settings = ClassifierSettings.from_mapping(settings)
    train_set, val_set = run.datamodule.dataset("train"), run.datamodule.dataset("val")
    if not getattr(train_set, "factor_kinds", None):
        raise RCDMError(NO_LABELS)
    train_labels, val_labels = run.labels("train"), run.labels("val")
    if not train_labels or not val_labels:
        raise RCDMError(NO_LABELS)
    num_train = len(train_set) if settings.num_train is None else int(settings.num_train)
    if num_train > len(train_set):
        raise RCDMError(f"factors.classifier.num_train={num_train} but the training split has {len(train_set)} "
                        "items: ask for fewer (null: all of them)")
    train_labels = {name: values[:num_train] for name, values in train_labels.items()}
    specs = factor_specs(train_set, train_labels, settings.continuous_bins)
    resolution = run.pipeline.resolution
    root = Path(cache_dir) if cache_dir is not None else Path(run.datamodule.cache_dir) / CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    key = classifier_key(train_set.fingerprint(), val_set.fingerprint(), resolution, settings)
    path = root / f"{key}.pt"
    device = run.pipeline.device
    # Two evaluations of models on the same data wait for one another instead of both training.
    with _exclusive_lock(root / f"{key}.lock"):
        loaded = _load(path) if path.exists() else None
        if loaded is not None:
            classifier, info = loaded
            return classifier.to(device), {**info, "cache": str(path), "reused": True}
        start = time.perf_counter()
        classifier = train_factor_classifier(_uint8_images(run, "train", num_train), train_labels, specs,
                                             settings, device=device)
        seconds = time.perf_counter() - start
        val_images = _uint8_images(run, "val", len(val_set)).float() / 255
        info = {
            "val_accuracy": accuracies(classifier, val_images, val_labels),
            "val_majority": majority_rates(classifier, train_labels, val_labels),
            "kinds": {name: spec.kind for name, spec in classifier.specs.items()},
            "num_train": num_train, "num_val": len(val_set), "resolution": resolution,
            "train_seconds": round(seconds, 1), "settings": asdict(settings), "key": key,
        }
        _save_atomically(path, {"format": CLASSIFIER_FORMAT_VERSION, "classifier": classifier.record(),
                                "info": info})
    return classifier, {**info, "cache": str(path), "reused": False}
