"""rcdm-scan: decode every image of a folder once, in parallel, and record the unreadable ones in its file index.

    rcdm-scan ROOT [--workers N] [--index-dir DIR]

Training never needs it: an unreadable file is found when it is first decoded, and skipped. Run it to learn about all
of them at once, before a long job: afterwards FolderDataset(ROOT, index_dir=DIR) leaves them out (one warning says
how many) without decoding anything. It also re-lists the folder, so it refreshes an index that cannot see files
rewritten in place (rcdm_lab/data/file_index.py).

Exit status: 0 when every file decodes, 1 when some do not (they are listed, and recorded), 2 for a user error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rcdm_lab.cli.common import report_user_errors
from rcdm_lab.data.file_index import index_path, list_folder, save_index
from rcdm_lab.data.folder import IMAGE_EXTENSIONS, unreadable_reason
from rcdm_lab.errors import RCDMError

# Where the training configs keep it: conf/data/folder.yaml's index_dir, ${data.cache_dir}/folder_index, with
# conf/data/default.yaml's cache_dir (relative to the directory the commands run in).
DEFAULT_INDEX_DIR = ".cache/rcdm_lab/folder_index"
# Files per task: enough to make the pool's overhead negligible, few enough for a smooth progress bar.
_CHUNK = 64


@dataclass
class ScanResult:
    root: Path
    files: int
    unreadable: dict[str, str]  # relative path -> reason, sorted by path
    index_file: Path
    seconds: float


def _reasons(root: str, relatives: list[str]) -> list[tuple[str, str]]:
    found = []
    for relative in relatives:
        reason = unreadable_reason(Path(root) / relative)
        if reason is not None:
            found.append((relative, reason))
    return found


def scan_folder(root: str | Path, workers: int, index_dir: str | Path) -> ScanResult:
    """List `root` afresh, fully decode every image with `workers` threads, and store the findings in its index."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder: give the folder that holds the images" if root.exists() \
            else "does not exist: check the path"
        raise RCDMError(f"image folder {root} {what}")
    start = time.perf_counter()
    index = list_folder(root, IMAGE_EXTENSIONS)
    if not index.relative_paths:
        raise RCDMError(f"no images found in {root}: add images with extension {', '.join(IMAGE_EXTENSIONS)}")
    # Files that could not even be stat-ed are unreadable already.
    pending = [relative for relative in index.relative_paths if relative not in index.unreadable]
    chunks = [pending[i:i + _CHUNK] for i in range(0, len(pending), _CHUNK)]
    found = dict(index.unreadable)
    # Threads, not processes: Pillow's decoders release the GIL, and nothing (torch included) is re-imported.
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(index.relative_paths), unit="img", desc=f"decoding {root.name}", disable=None) as bar:
        bar.update(len(index.relative_paths) - len(pending))
        futures = {pool.submit(_reasons, index.root, chunk): len(chunk) for chunk in chunks}
        for future in as_completed(futures):
            found.update(future.result())
            bar.update(futures[future])
    index.unreadable = dict(sorted(found.items()))
    index.scanned = True
    destination = index_path(index_dir, root)
    save_index(index, destination)
    return ScanResult(root, len(index.relative_paths), index.unreadable, destination, time.perf_counter() - start)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcdm-scan",
        description="Decode every image under ROOT in parallel; record the unreadable ones in the folder's file "
                    "index so FolderDataset leaves them out.",
        epilog="Exit status: 0 all files decode, 1 some do not (listed), 2 user error.",
    )
    parser.add_argument("root", metavar="ROOT", help="the image folder (data.dataset.root)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="decoding threads (default: the CPU count, at most 16)")
    parser.add_argument("--index-dir", default=DEFAULT_INDEX_DIR,
                        help=f"where file indexes live: data.dataset.index_dir (default: {DEFAULT_INDEX_DIR})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    with report_user_errors():
        result = scan_folder(args.root, args.workers, args.index_dir)
    bad = len(result.unreadable)
    print(f"scanned {result.files} images in {result.root} in {result.seconds:.1f} s ({args.workers} threads): "
          f"{bad} unreadable")
    for relative, reason in result.unreadable.items():
        print(f"  {relative}: {reason}")
    print(f"file index written to {result.index_file}"
          + (": FolderDataset with this index_dir now leaves these files out" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
