"""On-disk, memory-mapped cache of a frozen encoder's representations (and flips) of a dataset.

A frozen encoder's h = f(x) never changes, so it is computed once per image and, where training flips images, per
horizontal flip. The same pass can store the image at the diffusion resolution (uint8), so a training batch decodes
nothing. Layout of root/<key>/: reps.npy (N, 2, D) float32 ((N, 1, D) without flips; float16 with
cache_dtype="float16"), [images.npy (N, 3, R, R) uint8], meta.json, progress.json, [unreadable.json: the rows whose
image could not be decoded, left as zeros and never trained on].

Under DDP every rank encodes a disjoint shard of the rows into the same memory-mapped files. The shards are runs of
whole batches of the one-process build (rows [k * batch, (k + 1) * batch)), so every rank calls the encoder on exactly
the batches a single process would, and the files are the same bit for bit. Rank 0 creates the files and meta.json
(holding the build lock), a broadcast and a collective check follow, each rank then writes its rows and records
them in progress.rank<r>.json after every batch, and a final collective check lets rank 0 mark the cache complete.
A build killed on any rank resumes from every rank's progress file, with any number of ranks.

Which filesystems one shared memmap is safe on: every rank writes disjoint byte ranges of one file, but neighbouring
shards can share a page. That is safe where writes from different processes or clients are coherent at byte
granularity: one machine's local disk or tmpfs (one page cache), Lustre and GPFS/Spectrum Scale (distributed locks
keep clients coherent). It is NOT safe on NFS across nodes: NFS clients cache and write back whole pages, so two
nodes writing the two halves of one page can silently overwrite each other's rows (ranks on one node share its page
cache and are fine). On NFS, point data.cache_dir at a node-local disk (each node then builds its own complete copy
of the cache, e.g. in a job with one process per node, or copy a built cache folder to every node), or at Lustre/GPFS
scratch. When cache_dir is not one folder shared by every rank (e.g. a node-local path with ranks on several
nodes), the ranks notice right after rank 0 creates the files and all raise an RCDMError that names this fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rcdm_lab.data.cache_shards import (
    Intervals,
    RankGroup,
    batch_grid,
    done_prefix,
    merged_intervals,
    missing_rows,
    rank_shards,
)
from rcdm_lab.errors import RCDMError, UnreadableImageError
from rcdm_lab.resize import quantise, resize_to_resolution

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; concurrent builds of one key are the user's problem
    fcntl = None

# Bump when the layout or the way images are prepared for the encoder changes: it is part of every key.
CACHE_FORMAT_VERSION = 1
_STATS_CHUNK_ROWS = 4096
# How many unreadable files the end-of-build warning names (all of them are in unreadable.json).
_WARN_NAMES = 5
CACHE_DTYPES = ("float32", "float16")

def storage_dtype(name: str) -> np.dtype:
    """numpy dtype of the stored representations for data.cache_dtype `name`."""
    if str(name) not in CACHE_DTYPES:
        raise RCDMError(f"data.cache_dtype={name!r} is not supported: use float32 (exact) or float16 (half the disk)")
    return np.dtype(str(name))


def cache_key(encoder_identity: dict, dataset_fingerprint: str, resolution: int, flips: bool = True,
              dtype: str = "float32") -> str:
    """Short hex digest of everything that determines the cache's contents."""
    recipe = {
        "format": CACHE_FORMAT_VERSION,
        "encoder": encoder_identity,
        "dataset": dataset_fingerprint,
        "resolution": int(resolution),
    }
    if not flips:  # only then, so caches with flips keep the keys they were built under
        recipe["flips"] = False
    if storage_dtype(dtype) != np.float32:  # likewise: float32 caches keep their keys
        recipe["dtype"] = str(dtype)
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


# ------------------------------------------------------------------------------------------- row bookkeeping
def _progress_record(done: Intervals, unreadable: dict[int, tuple[str, str]]) -> dict:
    """progress.json: {"rows_done": n, "complete": false}, the rows [0, n) being done; only a build that did rows
    out of order (other ranks) adds "done" intervals, and only one that met unreadable images adds them."""
    record: dict[str, Any] = {"rows_done": done_prefix(done), "complete": False}
    if done and done != [(0, done_prefix(done))]:
        record["done"] = [list(interval) for interval in done]
    if unreadable:
        record["unreadable"] = {str(index): list(entry) for index, entry in sorted(unreadable.items())}
    return record


