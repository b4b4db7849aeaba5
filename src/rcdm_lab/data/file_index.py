"""The file index of an image folder: every file's relative path, size and mtime, listed once and cached on disk.

Listing and stat-ing ImageNet (1.28 M files) takes minutes on a network filesystem, on every start of every rank; the
index makes a restart cost one `stat` per directory. It is reused while every directory's mtime is unchanged, since
adding, removing or renaming a file (or a subfolder) changes the mtime of the directory holding it.

Not detected: a file rewritten in place under the same name (`cp new.jpg old.jpg`, an editor saving over it, `touch`)
changes only the file's own mtime, not its directory's. After such an edit refresh the index: run `rcdm-scan ROOT`
(which also finds unreadable files) or delete the index file (`<index_dir>/<folder name>-<hash>.npz`).

The index also records the files `rcdm-scan` found unreadable, so datasets exclude them without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INDEX_FORMAT_VERSION = 1
# A directory modified less than this long before its listing began may have changed again within the same mtime
# tick (1 s on ext3/HFS+/some NFS servers, 2 s on FAT), unseen by the listing; it is re-listed next time (as git does
# for "racily clean" files). Costs at most one extra listing of a folder used right after it was written.
RACY_MTIME_NS = 2 * 10**9
# Relative paths are stored NUL-separated: the one character no POSIX file name can contain.
_SEPARATOR = "\0"


@dataclass
class FileIndex:
    """The wanted files under `root` (a resolved path), sorted by relative POSIX path, with their stat results.

    `sizes` / `mtimes_ns` are -1 for a file that could not be stat-ed (a broken symbolic link); such a file is also
    in `unreadable`, {relative path: reason}, with those `rcdm-scan` could not decode. `directories` are the listed
    folders relative to root ("" is root itself) with their mtimes when the listing began (`listed_ns`).
    """

    root: str
    extensions: tuple[str, ...]
    relative_paths: list[str]
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    directories: list[str]
    directory_mtimes_ns: np.ndarray
    listed_ns: int
    unreadable: dict[str, str] = field(default_factory=dict)
    scanned: bool = False  # whether `unreadable` holds the findings of a full decode (rcdm-scan)

    def __len__(self) -> int:
        return len(self.relative_paths)

    def entries(self) -> Iterator[tuple[str, int, int]]:
        """(relative path, size, mtime_ns) of every file, in order."""
        return zip(self.relative_paths, self.sizes.tolist(), self.mtimes_ns.tolist(), strict=True)

    def is_current(self) -> bool:
        """Whether the folder still holds the same names: every listed directory exists with its stored mtime.

        One stat per directory (1 001 for ImageNet's train folder), never one per file.
        """
        trusted_before = self.listed_ns - RACY_MTIME_NS
        for directory, stored in zip(self.directories, self.directory_mtimes_ns.tolist(), strict=True):
            if stored >= trusted_before:
                return False
            try:
                if os.stat(os.path.join(self.root, directory)).st_mtime_ns != stored:
                    return False
            except OSError:  # removed, or no longer accessible
                return False
        return True


def index_path(index_dir: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Where the index of `root` lives: keyed by its resolved path, readable by its folder name."""
    resolved = str(Path(root).expanduser().resolve())
    digest = hashlib.sha1(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(index_dir).expanduser() / f"{Path(resolved).name or 'root'}-{digest}.npz"


def list_folder(root: str | os.PathLike, extensions: tuple[str, ...], previous: FileIndex | None = None) -> FileIndex:
    """List `root` recursively (symbolic links followed, hidden names skipped) and stat every wanted file.

    A wanted file has one of `extensions` (lower-case, with the dot) in any case. Files `previous` found unreadable
    stay so while their size and mtime are unchanged, so re-listing after adding one file keeps rcdm-scan's work.
    Unlistable subfolders (e.g. a `lost+found` without permission) are skipped, as os.walk does.
    """
    resolved = str(Path(root).expanduser().resolve())
    listed_ns = time.time_ns()
    files: list[tuple[str, int, int]] = []
    unreadable: dict[str, str] = {}
    directories: list[tuple[str, int]] = []
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        absolute_dir = os.path.join(resolved, relative_dir)
        # The directory's mtime before its entries are read: a change during the listing then shows up as stale.
        try:
            directories.append((relative_dir, os.stat(absolute_dir).st_mtime_ns))
            entries = list(os.scandir(absolute_dir))
        except OSError:
            continue
        prefix = f"{relative_dir}/" if relative_dir else ""
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            try:
                is_dir = entry.is_dir()  # follows symbolic links, like os.walk(followlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                pending.append(relative)
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                try:
                    stat = entry.stat()
                    files.append((relative, stat.st_size, stat.st_mtime_ns))
                except OSError as error:  # a broken symbolic link: listed, so the user hears about it
                    files.append((relative, -1, -1))
                    unreadable[relative] = f"cannot stat the file ({error.strerror or error})"
    files.sort(key=lambda item: item[0])
    directories.sort(key=lambda item: item[0])
    if previous is not None:
        known = dict(zip(previous.relative_paths, zip(previous.sizes.tolist(), previous.mtimes_ns.tolist(),
                                                      strict=True), strict=True))
        for relative, size, mtime_ns in files:
            if relative in previous.unreadable and known.get(relative) == (size, mtime_ns):
                unreadable.setdefault(relative, previous.unreadable[relative])
    return FileIndex(
        root=resolved,
        extensions=tuple(extensions),
        relative_paths=[item[0] for item in files],
        sizes=np.array([item[1] for item in files], dtype=np.int64),
        mtimes_ns=np.array([item[2] for item in files], dtype=np.int64),
        directories=[item[0] for item in directories],
        directory_mtimes_ns=np.array([item[1] for item in directories], dtype=np.int64),
        listed_ns=listed_ns,
        unreadable=unreadable,
        scanned=previous.scanned if previous is not None else False,
    )


def _pack(strings: list[str]) -> np.ndarray:
    return np.frombuffer(_SEPARATOR.join(strings).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _unpack(blob: np.ndarray, count: int) -> list[str]:
    return blob.tobytes().decode("utf-8", "surrogateescape").split(_SEPARATOR) if count else []


def save_index(index: FileIndex, path: str | os.PathLike) -> None:
    """Write `index` to `path` atomically: ranks writing at once each replace the file whole, never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": INDEX_FORMAT_VERSION,
        "root": index.root,
        "extensions": list(index.extensions),
        "listed_ns": index.listed_ns,
        "scanned": index.scanned,
        "files": len(index.relative_paths),
        "directories": len(index.directories),
        "unreadable": len(index.unreadable),
    }
    arrays = {
        "header": np.frombuffer(json.dumps(header).encode("utf-8", "surrogateescape"), dtype=np.uint8),
        "paths": _pack(index.relative_paths),
        "sizes": index.sizes,
        "mtimes_ns": index.mtimes_ns,
        "directories": _pack(index.directories),
        "directory_mtimes_ns": index.directory_mtimes_ns,
        "unreadable_paths": _pack(list(index.unreadable)),
        "unreadable_reasons": _pack([reason.replace(_SEPARATOR, " ") for reason in index.unreadable.values()]),
    }
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)  # uncompressed: 200 000 entries load in milliseconds
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_index(path: str | os.PathLike, root: str | os.PathLike, extensions: tuple[str, ...]) -> FileIndex | None:
    """The index stored at `path` if it belongs to `root` and `extensions` (None when absent, foreign or damaged)."""
    resolved = str(Path(root).expanduser().resolve())
    try:
        with np.load(path, allow_pickle=False) as stored:
            header = json.loads(stored["header"].tobytes().decode("utf-8", "surrogateescape"))
            if (header.get("format") != INDEX_FORMAT_VERSION or header.get("root") != resolved
                    or tuple(header.get("extensions", ())) != tuple(extensions)):
                return None
            relative_paths = _unpack(stored["paths"], header["files"])
            unreadable = dict(zip(_unpack(stored["unreadable_paths"], header["unreadable"]),
                                  _unpack(stored["unreadable_reasons"], header["unreadable"]), strict=True))
            index = FileIndex(
                root=resolved,
                extensions=tuple(extensions),
                relative_paths=relative_paths,
                sizes=stored["sizes"],
                mtimes_ns=stored["mtimes_ns"],
                directories=_unpack(stored["directories"], header["directories"]),
                directory_mtimes_ns=stored["directory_mtimes_ns"],
                listed_ns=int(header["listed_ns"]),
                unreadable=unreadable,
                scanned=bool(header["scanned"]),
            )
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):  # absent or damaged: list again
        return None
    if not (len(index.relative_paths) == len(index.sizes) == len(index.mtimes_ns)
            and len(index.directories) == len(index.directory_mtimes_ns)):
        return None
    return index


def folder_index(root: str | os.PathLike, extensions: tuple[str, ...],
                 index_dir: str | os.PathLike | None) -> tuple[FileIndex, bool]:
    """The index of `root` and whether it was reused: the stored one while current, else a new listing, stored.

    Without `index_dir` the folder is listed every time and nothing is written.
    """
    if index_dir is None:
        return list_folder(root, extensions), False
    path = index_path(index_dir, root)
    stored = load_index(path, root, extensions)
    if stored is not None and stored.is_current():
        return stored, True
    index = list_folder(root, extensions, previous=stored)
    try:
        save_index(index, path)
    except OSError as error:  # the index only saves time: a read-only cache folder must not stop training
        warnings.warn(f"could not write the folder index {path} ({error}): every start lists {root} again; set "
                      "data.dataset.index_dir to a writable folder", stacklevel=3)
    return index, False
