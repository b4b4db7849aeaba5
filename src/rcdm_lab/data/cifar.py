"""CIFAR-10 (torchvision's python version) in the common item format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.data.folder import to_tensor
from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import resize_and_center_crop_pil

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# CIFAR has no validation split; its test set plays that role.
_TRAIN_FLAGS = {"train": True, "val": False, "test": False}


def _load_torchvision_cifar10(root: Path, train: bool, download: bool):
    from torchvision.datasets import CIFAR10

    try:
        return CIFAR10(str(root), train=train, download=download)
    except (OSError, RuntimeError) as error:
        raise RCDMError(
            "could not download CIFAR-10 (offline?). Put the python version under "
            f"{root / 'cifar-10-batches-py'}, or train on local images with "
            "data=folder data.dataset.root=/path/to/images"
        ) from error


NATIVE_SIZE = 32


class Cifar10Dataset(RCDMDataset):
    """Items: {"image": (3, S, S) in [0, 1], "labels": {"class": LongTensor}}; split "val" is the test set.

    S = min(image_size, 32): the 32 px images are never upsampled here. The encoder resizes to its own input size
    by itself, so a 32 px model's diffusion target stays CIFAR's own pixels (upsampling to 224 and back changed
    88 % of them, by up to 34 levels, and made FID incomparable with the standard CIFAR statistics).
    """

    factor_kinds = {"class": "class"}

    def __init__(
        self,
        root: str | Path = "data/cifar10",
        split: str = "train",
        image_size: int = 32,
        download: bool = True,
    ) -> None:
        if split not in _TRAIN_FLAGS:
            raise RCDMError(f"CIFAR-10 split must be one of {sorted(_TRAIN_FLAGS)}, got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = min(int(image_size), NATIVE_SIZE)
        cifar = _load_torchvision_cifar10(self.root, _TRAIN_FLAGS[split], download)
        self.data = cifar.data  # (N, 32, 32, 3) uint8
        self.targets: list[int] = list(cifar.targets)
        self.classes = CIFAR10_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def labels(self, index: int) -> dict[str, Tensor]:
        return {"class": torch.tensor(self.targets[index], dtype=torch.long)}

    def class_names(self, factor: str = "class") -> tuple[str, ...]:
        if factor != "class":
            raise KeyError(f"CIFAR-10 has only the 'class' factor, not {factor!r}")
        return CIFAR10_CLASSES

    def __getitem__(self, index: int) -> dict:
        image = resize_and_center_crop_pil(Image.fromarray(self.data[index]), self.image_size)
        return {"image": to_tensor(image), "labels": self.labels(index)}

    def fingerprint(self) -> str:
        recipe = {
            "dataset": "cifar10",
            "split": "train" if _TRAIN_FLAGS[self.split] else "test",
            "image_size": self.image_size,
            "num_items": len(self),
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
