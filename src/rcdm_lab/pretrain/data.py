"""The images rcdm-pretrain trains on: a split rendered once into a uint8 tensor, served as augmented views.

The dataset comes from the ``data`` config group, built as ``dataset(split=..., image_size=...)`` like
:class:`rcdm_lab.data.RCDMDataModule` builds it (no representation cache: there is no frozen encoder yet).
Batches are ``{"views": (B, V, 3, S, S) float in [0, 1], "label": (B,) long (-1 without a target), "index": (B,)}``.
Shuffling and every augmentation are seeded by ``(seed, epoch[, index, view])``: no worker count or resume changes
what a step sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rcdm_lab.data.base import RCDMDataset, check_dataset
from rcdm_lab.errors import RCDMError
from rcdm_lab.pretrain.augment import AugmentSettings, TwoViews
from rcdm_lab.resize import quantise
from rcdm_lab.training.randomness import mixed_seed

SPLITS = ("train", "val")


class EpochShuffle(Sampler):
    """A permutation of range(n) per epoch, seeded by (seed, epoch); yields (epoch, index) pairs.

    Lightning calls ``set_epoch`` before each training epoch (also after a resume), so the items know their epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch, 1))
        for index in torch.randperm(self.n, generator=generator).tolist():
            yield self.epoch, index


class ViewsDataset(Dataset):
    """Item (epoch, index) -> {"views", "label", "index"} from pre-rendered uint8 images."""

    def __init__(self, images: Tensor, labels: Tensor, views: TwoViews) -> None:
        self.images, self.labels, self.views = images, labels, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, index = item
        image = self.images[index].float().div_(255.0)
        return {"views": self.views(image, epoch, index), "label": self.labels[index], "index": index}


def render_split(dataset: RCDMDataset) -> Tensor:
    """Every image of ``dataset`` as one (N, 3, S, S) uint8 tensor."""
    return torch.stack([quantise(dataset[i]["image"]) for i in range(len(dataset))])


def class_factors(dataset: RCDMDataset) -> list[str]:
    return [name for name, kind in dataset.factor_kinds.items() if kind == "class"]


def check_target(dataset: RCDMDataset, target: str) -> tuple[str, ...]:
    """The class names of the labelled class factor ``target``; RCDMError naming the dataset's class factors."""
    factors = class_factors(dataset)
    if target not in factors:
        available = f"its class factors: {', '.join(factors)}" if factors else "it has no labelled class factors " \
            "(use an SSL method: method=simclr|vicreg|barlow)"
        raise RCDMError(f"method.target={target!r} is not a labelled class factor of {type(dataset).__name__}; "
                        f"{available}")
    return tuple(str(name) for name in dataset.class_names(target))


class PretrainDataModule(L.LightningDataModule):
    """Both splits rendered once at ``image_size``; the training split served as ``views`` augmentations each."""

    def __init__(self, dataset: Callable[..., RCDMDataset], image_size: int, batch_size: int,
                 augment: AugmentSettings, views: int = 2, target: str | None = None, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 2:
            raise RCDMError(f"batch_size={batch_size} is not allowed: use an integer >= 2 (batch statistics)")
        self.dataset_factory = dataset
        self.image_size, self.batch_size, self.views = int(image_size), int(batch_size), int(views)
        self.augment, self.target, self.seed, self.num_workers = augment, target, int(seed), int(num_workers)
        self._datasets: dict[str, RCDMDataset] = {}
        self._images: dict[str, Tensor] = {}
        self.class_names: tuple[str, ...] | None = None

    def dataset(self, split: str) -> RCDMDataset:
        if split not in self._datasets:
            dataset = check_dataset(self.dataset_factory(split=split, image_size=self.image_size), "data.dataset")
            if len(dataset) == 0:
                raise RCDMError(f"the {split} dataset is empty: check the data.dataset settings")
            self._datasets[split] = dataset
        return self._datasets[split]

    def check(self) -> None:
        """Fail before any rendering: the target factor exists, there is at least one training batch."""
        train = self.dataset("train")
        if self.target is not None:
            self.class_names = check_target(train, self.target)
        if len(train) < self.batch_size:
            raise RCDMError(f"the training set has {len(train)} items, fewer than batch_size={self.batch_size}: "
                            "lower batch_size or add training images")

    def images(self, split: str) -> Tensor:
        """(N, 3, S, S) uint8 images of ``split``, rendered once."""
        if split not in self._images:
            images = render_split(self.dataset(split))
            if images.shape[-2:] != (self.image_size, self.image_size):
                raise RCDMError(f"data.dataset gave {tuple(images.shape[-2:])} images for image_size="
                                f"{self.image_size}; datasets must return image_size x image_size images")
            self._images[split] = images
        return self._images[split]

    def labels(self, split: str) -> Tensor:
        dataset = self.dataset(split)
        if self.target is None:
            return torch.full((len(dataset),), -1, dtype=torch.long)
        return torch.stack([dataset.labels(i)[self.target] for i in range(len(dataset))]).long()

    def pixel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training images in [0, 1] (the encoder's input normalisation)."""
        images = self.images("train")
        channels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255.0
        mean, std = channels.mean(dim=1), channels.std(dim=1)
        return mean.float(), std.clamp_min(1e-3).float()

    def steps_per_epoch(self) -> int:
        return len(self.dataset("train")) // self.batch_size

    def fingerprint(self) -> dict[str, Any]:
        train = self.dataset("train")
        return {"name": type(train).__name__, "fingerprint": train.fingerprint(), "num_train": len(train)}

    def setup(self, stage: str | None = None) -> None:
        self.check()
        self.images("train")

    def train_dataloader(self) -> DataLoader:
        views = TwoViews(self.augment, self.image_size, self.views, self.seed)
        items = ViewsDataset(self.images("train"), self.labels("train"), views)
        return DataLoader(items, batch_size=self.batch_size, sampler=EpochShuffle(len(items), self.seed),
                          drop_last=True, num_workers=self.num_workers, persistent_workers=False)
