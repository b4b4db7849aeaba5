"""Lightning data module: (x0, h) training pairs, h read from the representation cache or computed live."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from rcdm_lab.data.cache import RepresentationCache, cache_key, encoder_on, module_device, quantise, resize_images
from rcdm_lab.errors import RCDMError

SPLITS = ("train", "val")
# representation_stats without a cache encodes at most this many training images.
_STATS_MAX_IMAGES = 2048


def to_x0(image01: Tensor, resolution: int) -> Tensor:
    """A (3, S, S) image in [0, 1] -> the diffusion target (3, R, R) in [-1, 1], quantised like the cache."""
    return uint8_to_x0(quantise(resize_images(image01[None], resolution))[0])


def uint8_to_x0(image: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [-1, 1]."""
    # numpy, not torch: per-item torch ops spread over threads and crawl when the CPU is shared.
    return torch.from_numpy(image.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def labels_of(dataset: Dataset, index: int) -> dict[str, Tensor]:
    # Datasets with a `labels` method give them without decoding or rendering the image.
    labels = getattr(dataset, "labels", None)
    return labels(index) if callable(labels) else dataset[index]["labels"]


def mirror(image: Tensor) -> Tensor:
    """Horizontal flip of a (C, H, W) CPU tensor (numpy: no thread pool for one item)."""
    return torch.from_numpy(np.ascontiguousarray(image.numpy()[..., ::-1]))


def _coin_flip(enabled: bool) -> bool:
    return enabled and bool(torch.rand(()) < 0.5)


class CachedItems(Dataset):
    """Items read from a representation cache that stores images: no decoding and no encoder per batch."""

    def __init__(self, cache: RepresentationCache, dataset: Dataset, random_flip: bool) -> None:
        self.cache, self.dataset, self.random_flip = cache, dataset, random_flip

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        flipped = _coin_flip(self.random_flip)
        return {
            "x0": uint8_to_x0(self.cache.get_image(index, flipped)),
            "h": self.cache.get(index, flipped),
            "labels": labels_of(self.dataset, index),
            "index": index,
            "flipped": flipped,
        }


class LiveItems(Dataset):
    """Items decoded every time; h is computed later, on the batch's device (see on_after_batch_transfer)."""

    def __init__(self, dataset: Dataset, resolution: int, random_flip: bool) -> None:
        self.dataset, self.resolution, self.random_flip = dataset, resolution, random_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        image, x0 = item["image"], to_x0(item["image"], self.resolution)
        flipped = _coin_flip(self.random_flip)
        if flipped:
            image, x0 = mirror(image), mirror(x0)
        return {"x0": x0, "image": image, "labels": item["labels"], "index": index, "flipped": flipped}


class RCDMDataModule(L.LightningDataModule):
    """Batches {"x0": (B, 3, R, R) in [-1, 1], "h": (B, D) float32, "labels", "index": (B,), "flipped": (B,)}.

    `dataset` is called as dataset(split=..., image_size=source_size) for "train" and "val". With cache=True
    both splits' representations (and images at `resolution`) are computed once in prepare_data; with
    cache=False each batch carries the source image and on_after_batch_transfer computes h on its device.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        flip: bool = True,
        cache: bool = True,
        cache_dir: str = ".cache/rcdm_lab",
        cache_batch_size: int = 64,
        val_batch_size: int | None = None,
        encoder: nn.Module | None = None,
        source_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or cache_batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise RCDMError("data.batch_size, data.cache_batch_size and data.val_batch_size must be >= 1")
        self.dataset_factory = dataset
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.flip = bool(flip)
        self.cache = bool(cache)
        self.cache_dir = Path(cache_dir)
        self.cache_batch_size = int(cache_batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.encoder = encoder
        self._source_size = source_size
        self._datasets: dict[str, Dataset] = {}
        self._items: dict[str, Dataset] = {}

    # ------------------------------------------------------------------------------------------------ wiring
    def attach_encoder(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    def _require_encoder(self) -> nn.Module:
        if self.encoder is None:
            raise RuntimeError(
                "RCDMDataModule has no encoder: pass encoder=... or call datamodule.attach_encoder(encoder)"
            )
        return self.encoder

    @property
    def source_size(self) -> int:
        """The size datasets render or crop to: big enough for both the diffusion model and the encoder."""
        if self._source_size is not None:
            return int(self._source_size)
        return max(self.resolution, int(self._require_encoder().input_size))

    def dataset(self, split: str) -> Dataset:
        """The source dataset of `split`, built once per process."""
        if split not in self._datasets:
            if self._source_size is not None and self._source_size < self.resolution:
                warnings.warn(
                    f"data.source_size={self._source_size} is below resolution={self.resolution}: "
                    "training images are upsampled (blurry)",
                    stacklevel=2,
                )
            dataset = self.dataset_factory(split=split, image_size=self.source_size)
            if len(dataset) == 0:
                raise RCDMError(f"the {split} dataset is empty: check the data.dataset settings")
            self._datasets[split] = dataset
        return self._datasets[split]

    def flips(self, split: str) -> bool:
        """Whether `split` is ever flipped (training with flip=True): only then are flipped images encoded."""
        return self.flip and split == "train"

    def cache_key(self, split: str) -> str:
        encoder_identity = self._require_encoder().identity()
        return cache_key(encoder_identity, self.dataset(split).fingerprint(), self.resolution, self.flips(split))

    def _build_device(self) -> torch.device:
        # Inside trainer.fit the strategy already chose this process's device (e.g. the right GPU under DDP).
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # -------------------------------------------------------------------------------------- lightning hooks
    def prepare_data(self) -> None:
        # Lightning calls this on one process per node while the others wait: one rank builds, the rest open.
        if not self.cache:
            return
        encoder = self._require_encoder()
        for split in SPLITS:
            dataset = self.dataset(split)
            meta = {
                "split": split,
                "encoder": encoder.identity(),
                "dataset_fingerprint": dataset.fingerprint(),
                "dataset": type(dataset).__name__,
                "source_size": self.source_size,
            }
            RepresentationCache.build(
                self.cache_dir,
                self.cache_key(split),
                dataset,
                encoder,
                batch_size=self.cache_batch_size,
                num_workers=self.num_workers,
                device=self._build_device(),
                meta=meta,
                resolution=self.resolution,
                flips=self.flips(split),
            )

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split in self._items:
                continue
            dataset, random_flip = self.dataset(split), self.flips(split)
            if self.cache:
                cache = RepresentationCache.open(self.cache_dir, self.cache_key(split))
                self._items[split] = CachedItems(cache, dataset, random_flip)
            else:
                self._items[split] = LiveItems(dataset, self.resolution, random_flip)

    def _split_items(self, split: str) -> Dataset:
        if split not in self._items:
            raise RuntimeError("call datamodule.prepare_data() and datamodule.setup() before asking for data")
        return self._items[split]

    def train_dataloader(self) -> DataLoader:
        items = self._split_items("train")
        if len(items) < self.batch_size:
            raise RCDMError(
                f"the training set has {len(items)} items, fewer than data.batch_size={self.batch_size}: "
                "lower data.batch_size or add training images"
            )
        return self._loader(items, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split_items("val"), self.val_batch_size, shuffle=False)

    def _loader(self, items: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # No sampler here: under DDP Lightning inserts a DistributedSampler itself.
        return DataLoader(
            items,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Without a cache, replace the source image by its representation, so the model always sees h."""
        if "image" in batch and "h" not in batch:
            images, encoder = batch.pop("image"), self._require_encoder()
            if module_device(encoder) != images.device:
                encoder.to(images.device)  # once: the encoder then stays with the batches
            with torch.no_grad():
                batch["h"] = encoder(images).float()
        return batch

    def _encode_outside_training(self, images: Tensor) -> Tensor:
        """h of a CPU batch on the build device, the encoder left where it was; returned on the CPU."""
        device = self._build_device()
        with encoder_on(self._require_encoder(), device), torch.no_grad():
            return self._require_encoder()(images.to(device)).float().cpu()

    # ------------------------------------------------------------------------------------- for other parts
    def representation_stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of training h: from the cache, else from <= 2048 images."""
        if self.cache:
            return RepresentationCache.open(self.cache_dir, self.cache_key("train")).stats()
        dataset = self.dataset("train")
        count = min(len(dataset), _STATS_MAX_IMAGES)
        # Evenly spaced, so a folder sorted by class contributes every class.
        indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)).tolist()
        h = []
        for start in range(0, len(indices), self.cache_batch_size):
            batch = torch.stack([dataset[i]["image"] for i in indices[start : start + self.cache_batch_size]])
            h.append(self._encode_outside_training(batch).double())
        h = torch.cat(h)
        std = h.std(dim=0) if len(h) > 1 else torch.zeros(h.shape[1], dtype=h.dtype)
        return h.mean(dim=0).float(), std.float()

    def val_items(self, n: int) -> dict:
        """The first n validation items as one batch {"x0", "h", "image", "labels", "index"}, unflipped."""
        dataset = self.dataset("val")
        indices = list(range(min(int(n), len(dataset))))
        if not indices:
            raise ValueError(f"val_items needs n >= 1, got {n}")
        items = [dataset[i] for i in indices]
        images = torch.stack([item["image"] for item in items])
        if self.cache:
            cache = RepresentationCache.open(self.cache_dir, self.cache_key("val"))
            x0 = torch.stack([uint8_to_x0(cache.get_image(i, False)) for i in indices])
            h = torch.stack([cache.get(i, False) for i in indices])
        else:
            x0 = torch.stack([to_x0(image, self.resolution) for image in images])
            h = self._encode_outside_training(images)
        labels = default_collate([item["labels"] for item in items])
        return {"x0": x0, "h": h, "image": images, "labels": labels, "index": torch.tensor(indices)}
