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
from rcdm_lab.data.cache import RepresentationCache, cache_key, storage_dtype, unreadable_warning
from rcdm_lab.data.cache_shards import RankGroup
from rcdm_lab.data.representations import (
    RepresentationSource,
    TrainingItems,
    add_live_representations,
    collate_training_items,
)
from rcdm_lab.errors import RCDMError

SPLITS = ("train", "val")


def dataloader_workers(num_workers: int, device: torch.device) -> int:
    """DataLoader workers for a loop computing on `device`: on a CPU, only the cores torch's threads leave free.

    Workers and oneDNN's threads on the same cores slow the computation down far more than loading costs: on 2 cores
    (2 torch threads), ResNet-50 at 224 px over 256 JPEGs built its cache at 10.7 encodings/s with 2 workers and
    18.2/s with none, against 19.5/s for the bare forward (benchmarks/bench.py); cached training items loaded at
    1250 img/s in the training process against 968 img/s through 2 workers (benchmarks/loop_stalls.py), for a CPU
    training step that consumes ~50 img/s. A GPU leaves the cores free, so it gets the workers asked for.
    """
    if device.type != "cpu":
        return num_workers
    return max(0, min(num_workers, (os.cpu_count() or 1) - torch.get_num_threads()))


class RCDMDataModule(L.LightningDataModule):
    """Batches {"x0": (B, 3, R, R) in [-1, 1], "h": (B, D) float32, "labels", "index": (B,), "flipped": (B,)}.

    `dataset` is called as dataset(split=..., image_size=source_size) for "train" and "val" and must return an
    RCDMDataset (rcdm_lab/data/base.py). With cache=True both splits' representations (and images at
    `resolution`) are computed once: in prepare_data by one process, or, under a trainer with several ranks, in
    setup by every rank, each encoding its own shard (rcdm_lab/data/cache.py says on which filesystems);
    `cache_dtype="float16"` stores them in half the disk. With cache=False each batch carries the source image and
    on_after_batch_transfer computes h on its device; unreadable images are then skipped and named in one warning
    at the end of each training epoch. `source(split)` gives either to every other reader.
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
        cache_dtype: str = "float32",
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
        storage_dtype(cache_dtype)
        self.cache_dtype = str(cache_dtype)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.encoder = encoder
        self._encode_device: torch.device | None = None
        self._source_size = source_size
        self._datasets: dict[str, RCDMDataset] = {}
        self._items: dict[str, TrainingItems] = {}
        self._unreadable_seen: dict[str, str] = {}   # live batches' skipped files since the last report

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
        return cache_key(encoder_identity, self.dataset(split).fingerprint(), self.resolution, self.flips(split),
                         self.cache_dtype)

    def _build_device(self) -> torch.device:
        # Inside trainer.fit the strategy already chose this process's device (e.g. the right GPU under DDP).
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        if self._encode_device is not None:
            return self._encode_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # -------------------------------------------------------------------------------------- lightning hooks
    def _every_rank_builds(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node while the others wait; with several ranks the build waits
        # for setup, where every rank encodes its shard (world size 1 and no trainer: built here, as always).
        if self.cache and not self._every_rank_builds():
            self.build_caches(RankGroup())

    def build_caches(self, ranks: RankGroup) -> None:
        """Build (or resume, or just open) both splits' caches, sharing the work between `ranks`."""
        encoder = self._require_encoder()
        device = self._build_device()
        workers = dataloader_workers(self.num_workers, device)
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
                dtype=self.cache_dtype,
                ranks=ranks,
            )

    def setup(self, stage: str | None = None) -> None:
        if self.cache and self._every_rank_builds():
            self.build_caches(RankGroup.of_strategy(self.trainer.strategy))
        if self.trainer is not None and not self.cache and not any(
                isinstance(callback, _ReportUnreadable) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(_ReportUnreadable(self))
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
        # No sampler here: under DDP Lightning inserts a DistributedSampler itself. Persistent workers keep their
        # memory maps and do not restart every epoch; pinned memory lets the copy to the GPU run asynchronously.
        workers = dataloader_workers(self.num_workers, self._build_device())
        return DataLoader(
            items,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._build_device().type == "cuda",
            collate_fn=collate_training_items,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Without a cache, replace the source image by its representation, so the model always sees h."""
        self._unreadable_seen.update(batch.pop("unreadable", ()))
        return add_live_representations(batch, self._require_encoder())

    def report_unreadable(self, where: str) -> None:
        """One warning naming the files live batches skipped since the last report (none: no warning)."""
        if self._unreadable_seen:
            warnings.warn(unreadable_warning(sorted(self._unreadable_seen.items()), where), stacklevel=2)
            self._unreadable_seen = {}

    # ------------------------------------------------------------------------------------- for other parts
    def representation_stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of training h: from the cache, else from <= 2048 images."""
        return self.source("train").stats()

    def val_items(self, n: int) -> dict[str, Tensor]:
        """The first n validation items as one batch {"x0", "h", "image", "labels", "index"}, unflipped."""
        source = self.source("val")
        indices = source.readable_indices()[: max(int(n), 0)].tolist()
        if not indices:
            raise ValueError(f"val_items needs n >= 1, got {n}")
        return source.items(indices)


class _ReportUnreadable(L.Callback):
    """Live batches skip unreadable images as they meet them; this names them once at the end of each epoch."""

    def __init__(self, datamodule: RCDMDataModule) -> None:
        self.datamodule = datamodule

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.datamodule.report_unreadable(f"in training epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.datamodule.report_unreadable("after the last training epoch")