def _unreadable_of(record: dict) -> dict[int, tuple[str, str]]:
    return {int(index): (str(entry[0]), str(entry[1])) for index, entry in record.get("unreadable", {}).items()}


def _rank_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("progress.rank*.json"))


def _rank_file(directory: Path, rank: int) -> Path:
    return directory / f"progress.rank{rank}.json"


@dataclass(frozen=True)
class _Layout:
    num_items: int
    dim: int
    resolution: int | None
    flips: bool
    dtype: str

    def matches(self, meta: dict) -> bool:
        found = (meta.get("num_items"), meta.get("dim"), meta.get("resolution"), meta.get("flips", True),
                 meta.get("dtype", "float32"))
        return found == (self.num_items, self.dim, self.resolution, self.flips, self.dtype)

    def meta(self, extra: dict | None) -> dict:
        record = {**(extra or {}), "num_items": self.num_items, "dim": self.dim, "resolution": self.resolution,
                  "flips": self.flips}
        if self.dtype != "float32":  # float32 caches keep today's meta.json
            record["dtype"] = self.dtype
        return record


def _resume_state(directory: Path, layout: _Layout) -> tuple[Intervals, dict[int, tuple[str, str]]] | None:
    """Rows earlier, interrupted builds of the same layout finished (by any ranks) and the unreadable ones among
    them; None when there is nothing to resume (the files are then recreated)."""
    progress, meta = _read_json(directory / "progress.json"), _read_json(directory / "meta.json")
    if progress is None or meta is None or not (directory / "reps.npy").exists() or not layout.matches(meta):
        return None
    if layout.resolution is not None and not (directory / "images.npy").exists():
        return None
    records = [progress] + [record for path in _rank_files(directory) if (record := _read_json(path))]
    done = [(0, int(np.clip(progress.get("rows_done", 0), 0, layout.num_items)))]
    unreadable: dict[int, tuple[str, str]] = {}
    for record in records:
        done += [tuple(interval) for interval in record.get("done", [])]
        unreadable.update(_unreadable_of(record))
    done = merged_intervals([(max(0, a), min(layout.num_items, b)) for a, b in done])
    return done, {index: entry for index, entry in unreadable.items() if index < layout.num_items}


# ------------------------------------------------------------------------------------------- unreadable images
@dataclass(frozen=True)
class _Unreadable:
    relative_path: str
    reason: str


