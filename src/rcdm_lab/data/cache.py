"""On-disk, memory-mapped cache of a frozen encoder's representations (and flips) of a dataset.

A frozen encoder's h = f(x) never changes, so it is computed once per image and, where training flips images, per
horizontal flip. The same pass can store the image at the diffusion resolution (uint8), so a training batch decodes
nothing. Layout of root/<key>/: reps.npy (N, 2, D) float32 ((N, 1, D) without flips), [images.npy (N, 3, R, R)
uint8], meta.json, progress.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import quantise, resize_to_resolution

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; concurrent builds of one key are the user's problem
    fcntl = None

# Bump when the layout or the way images are prepared for the encoder changes: it is part of every key.
CACHE_FORMAT_VERSION = 1
_STATS_CHUNK_ROWS = 4096


def cache_key(encoder_identity: dict, dataset_fingerprint: str, resolution: int, flips: bool = True) -> str:
    """Short hex digest of everything that determines the cache's contents."""
    recipe = {
        "format": CACHE_FORMAT_VERSION,
        "encoder": encoder_identity,
        "dataset": dataset_fingerprint,
        "resolution": int(resolution),
    }
    if not flips:  # only then, so caches with flips keep the keys they were built under
        recipe["flips"] = False
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_for_cache(images01: Tensor, encoder: nn.Module, flips: bool = True) -> Tensor:
    """(B, 2, D) float32: h of each image and of its horizontal flip, in one encoder call; (B, 1, D) without flips."""
    batch, dim, views = images01.shape[0], int(encoder.dim), 2 if flips else 1
    # The encoder resizes to its own input size, exactly as it does when sampling from an arbitrary image.
    with torch.no_grad():
        h = encoder(torch.cat([images01, images01.flip(-1)]) if flips else images01).float()
    if h.shape != (views * batch, dim):
        raise RuntimeError(f"encoder returned shape {tuple(h.shape)}, expected {(views * batch, dim)}")
    return h.view(views, batch, -1).transpose(0, 1)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomically(path: Path, content: dict) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True, default=str))
    os.replace(temporary, path)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Two processes building the same key would interleave writes; the second waits for the first instead."""
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def module_device(module: nn.Module) -> torch.device:
    """Where the module's tensors live (CPU for a module without any)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def encoder_on(encoder: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the encoder in eval mode on `device`, then put it back as it was."""
    original_device, was_training = module_device(encoder), encoder.training
    encoder.to(device).eval()
    try:
        yield
    finally:
        encoder.train(was_training)
        encoder.to(original_device)


def _rows_done(directory: Path, num_items: int, dim: int, resolution: int | None, flips: bool) -> int:
    """Rows a previous, interrupted build of the same layout finished; 0 when there is nothing to resume."""
    progress, meta = _read_json(directory / "progress.json"), _read_json(directory / "meta.json")
    if progress is None or meta is None or not (directory / "reps.npy").exists():
        return 0
    layout = (meta.get("num_items"), meta.get("dim"), meta.get("resolution"), meta.get("flips", True))
    same_layout = layout == (num_items, dim, resolution, flips)
    if not same_layout or (resolution is not None and not (directory / "images.npy").exists()):
        return 0
    return int(np.clip(progress.get("rows_done", 0), 0, num_items))


