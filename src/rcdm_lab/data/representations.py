"""h (and x0) of item i of a split, cached or live: the one place that chooses between the two.

With a representation cache, h and the image at the diffusion resolution are read from it (no decoding, no
encoder); without one, items are decoded and encoded on the spot. Both paths give the same numbers (the cache
stores exactly what the live path computes), so callers -- training batches, previews, TrainedRun, probes,
metrics -- never branch on which one they got.

Unreadable images never reach a batch: the cache lists them (unreadable.json) and TrainingItems leaves their rows
out; live, an item whose file raises UnreadableImageError is replaced by the next readable one and named in the
batch's "unreadable" entry, which the data module collects and reports once per epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.data.cache import RepresentationCache, encoder_on, module_device
from rcdm_lab.errors import RCDMError, UnreadableImageError
from rcdm_lab.resize import to_x0, uint8_to_x0

# Statistics of h without a cache encode at most this many items.
STATS_MAX_ITEMS = 2048


def mirror(image: Tensor) -> Tensor:
    """Horizontal flip of a (C, H, W) CPU tensor (numpy: no thread pool for one item)."""
    return torch.from_numpy(np.ascontiguousarray(image.numpy()[..., ::-1]))


class RepresentationSource:
    """The representations, diffusion targets and labels of one split's items, from `cache` when given, else live.

    `encoder` is f (needed live only); `device` is where live items are encoded (the encoder is put back after);
    `batch_size` is how many items one live encoder call takes.
    """

    def __init__(self, dataset: RCDMDataset, encoder: nn.Module | None, resolution: int,
                 cache: RepresentationCache | None, device: torch.device, batch_size: int) -> None:
        self.dataset, self.encoder, self.resolution = dataset, encoder, int(resolution)
        self.cache, self.device, self.batch_size = cache, device, int(batch_size)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers only read items, which never need f: do not copy the encoder into every worker.
        return {**self.__dict__, "encoder": None}

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def __len__(self) -> int:
        return len(self.dataset)

    def readable_indices(self) -> np.ndarray:
        """Items known to decode: all but the cache's unreadable rows (live, every item: found when decoded)."""
        return self.cache.readable_indices() if self.cached else np.arange(len(self.dataset))

    # ------------------------------------------------------------------------------------------- per item
    def training_item(self, index: int, flipped: bool) -> dict[str, Any]:
        """{"x0", "labels", "index", "flipped"} and "h" (cached) or the source "image" (live; h is added per batch
        on the batch's device by `add_live_representations`), mirrored when `flipped`."""
        if self.cached:
            return {"x0": uint8_to_x0(self.cache.get_image(index, flipped)), "h": self.cache.get(index, flipped),
                    "labels": self.dataset.labels(index), "index": index, "flipped": flipped}
        item = self.dataset[index]
        image, x0 = item["image"], to_x0(item["image"], self.resolution)
        if flipped:
            image, x0 = mirror(image), mirror(x0)
        return {"x0": x0, "image": image, "labels": item.get("labels", {}), "index": index, "flipped": flipped}

    def _x0(self, index: int, image: Tensor | None = None) -> Tensor:
        """(3, R, R) unflipped diffusion target in [-1, 1]; `image` is item `index`'s source image if decoded."""
        if self.cached and self.cache.has_images:
            return uint8_to_x0(self.cache.get_image(index, False))
        return to_x0(self.dataset[index]["image"] if image is None else image, self.resolution)

    # ------------------------------------------------------------------------------------------- batches
    def encode(self, images: Tensor) -> Tensor:
        """(B, D) float32 h of source images (B, 3, S, S), on the CPU, in encoder calls of batch_size."""
        with self._encoder_ready():
            return self._encode_here(images)

    def _encoder_ready(self) -> contextlib.AbstractContextManager:
        """The encoder on this source's device, without autograd (moved back afterwards)."""
        if self.encoder is None:
            raise RuntimeError("this representation source has no encoder: give it one to encode live items")
        stack = contextlib.ExitStack()
        stack.enter_context(encoder_on(self.encoder, self.device))
        stack.enter_context(torch.no_grad())
        return stack

    def _encode_here(self, images: Tensor) -> Tensor:
        chunks = [self.encoder(images[i:i + self.batch_size].to(self.device)).float().cpu()
                  for i in range(0, len(images), self.batch_size)]
        return torch.cat(chunks)

    def representations(self, indices: Sequence[int] | None = None) -> Tensor:
        """(n, D) float32 h of the unflipped items `indices` (None: every item), on the CPU."""
        if self.cached:
            rows = self.cache.reps[:, 0] if indices is None else self.cache.reps[[int(i) for i in indices], 0]
            return torch.from_numpy(np.array(rows, dtype=np.float32))  # a copy: the memmap is read-only
        indices = range(len(self.dataset)) if indices is None else [int(i) for i in indices]
        chunks = []
        with self._encoder_ready():  # moved to its device once for the whole split, not once per chunk
            for start in range(0, len(indices), self.batch_size):
                images = torch.stack([self.dataset[i]["image"] for i in indices[start:start + self.batch_size]])
                chunks.append(self._encode_here(images))
        return torch.cat(chunks)

    def diffusion_targets(self, indices: Sequence[int]) -> Tensor:
        """(n, 3, R, R) unflipped images in [-1, 1] at the model's resolution, as the UNet is trained on them."""
        return torch.stack([self._x0(int(i)) for i in indices])

    def items(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The unflipped items as one batch {"x0", "h", "image", "labels", "index"}."""
        indices = [int(i) for i in indices]
        decoded = [self.dataset[i] for i in indices]
        images = torch.stack([item["image"] for item in decoded])
        x0 = torch.stack([self._x0(i, image) for i, image in zip(indices, images, strict=True)])
        h = self.representations(indices) if self.cached else self.encode(images)
        labels = default_collate([item.get("labels", {}) for item in decoded])
        return {"x0": x0, "h": h, "image": images, "labels": labels, "index": torch.tensor(indices)}

    def stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of h: every cached row, else <= STATS_MAX_ITEMS items."""
        if self.cached:
            return self.cache.stats()
        count = min(len(self.dataset), STATS_MAX_ITEMS)
        # Evenly spaced, so a folder sorted by class contributes every class.
        indices = np.unique(np.linspace(0, len(self.dataset) - 1, count).round().astype(int)).tolist()
        h = self.representations(_decodable(self.dataset, indices)).double()
        std = h.std(dim=0) if len(h) > 1 else torch.zeros(h.shape[1], dtype=h.dtype)
        return h.mean(dim=0).float(), std.float()


def _decodable(dataset: RCDMDataset, indices: list[int]) -> list[int]:
    """`indices` without the items whose image cannot be decoded (each is decoded once more when encoded)."""
    readable = []
    for index in indices:
        with contextlib.suppress(UnreadableImageError):
            dataset[index]
            readable.append(index)
    if not readable:
        raise RCDMError("no image of this split can be decoded: check the dataset's files (`rcdm-scan ROOT`)")
    return readable


def _coin_flip(enabled: bool) -> bool:
    return enabled and bool(torch.rand(()) < 0.5)


class TrainingItems(Dataset):
    """A split's readable items for a DataLoader, each flipped with probability 1/2 when `random_flip`.

    Position i is the i-th readable item (batch["index"] stays the dataset's index). A live item that turns out
    unreadable is replaced by the next readable position, so batches keep their size; the skipped files travel in
    the item's "unreadable" list ((relative path, reason) each) for `collate_training_items`.
    """

    def __init__(self, source: RepresentationSource, random_flip: bool) -> None:
        self.source, self.random_flip = source, random_flip
        self.indices = source.readable_indices()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        skipped = []
        for attempt in range(len(self.indices)):
            index = int(self.indices[(position + attempt) % len(self.indices)])
            try:
                item = self.source.training_item(index, _coin_flip(self.random_flip))
            except UnreadableImageError as error:
                skipped.append((error.relative_path, error.reason))
                continue
            if skipped:
                item["unreadable"] = skipped
            return item
        raise RCDMError("no image of this split can be decoded: check the dataset's files (`rcdm-scan ROOT`)")


def collate_training_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate of TrainingItems, with the files skipped for this batch (if any) as batch["unreadable"]."""
    skipped = [entry for item in items for entry in item.pop("unreadable", ())]
    batch = default_collate(items)
    if skipped:
        batch["unreadable"] = skipped
    return batch


def add_live_representations(batch: dict[str, Any], encoder: nn.Module) -> dict[str, Any]:
    """A batch of live items gets h = f(image) on its own device (the image is dropped); cached batches pass."""
    if "image" in batch and "h" not in batch:
        images = batch.pop("image")
        if module_device(encoder) != images.device:
            encoder.to(images.device)  # once: the encoder then stays with the batches
        with torch.no_grad():
            batch["h"] = encoder(images).float()
    return batch
