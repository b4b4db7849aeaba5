"""Lightning data module: (x0, h) training pairs of a dataset, from its representation cache or computed live."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rcdm_lab.data.base import RCDMDataset, check_dataset
from rcdm_lab.data.cache import RepresentationCache, cache_key
from rcdm_lab.data.representations import RepresentationSource, TrainingItems, add_live_representations
from rcdm_lab.errors import RCDMError

SPLITS = ("train", "val")


def cache_build_workers(num_workers: int, device: torch.device) -> int:
    """DataLoader workers for building a cache: on a CPU, only the cores the encoder's threads leave free.

    Decoding workers and oneDNN's threads on the same cores slow the encoder down far more than decoding costs:
    on 2 cores (2 torch threads), ResNet-50 at 224 px over 256 JPEGs built at 10.7 encodings/s with 2 workers and
    18.2/s with none, against 19.5/s for the bare forward (benchmarks/bench.py). A GPU encoder leaves the cores free.
    """
    if device.type != "cpu":
        return num_workers
    return max(0, min(num_workers, (os.cpu_count() or 1) - torch.get_num_threads()))


class RCDMDataModule(L.LightningDataModule):
    """Batches {"x0": (B, 3, R, R) in [-1, 1], "h": (B, D) float32, "labels", "index": (B,), "flipped": (B,)}.

    `dataset` is called as dataset(split=..., image_size=source_size) for "train" and "val" and must return an
    RCDMDataset (rcdm_lab/data/base.py). With cache=True both splits' representations (and images at
    `resolution`) are computed once in prepare_data; with cache=False each batch carries the source image and
    on_after_batch_transfer computes h on its device. `source(split)` gives either to every other reader.
    """

    def __init__(
        self,
        dataset: Callable[..., RCDMDataset],
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
        self._encode_device: torch.device | None = None
        self._source_size = source_size
        self._datasets: dict[str, RCDMDataset] = {}
        self._items: dict[str, TrainingItems] = {}

    # ------------------------------------------------------------------------------------------------ wiring
    def attach_encoder(self, encoder: nn.Module, device: torch.device | str | None = None) -> None:
        """The frozen encoder, and where it runs outside trainer.fit (None: CUDA when available).

        Inside trainer.fit it always runs on the strategy's device; a TrainedRun passes its pipeline's device, so
        representations are computed where the model samples.
        """
        self.encoder = encoder
        self._encode_device = None if device is None else torch.device(device)
        if hasattr(encoder, "attach_data"):  # the encoder=factors oracle encodes this module's items by their labels
            encoder.attach_data(self.dataset)

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

    def dataset(self, split: str) -> RCDMDataset:
        """The source dataset of `split`, built once per process."""
        if split not in self._datasets:
            if self._source_size is not None and self._source_size < self.resolution:
                warnings.warn(
                    f"data.source_size={self._source_size} is below resolution={self.resolution}: "
                    "training images are upsampled (blurry)",
                    stacklevel=2,
                )
            dataset = check_dataset(self.dataset_factory(split=split, image_size=self.source_size), "data.dataset")
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
        if self._encode_device is not None:
            return self._encode_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # -------------------------------------------------------------------------------------- lightning hooks
    def prepare_data(self) -> None:
        # Lightning calls this on one process per node while the others wait: one rank builds, the rest open.
        if not self.cache:
            return
        encoder = self._require_encoder()
        device = self._build_device()
        workers = cache_build_workers(self.num_workers, device)
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
                num_workers=workers,
                device=device,
                meta=meta,
                resolution=self.resolution,
                flips=self.flips(split),
            )

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self._items:
                self._items[split] = TrainingItems(self.source(split), self.flips(split))

    def source(self, split: str) -> RepresentationSource:
        """h, x0 and labels of `split`'s items: from the representation cache with cache=True, else live."""
        cache = RepresentationCache.open(self.cache_dir, self.cache_key(split)) if self.cache else None
        return RepresentationSource(self.dataset(split), self.encoder, self.resolution, cache,
                                    self._build_device(), self.cache_batch_size)

    def _split_items(self, split: str) -> TrainingItems:
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

    def _loader(self, items: TrainingItems, batch_size: int, shuffle: bool) -> DataLoader:
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

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Without a cache, replace the source image by its representation, so the model always sees h."""
        return add_live_representations(batch, self._require_encoder())

    # ------------------------------------------------------------------------------------- for other parts
    def representation_stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of training h: from the cache, else from <= 2048 images."""
        return self.source("train").stats()

    def val_items(self, n: int) -> dict[str, Tensor]:
        """The first n validation items as one batch {"x0", "h", "image", "labels", "index"}, unflipped."""
        indices = list(range(min(int(n), len(self.dataset("val")))))
        if not indices:
            raise ValueError(f"val_items needs n >= 1, got {n}")
        return self.source("val").items(indices)
