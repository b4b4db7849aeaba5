"""What a dataset must provide to train and evaluate an RCDM: the contract every dataset in rcdm_lab derives from.

Required (the data module, the representation cache and every evaluation rely on them):
- ``__len__()``;
- ``__getitem__(i) -> {"image": (3, S, S) float32 in [0, 1], "labels": {factor: scalar tensor}}``, where S is the
  ``image_size`` the data module constructs the dataset with (``labels`` may be left out: no labelled factors);
- ``fingerprint() -> str``: changes whenever any image would change (files, decoding, rendering, split, size). It
  is part of the representation cache's key, so a dataset that keeps its fingerprint while its pixels change
  trains on stale representations.

Optional, with defaults (probes and the class-mean / confidence figures read them):
- ``factor_kinds``: {factor: "class" | "continuous"} of the labels (default: none); ``factor_names`` follows it;
- ``labels(i)``: the labels of item i; override it when they are cheaper than the image (default: ``self[i]``'s);
- ``class_names(factor)``: the name of each class index of a class factor (default: an error naming the fix);
- ``num_classes(factor)``: ``len(class_names(factor))``.

A dataset is built by the data module as ``dataset(split=..., image_size=...)`` for "train" and "val".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from rcdm_lab.errors import RCDMError

FACTOR_KINDS = ("class", "continuous")
REQUIRED_METHODS = ("__len__", "__getitem__", "fingerprint")
_FIX = "see rcdm_lab/data/base.py (RCDMDataset) or README 'Add a dataset'"


class RCDMDataset(Dataset):
    """Base class of rcdm_lab's datasets: subclass it and define __len__, __getitem__ and fingerprint."""

    factor_kinds: ClassVar[Mapping[str, str]] = {}
    # Derived from factor_kinds for every subclass (one declaration, so the two cannot disagree).
    factor_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = {name: kind for name, kind in cls.factor_kinds.items() if kind not in FACTOR_KINDS}
        if unknown:
            raise RCDMError(f"{cls.__name__}.factor_kinds has unknown kinds {unknown}: each factor is one of "
                            f"{', '.join(FACTOR_KINDS)}")
        cls.factor_names = tuple(cls.factor_kinds)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def labels(self, index: int) -> dict[str, Tensor]:
        """The labels of item `index` ({} without labelled factors); the default decodes the item to get them."""
        return dict(self[index].get("labels", {}))

    def class_names(self, factor: str) -> tuple[str, ...]:
        raise RCDMError(f"{type(self).__name__} declares no class names for factor {factor!r}: define "
                        f"class_names(factor) returning one name per class index ({_FIX})")

    def num_classes(self, factor: str) -> int:
        return len(self.class_names(factor))


def check_dataset(dataset: Any, where: str) -> RCDMDataset:
    """`dataset` if it keeps the contract; otherwise one error naming what is missing and how to add it."""
    if isinstance(dataset, RCDMDataset):
        missing = [name for name in REQUIRED_METHODS if getattr(type(dataset), name) is getattr(RCDMDataset, name)]
    else:
        missing = ["the RCDMDataset base class"]
    if missing:
        raise RCDMError(f"{where} built a {type(dataset).__name__}, which lacks {', '.join(missing)}: "
                        f"subclass rcdm_lab.data.RCDMDataset and define __len__, __getitem__ and fingerprint "
                        f"({_FIX})")
    return dataset
