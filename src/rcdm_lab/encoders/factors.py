"""The oracle control `encoder=factors`: h is the true factor vector of a dataset item, not a learned feature.

On a dataset whose items carry every factor of variation (the built-in `shapes`), conditioning an RCDM on the
factors themselves -- one-hot classes, standardised continuous values -- gives the upper bound of what the UNet
learns to follow in a given training budget: a learned representation's samples can keep at most what the oracle's
keep. The oracle has no function from pixels to factors, so it encodes an image by finding it among the items of
its dataset (train and validation splits, exact up to 8-bit rounding) and returning that item's labels; any other
image -- an RCDM sample, a photo, a flipped item -- is refused with a message. Its samples are judged by the factor
classifiers of `metric=factors`, never by ranks in its own space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import get_class
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import quantise, resize_and_center_crop

NAME = "factors"
DEFAULT_DATASET = "rcdm_lab.data.ShapesDataset"
# An item matches when every pixel is within this of the query: the cache's 8-bit rounding moves a pixel by at most
# half a level, a resample by a little more; distinct shapes differ by tens of levels over many pixels.
MATCH_TOLERANCE = 3 / 255
# Rows of the item table compared with a batch at once: bounds the distance matrix at 64 x 4096 floats.
_TABLE_CHUNK = 4096
_SPLITS = ("train", "val")


def dataset_class(weights: str) -> type:
    """The dataset class whose factors the oracle reports: `encoder.weights` (default: the built-in shapes)."""
    path = DEFAULT_DATASET if weights in ("default", None) else str(weights)
    try:
        cls = get_class(path)
    except Exception as error:
        raise RCDMError(f"encoder=factors: encoder.weights={path} is not a dataset class ({error}); leave "
                        f"encoder.weights=default (the built-in shapes) or name a dataset class with factor labels, "
                        f"e.g. {DEFAULT_DATASET}") from None
    if not getattr(cls, "factor_kinds", None):
        raise RCDMError(f"encoder=factors needs a dataset with factor labels; {path} declares none "
                        "(factor_kinds): use data=shapes")
    return cls


class FactorLayout:
    """Where each factor lives in h: class factors one-hot (their class count wide), continuous factors 1-wide."""

    def __init__(self, cls: type) -> None:
        probe = cls(split="val", image_size=8, num_val=1) if cls.__name__ == "ShapesDataset" else None
        self.factors: list[tuple[str, str, int]] = []
        for factor, kind in cls.factor_kinds.items():
            width = 1
            if kind == "class":
                if probe is None:
                    raise RCDMError(f"encoder=factors supports the built-in shapes dataset only, not {cls.__name__}")
                width = probe.num_classes(factor)
            self.factors.append((factor, kind, width))
        self.dim = sum(width for _, _, width in self.factors)

    def describe(self) -> str:
        return ",".join(f"{factor}:{kind}:{width}" for factor, kind, width in self.factors)

    def vectors(self, labels: dict[str, Tensor], continuous_mean: Tensor, continuous_std: Tensor) -> Tensor:
        """(N, dim) factor vectors of the labels {factor: (N,)}; continuous ones standardised with the given stats."""
        parts, column = [], 0
        for factor, kind, width in self.factors:
            values = torch.as_tensor(labels[factor])
            if kind == "class":
                parts.append(nn.functional.one_hot(values.long(), width).float())
            else:
                parts.append(((values.float() - continuous_mean[column]) / continuous_std[column])[:, None])
                column += 1
        return torch.cat(parts, dim=1)

    def continuous(self, labels: dict[str, Tensor]) -> Tensor:
        """(N, C) raw values of the continuous factors."""
        columns = [torch.as_tensor(labels[f]).float() for f, kind, _ in self.factors if kind == "continuous"]
        return torch.stack(columns, dim=1) if columns else torch.zeros(len(next(iter(labels.values()))), 0)


class FactorLookup(nn.Module):
    """Pixels (as the encoder sees them) -> the factor vector of the dataset item they show."""

    def __init__(self, layout: FactorLayout, input_size: int) -> None:
        super().__init__()
        self.layout, self.input_size = layout, int(input_size)
        # The state (and so the weights digest) is the layout: the same layout on the same data is the same f.
        code = hashlib.sha256(layout.describe().encode()).digest()[:8]
        self.register_buffer("layout_code", torch.tensor(list(code), dtype=torch.uint8))
        self._datasets: Callable[[str], Any] | None = None
        self._table: Tensor | None = None  # (T, 3 * S * S) uint8
        self._vectors: Tensor | None = None  # (T, dim)

    def attach_data(self, datasets: Callable[[str], Any]) -> None:
        """`datasets(split)` gives the split's dataset: the items this oracle can encode (read on first use)."""
        self._datasets, self._table, self._vectors = datasets, None, None

    def _build_table(self) -> None:
        if self._datasets is None:
            raise RCDMError("encoder=factors encodes only items of a dataset: it is given one by the data module "
                            "(rcdm-train, rcdm-eval); an image alone has no factors to look up")
        images, labels = [], {factor: [] for factor, _, _ in self.layout.factors}
        for split in _SPLITS:
            dataset = self._datasets(split)
            for index in range(len(dataset)):
                item = dataset[index]
                if not item.get("labels"):
                    raise RCDMError(f"encoder=factors needs factor labels, but {type(dataset).__name__} items have "
                                    "none: use data=shapes")
                images.append(quantise(resize_and_center_crop(item["image"][None].float(), self.input_size))[0])
                for factor in labels:
                    labels[factor].append(item["labels"][factor])
        stacked = {factor: torch.stack([torch.as_tensor(v) for v in values]) for factor, values in labels.items()}
        train_count = len(self._datasets("train"))
        continuous = self.layout.continuous(stacked)[:train_count]
        mean = continuous.mean(dim=0)
        std = continuous.std(dim=0).clamp_min(1e-6) if train_count > 1 else torch.ones_like(mean)
        self._table = torch.stack(images).flatten(1)
        self._vectors = self.layout.vectors(stacked, mean, std)

    def forward(self, pixels: Tensor) -> Tensor:
        if self._table is None:
            self._build_table()
        queries = pixels.detach().float().flatten(1).cpu()
        if queries.shape[1] != self._table.shape[1]:
            raise RCDMError(f"encoder=factors was given {tuple(pixels.shape[1:])} images but holds its items at "
                            f"{self.input_size} px: set encoder.input_size to the data's source size")
        best_distance = torch.full((len(queries),), float("inf"))
        best_index = torch.zeros(len(queries), dtype=torch.long)
        query_norms = (queries**2).sum(dim=1)
        for start in range(0, len(self._table), _TABLE_CHUNK):
            rows = self._table[start:start + _TABLE_CHUNK].float() / 255
            distances = query_norms[:, None] + (rows**2).sum(dim=1)[None] - 2 * queries @ rows.T
            value, index = distances.min(dim=1)
            better = value < best_distance
            best_distance[better], best_index[better] = value[better], index[better] + start
        matched = self._table[best_index].float() / 255
        worst = (matched - queries).abs().amax(dim=1)
        unknown = (worst > MATCH_TOLERANCE).nonzero().flatten()
        if len(unknown):
            raise RCDMError(
                f"encoder=factors (the oracle) encodes only items of its dataset's train and val splits, by their "
                f"labels; {len(unknown)} of {len(queries)} images are none of them (an RCDM sample, a photo, a "
                "flipped or augmented item). Train it with data.flip=false, and judge its samples with "
                "metric=factors, not with metrics that encode samples (faithfulness, distances)")
        return self._vectors[best_index].to(pixels.device)


def build_factor_encoder(layer: str, weights: str | None, input_size: int | None, input_norm: str) -> nn.Module:
    """The frozen oracle encoder for `encoder=factors` (see the module docstring)."""
    from rcdm_lab.encoders.frozen import FrozenEncoder
    from rcdm_lab.encoders.weights import state_digest

    if layer != "backbone":
        raise RCDMError(f"encoder=factors has one representation (the factor vector): use layer=backbone, "
                        f"not layer={layer}")
    if input_size is None:
        raise RCDMError("encoder=factors needs encoder.input_size: the source size of the data (e.g. 32)")
    if input_norm != "native":
        raise RCDMError("encoder=factors compares the pixels themselves: use encoder.input_norm=native")
    layout = FactorLayout(dataset_class(weights))
    lookup = FactorLookup(layout, input_size)
    return FrozenEncoder(lookup, name=NAME, layer="backbone", dim=layout.dim, input_size=int(input_size),
                         input_norm=input_norm, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         weights_digest=state_digest([lookup]))