class _SkippingUnreadable(Dataset):
    """The dataset's images, with an _Unreadable marker in place of an image that cannot be decoded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor | _Unreadable:
        try:
            return self.dataset[index]["image"]
        except UnreadableImageError as error:
            return _Unreadable(error.relative_path, error.reason)


def _collate_readable(items: list[Tensor | _Unreadable]) -> dict[str, Any]:
    """{"image": (b, 3, S, S) of the readable items or None, "readable": their positions, "unreadable": the rest}."""
    readable = [position for position, item in enumerate(items) if not isinstance(item, _Unreadable)]
    unreadable = {position: item for position, item in enumerate(items) if isinstance(item, _Unreadable)}
    images = torch.stack([items[position] for position in readable]) if readable else None
    return {"image": images, "readable": readable, "unreadable": unreadable}


def unreadable_warning(entries: Sequence[tuple[str, str]], where: str) -> str:
    """One line naming how many images could not be read ((relative path, reason) each) and the first few."""
    named = ", ".join(f"{path} ({reason})" for path, reason in entries[:_WARN_NAMES])
    more = f" and {len(entries) - _WARN_NAMES} more" if len(entries) > _WARN_NAMES else ""
    return (f"{len(entries)} unreadable image(s) skipped {where}: {named}{more}. Replace or remove them "
            "(`rcdm-scan ROOT` lists every one)")


# ------------------------------------------------------------------------------------------- the cache
class RepresentationCache:
    """(N, 2, D) memmap: [:, 0] = h of the image, [:, 1] = h of its horizontal flip ((N, 1, D): no flips).

    Stored as float32 or float16 (meta "dtype"); every reader gets float32 tensors.
    """

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
        self.dtype: str = str(meta.get("dtype", "float32"))
        record = _read_json(directory / "unreadable.json") or {}
        self.unreadable: dict[int, tuple[str, str]] = {
            int(entry["index"]): (entry["relative_path"], entry["reason"]) for entry in record.get("items", [])}
        self._reps: np.ndarray | None = None
        self._images: np.ndarray | None = None

    # Memmaps are opened lazily and never pickled, so DataLoader workers (fork or spawn) each map the file.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reps": None, "_images": None}

    @property
    def reps(self) -> np.ndarray:
        """The stored rows, in the stored dtype (rows of unreadable images are zeros)."""
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

    def readable_indices(self) -> np.ndarray:
        """Indices of the items whose image was decoded (all of them unless unreadable.json names some)."""
        return np.setdiff1d(np.arange(self.num_items), np.fromiter(self.unreadable, dtype=np.int64, count=-1))

    def get(self, index: int, flipped: bool) -> Tensor:
        """(D,) float32 representation of item `index` (of its mirror image when `flipped`)."""
        if flipped and not self.has_flips:
            raise RuntimeError(f"representation cache {self.directory} was built without flipped images")
        return torch.from_numpy(np.array(self.reps[index, int(bool(flipped))], dtype=np.float32))

    def get_image(self, index: int, flipped: bool) -> Tensor:
        """(3, R, R) uint8 image of item `index` at the cache's resolution, mirrored when `flipped`."""
        image = self.images[index]
        return torch.from_numpy(np.array(image[..., ::-1] if flipped else image, order="C"))

    def stats(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and (unbiased) std of the unflipped readable rows, merged chunk by chunk in float64."""
        count, mean, m2 = 0, np.zeros(self.dim), np.zeros(self.dim)
        skipped = np.fromiter(self.unreadable, dtype=np.int64, count=-1)
        for start in range(0, self.num_items, _STATS_CHUNK_ROWS):
            chunk = np.asarray(self.reps[start : start + _STATS_CHUNK_ROWS, 0], dtype=np.float64)
            if len(skipped):
                keep = ~np.isin(np.arange(start, start + len(chunk)), skipped)
                chunk = chunk[keep]
            if len(chunk) == 0:
                continue
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
        dtype: str = "float32",
        ranks: RankGroup | None = None,
    ) -> RepresentationCache:
        """Build, resume or just open the cache root/<key>; `resolution` also stores images resized to it.

        `flips=False` encodes only the images themselves (half the encoder passes), for splits never flipped;
        `dtype="float16"` stores h in half the disk. With `ranks` (every process of the group calls build with the
        same arguments) each rank encodes its own shard of the rows: see the module docstring.
        Images that raise UnreadableImageError are skipped (zero rows, listed in unreadable.json, one warning).
        """
        storage_dtype(dtype)
        ranks = ranks or RankGroup()
        build = _Build(Path(root) / key, dataset, encoder, torch.device(device), meta, resolution, flips, str(dtype),
                       int(batch_size), int(num_workers), progress, ranks)
        if ranks.world_size == 1:
            build.directory.mkdir(parents=True, exist_ok=True)
            with _exclusive_lock(build.directory / ".lock"):
                if not cls.is_complete(root, key):
                    build.fill_alone()
        else:
            build.fill_together()
        return cls.open(root, key)


class _Build:
    """One build of one cache directory, by one process or by every rank of a group."""

    def __init__(self, directory: Path, dataset: Dataset, encoder: nn.Module, device: torch.device,
                 meta: dict | None, resolution: int | None, flips: bool, dtype: str, batch_size: int,
                 num_workers: int, progress: bool, ranks: RankGroup) -> None:
        self.directory, self.dataset, self.encoder, self.device = directory, dataset, encoder, device
        self.extra_meta, self.resolution, self.flips, self.dtype = meta, resolution, flips, dtype
        self.batch_size, self.num_workers, self.progress, self.ranks = batch_size, num_workers, progress, ranks

    def layout(self) -> _Layout:
        if len(self.dataset) == 0:
            raise RCDMError("cannot cache representations of an empty dataset: check the dataset settings")
        return _Layout(len(self.dataset), int(self.encoder.dim), self.resolution, self.flips, self.dtype)

    # ----------------------------------------------------------------------------------------- one process
    def fill_alone(self) -> None:
        """Encode the rows not done yet, recording progress in progress.json after every batch."""
        layout = self.layout()
        done, unreadable = self._start(layout)
        todo = batch_grid(missing_rows(done, layout.num_items), self.batch_size)

        def record(done_now: Intervals, unreadable_now: dict) -> None:
            _write_json_atomically(self.directory / "progress.json", _progress_record(done_now, unreadable_now))

        self._encode(layout, todo, done, unreadable, record, show_progress=self.progress)
        self._finish(layout)

    # ----------------------------------------------------------------------------------------- every rank
    def fill_together(self) -> None:
        ranks, rank0 = self.ranks, self.ranks.rank == 0
        with contextlib.ExitStack() as stack:
            if rank0:  # rank 0's lock keeps other jobs out; the other ranks follow rank 0 through collectives
                self.directory.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_exclusive_lock(self.directory / ".lock"))
            if ranks.all_true(RepresentationCache.is_complete(self.directory.parent, self.directory.name)):
                return
            build_id = self._collectively("preparing", self._plan if rank0 else lambda: None)
            mine = _read_json(_rank_file(self.directory, ranks.rank))
            if not ranks.all_true(mine is not None and mine.get("build") == build_id):
                raise RCDMError(
                    f"representation cache folder {self.directory} is not one folder shared by every rank (rank "
                    f"{ranks.rank} cannot see the files rank 0 just created): set data.cache_dir to a filesystem "
                    "every node mounts (Lustre, GPFS, local disk for one node), or build the cache once on each node "
                    "and copy it into each node's data.cache_dir")
            self._collectively("encoding", lambda: self._encode_shard(mine))
            self._collectively("finishing", lambda: self._finish(self.layout()) if rank0 else None)

    def _collectively(self, step: str, action: Callable[[], Any]) -> Any:
        """Run `action` on this rank, then agree: a failure on any rank raises on every rank, never a hang."""
        result, error = None, None
        try:
            result = action()
        except Exception as caught:  # noqa: BLE001 - re-raised below, after the other ranks were told
            error = caught
        if not self.ranks.all_true(error is None):
            if error is not None:
                raise error
            raise RuntimeError(f"another rank failed while {step} representation cache {self.directory}: see its "
                               "error; the rows already written are kept and the next build resumes them")
        return self.ranks.broadcast(result)

    def _plan(self) -> str:
        """Rank 0: create or reopen the files, record what is done, and give each rank its shard of the rest."""
        layout = self.layout()
        done, unreadable = self._start(layout)
        _write_json_atomically(self.directory / "progress.json", _progress_record(done, unreadable))
        for path in _rank_files(self.directory):  # their rows are in progress.json now
            path.unlink()
        build_id = uuid.uuid4().hex
        shards = rank_shards(batch_grid(missing_rows(done, layout.num_items), self.batch_size), self.ranks.world_size)
        for rank, shard in enumerate(shards):
            record = {"build": build_id, "assigned": [list(piece) for piece in shard], "done": []}
            _write_json_atomically(_rank_file(self.directory, rank), record)
        return build_id

    def _encode_shard(self, mine: dict) -> None:
        layout, path = self.layout(), _rank_file(self.directory, self.ranks.rank)
        assigned = [tuple(piece) for piece in mine["assigned"]]

        def record(done_now: Intervals, unreadable_now: dict) -> None:
            content = {**mine, "done": [list(interval) for interval in done_now]}
            if unreadable_now:
                content["unreadable"] = {str(index): list(entry) for index, entry in sorted(unreadable_now.items())}
            _write_json_atomically(path, content)

        self._encode(layout, assigned, [], {}, record, show_progress=self.progress and self.ranks.rank == 0)

    # ----------------------------------------------------------------------------------------- shared steps
    def _start(self, layout: _Layout) -> tuple[Intervals, dict[int, tuple[str, str]]]:
        """What is already done; with nothing to resume, fresh meta.json, progress.json and zeroed arrays."""
        state = _resume_state(self.directory, layout)
        if state is not None:
            return state
        # Reset progress before the arrays are recreated, so no crash can leave rows claimed but zeroed.
        _write_json_atomically(self.directory / "progress.json", _progress_record([], {}))
        for path in _rank_files(self.directory):
            path.unlink()
        (self.directory / "unreadable.json").unlink(missing_ok=True)
        _write_json_atomically(self.directory / "meta.json", layout.meta(self.extra_meta))
        self._arrays(layout, "w+")
        return [], {}

    def _arrays(self, layout: _Layout, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
        shape = (layout.num_items, 2 if layout.flips else 1, layout.dim)
        reps = open_memmap(self.directory / "reps.npy", mode=mode, dtype=np.dtype(layout.dtype), shape=shape)
        images = None
        if layout.resolution is not None:
            shape = (layout.num_items, 3, layout.resolution, layout.resolution)
            images = open_memmap(self.directory / "images.npy", mode=mode, dtype=np.uint8, shape=shape)
        return reps, images

    def _encode(self, layout: _Layout, batches: Intervals, done: Intervals, unreadable: dict[int, tuple[str, str]],
                record: Callable[[Intervals, dict], None], show_progress: bool) -> None:
        """Encode `batches` (row ranges) into the arrays; `record(done, unreadable)` after each, once it is durable."""
        if not batches:
            return
        reps, images = self._arrays(layout, "r+")
        done, unreadable = list(done), dict(unreadable)
        split = (self.extra_meta or {}).get("split")
        description = "caching representations" + (f" ({split})" if split else "")
        if self.ranks.world_size > 1:
            description += f" (rank 0 of {self.ranks.world_size})"
        loader = DataLoader(_SkippingUnreadable(self.dataset), batch_sampler=[list(range(a, b)) for a, b in batches],
                            num_workers=self.num_workers, collate_fn=_collate_readable)
        already = sum(b - a for a, b in done) if self.ranks.world_size == 1 else 0
        total = layout.num_items if self.ranks.world_size == 1 else sum(b - a for a, b in batches)
        bar = tqdm(total=total, initial=already, desc=description, disable=not show_progress)
        with encoder_on(self.encoder, self.device), bar:
            for (start, stop), batch in zip(batches, loader, strict=True):
                rows = start + np.asarray(batch["readable"], dtype=np.int64)
                for position, item in batch["unreadable"].items():
                    unreadable[start + position] = (item.relative_path, item.reason)
                if len(rows):
                    self._write_rows(reps, images, rows, batch["image"], whole=len(rows) == stop - start)
                done = merged_intervals([*done, (start, stop)])
                record(done, unreadable)
                bar.update(stop - start)

    def _write_rows(self, reps: np.ndarray, images: np.ndarray | None, rows: np.ndarray, images01: Tensor,
                    whole: bool) -> None:
        pixels = images01.to(self.device, torch.float32)
        h = encode_for_cache(pixels, self.encoder, self.flips)
        if not torch.isfinite(h).all():
            raise RuntimeError(f"encoder produced non-finite values for items {rows[0]}..{rows[-1]}")
        if float(h.abs().max()) > float(np.finfo(reps.dtype).max):
            raise RCDMError(f"representations of items {rows[0]}..{rows[-1]} exceed {reps.dtype}'s range "
                            f"(largest |h| {float(h.abs().max()):.3g}): use data.cache_dtype=float32")
        stored = h.cpu().numpy().astype(reps.dtype, copy=False)
        where = slice(int(rows[0]), int(rows[-1]) + 1) if whole else rows
        reps[where] = stored
        if images is not None:
            images[where] = quantise(resize_to_resolution(pixels, self.resolution)).cpu().numpy()
            images.flush()
        # Rows are durable before progress claims them, so a crash can only lose the batch in flight.
        reps.flush()

    def _finish(self, layout: _Layout) -> None:
        """Check every row is done, write unreadable.json, mark the cache complete and warn about skipped images."""
        state = _resume_state(self.directory, layout)
        done, unreadable = state if state is not None else ([], {})
        if done != [(0, layout.num_items)]:
            raise RCDMError(f"representation cache {self.directory} misses rows {missing_rows(done, layout.num_items)} "
                            "after every rank finished: data.cache_dir must be one folder shared by every rank")
        if unreadable:
            items = [{"index": index, "relative_path": path, "reason": reason}
                     for index, (path, reason) in sorted(unreadable.items())]
            _write_json_atomically(self.directory / "unreadable.json", {"count": len(items), "items": items})
        _write_json_atomically(self.directory / "progress.json", {"rows_done": layout.num_items, "complete": True})
        for path in _rank_files(self.directory):
            path.unlink()
        if unreadable:
            split = (self.extra_meta or {}).get("split")
            where = "while caching representations" + (f" of the {split} split" if split else "")
            warnings.warn(unreadable_warning([entry for _, entry in sorted(unreadable.items())], where), stacklevel=4)
