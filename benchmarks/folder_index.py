"""Construction time of a FolderDataset over a big generated folder: listing it, then reusing its file index.

    python benchmarks/folder_index.py [--files 200000] [--classes 100]

Prints `folder index: N files, first A s, second B s`: first = a construction (train split, with fingerprint())
that lists and stats every file and writes the index; second = a new construction that reuses it (goal: <= 5 s at
200 000 files). The folder is freshly written, so its directory entries are in the OS cache: on a cold network
filesystem the first construction is slower, the second is not (it stats only the directories).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rcdm_lab.data.file_index import RACY_MTIME_NS, index_path
from rcdm_lab.data.folder import FolderDataset

IMAGE_SIZE = 8


def generate_folder(root: Path, num_files: int, classes: int = 100) -> None:
    """`num_files` valid 8x8 JPEGs in `classes` class folders: one image encoded once, its bytes written many times.

    Plain os.open/os.write: about 10 s for 200 000 files on a local disk (PIL encoding each would take minutes).
    """
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    payload = buffer.getvalue()
    folders = [root / f"class_{c:04d}" for c in range(classes)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        descriptor = os.open(folders[i % classes] / f"{i:07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, payload)
        finally:
            os.close(descriptor)


def _wait_until_settled(root: Path) -> None:
    """Sleep until the folder is older than the index's racy window, as any folder is on a restart.

    A directory modified within RACY_MTIME_NS of a listing is re-listed next time (rcdm_lab/data/file_index.py), so
    a folder measured the moment it was written would be listed twice.
    """
    newest = max(os.stat(folder).st_mtime_ns for folder, _, _ in os.walk(root))
    remaining = (newest + RACY_MTIME_NS - time.time_ns()) / 1e9
    if remaining > 0:
        time.sleep(remaining + 0.05)


def _construct(root: Path, index_dir: Path) -> tuple[int, float]:
    start = time.perf_counter()
    dataset = FolderDataset(root, "train", image_size=IMAGE_SIZE, val_fraction=0.05, index_dir=str(index_dir))
    dataset.fingerprint()
    return len(dataset), time.perf_counter() - start


def measure_folder_index(root: Path, index_dir: Path) -> dict:
    """{"files": files listed, "first_s": construction without an index, "second_s": construction reusing it}."""
    root, index_dir = Path(root), Path(index_dir)
    index_path(index_dir, root).unlink(missing_ok=True)
    _wait_until_settled(root)
    _, first = _construct(root, index_dir)
    _, second = _construct(root, index_dir)
    files = sum(len(names) for _, _, names in os.walk(root))
    return {"files": files, "first_s": first, "second_s": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000, help="images in the generated folder")
    parser.add_argument("--classes", type=int, default=100, help="class folders they are spread over")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root, index_dir = Path(scratch) / "images", Path(scratch) / "index"
        generate_folder(root, args.files, args.classes)
        result = measure_folder_index(root, index_dir)
    print(f"folder index: {result['files']} files, first {result['first_s']:.1f} s, second {result['second_s']:.1f} s")


if __name__ == "__main__":
    main()