class RepresentationCache:
    """(N, 2, D) float32 memmap: [:, 0] = h of the image, [:, 1] = h of its horizontal flip ((N, 1, D): no flips)."""

    def __init__(self, directory: Path) -> None:
        meta = _read_json(directory / "meta.json")
        if meta is None:
            raise RCDMError(f"representation cache {directory} has no readable meta.json: delete the folder")
        self.directory = directory
        self.meta: dict = meta
        self.num_items: int = int(meta["num_items"])
        self.dim: int = int(meta["dim"])
        self.resolution: int | None = meta.get("resolution")
        self.has_flips: bool = bool(meta.get("flips", True))
        self._reps: np.ndarray | None = None
        self._images: np.ndarray | None = None

    # Memmaps are opened lazily and never pickled, so DataLoader workers (fork or spawn) each map the file.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reps": None, "_images": None}

    @property
    def reps(self) -> np.ndarray:
        if self._reps is None:
            self._reps = np.load(self.directory / "reps.npy", mmap_mode="r")
        return self._reps

    @property
    def images(self) -> np.ndarray:
        if self.resolution is None:
            raise RuntimeError(f"representation cache {self.directory} stores no images")
        if self._images is None:
            self._images = np.load(self.directory / "images.npy", mmap_mode="r")
        return self._images

    @property
    def has_images(self) -> bool:
        return self.resolution is not None

    def __len__(self) -> int:
        return self.num_items

    def get(self, index: int, flipped: bool) -> Tensor:
        """(D,) float32 representation of item `index` (of its mirror image when `flipped`)."""
        if flipped and not self.has_flips:
            raise RuntimeError(f"representation cache {self.directory} was built without flipped images")
        return torch.from_numpy(np.array(self.reps[index, int(bool(flipped))]))

    def get_image(self, index: int, flipped: bool) -> Tensor:
        """(3, R, R) uint8 image of item `index` at the cache's resolution, mirrored when `flipped`."""
        image = self.images[index]
        return torch.from_numpy(np.array(image[..., ::-1] if flipped else image, order="C"))

    def stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of the unflipped rows, merged chunk by chunk in float64."""
        count, mean, m2 = 0, np.zeros(self.dim), np.zeros(self.dim)
        for start in range(0, self.num_items, _STATS_CHUNK_ROWS):
            chunk = np.asarray(self.reps[start : start + _STATS_CHUNK_ROWS, 0], dtype=np.float64)
            chunk_count, chunk_mean = len(chunk), chunk.mean(axis=0)
            chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=0)
            delta, total = chunk_mean - mean, count + chunk_count
            mean = mean + delta * chunk_count / total
            m2 = m2 + chunk_m2 + delta**2 * count * chunk_count / total
            count = total
        std = np.sqrt(m2 / (count - 1)) if count > 1 else np.zeros(self.dim)
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    @staticmethod
    def is_complete(root: Path | str, key: str) -> bool:
        progress = _read_json(Path(root) / key / "progress.json")
        return bool(progress and progress.get("complete"))

    @classmethod
    def open(cls, root: Path | str, key: str) -> RepresentationCache:
        """A complete cache; anything else is an error that says how to get one."""
        directory = Path(root) / key
        if not cls.is_complete(root, key):
            raise RCDMError(
                f"representation cache {directory} is missing or incomplete: build it first "
                "(RCDMDataModule.prepare_data() or RepresentationCache.build)"
            )
        return cls(directory)

    @classmethod
    def build(
        cls,
        root: Path | str,
        key: str,
        dataset: Dataset,
        encoder: nn.Module,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
        resolution: int | None = None,
        flips: bool = True,
    ) -> RepresentationCache:
        """Build, resume or just open the cache root/<key>; `resolution` also stores images resized to it.

        `flips=False` encodes only the images themselves (half the encoder passes), for splits never flipped.
        """
        directory = Path(root) / key
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(directory / ".lock"):
            if not cls.is_complete(root, key):
                options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress, flips=flips)
                _fill(directory, dataset, encoder, torch.device(device), meta, resolution, **options)
        return cls.open(root, key)


def _fill(
    directory: Path,
    dataset: Dataset,
    encoder: nn.Module,
    device: torch.device,
    meta: dict | None,
    resolution: int | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    flips: bool,
) -> None:
    """Encode the rows not done yet, recording progress after every batch."""
    num_items, dim = len(dataset), int(encoder.dim)
    if num_items == 0:
        raise RCDMError("cannot cache representations of an empty dataset: check the dataset settings")
    start = _rows_done(directory, num_items, dim, resolution, flips)
    if start == 0:
        # Reset progress before the arrays are recreated, so no crash can leave rows claimed but zeroed.
        _write_json_atomically(directory / "progress.json", {"rows_done": 0, "complete": False})
        record = {**(meta or {}), "num_items": num_items, "dim": dim, "resolution": resolution, "flips": flips}
        _write_json_atomically(directory / "meta.json", record)
    mode = "r+" if start > 0 else "w+"
    shape = (num_items, 2 if flips else 1, dim)
    reps = open_memmap(directory / "reps.npy", mode=mode, dtype=np.float32, shape=shape)
    images = None
    if resolution is not None:
        shape = (num_items, 3, resolution, resolution)
        images = open_memmap(directory / "images.npy", mode=mode, dtype=np.uint8, shape=shape)

    split = (meta or {}).get("split")
    description = "caching representations" + (f" ({split})" if split else "")
    loader = DataLoader(
        Subset(dataset, range(start, num_items)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    row = start
    bar = tqdm(total=num_items, initial=start, desc=description, disable=not progress)
    with encoder_on(encoder, device), bar:
        for batch in loader:
            pixels = batch["image"].to(device, torch.float32)
            h = encode_for_cache(pixels, encoder, flips)
            if not torch.isfinite(h).all():
                raise RuntimeError(f"encoder produced non-finite values for items {row}..{row + len(h) - 1}")
            reps[row : row + len(h)] = h.cpu().numpy()
            if images is not None:
                images[row : row + len(h)] = quantise(resize_to_resolution(pixels, resolution)).cpu().numpy()
                images.flush()
            # Rows are durable before progress claims them, so a crash can only lose the batch in flight.
            reps.flush()
            row += len(h)
            _write_json_atomically(directory / "progress.json", {"rows_done": row, "complete": False})
            bar.update(len(h))
    _write_json_atomically(directory / "progress.json", {"rows_done": row, "complete": True})
