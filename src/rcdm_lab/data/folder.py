"""Any directory of images (class subfolders optional), decoded robustly to RGB."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.data.file_index import FileIndex, folder_index, list_folder
from rcdm_lab.errors import RCDMError, UnreadableImageError
from rcdm_lab.resize import resize_and_center_crop_pil

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
# Bump whenever decoding changes pixels: it is part of the fingerprint, so stale caches get rebuilt.
DECODER_VERSION = 1
_SPLITS = ("train", "val", "all")
_WARN_EXAMPLES = 3


def list_images(path: str | Path) -> list[Path]:
    """A file -> [file]; a folder -> its images, recursively, sorted by relative path (hidden skipped)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            raise RCDMError(f"{path} is not an image: accepted extensions are {', '.join(IMAGE_EXTENSIONS)}")
        return [path]
    if not path.is_dir():
        raise RCDMError(f"image folder {path} does not exist: check the path")
    found = [path / relative for relative in list_folder(path, IMAGE_EXTENSIONS).relative_paths]
    if not found:
        raise RCDMError(f"no images found in {path}: add images with extension {', '.join(IMAGE_EXTENSIONS)}")
    return found


def _sixteen_bit_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey levels to 8 bits (Pillow's own convert would clip everything above 255 to white)."""
    values = np.asarray(image, dtype=np.float64)
    # Mode "I" is 32-bit and ambiguous; values beyond 8 bits can only come from a 16-bit source.
    is_sixteen_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
    scaled = values / 257.0 if is_sixteen_bit else values
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _float_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    peak = values.max(initial=0)
    scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255 else 255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit/float scaled (not clipped), transparency composited on white, CMYK/palette mapped."""
    if image.mode.startswith("I"):
        image = _sixteen_bit_to_8bit(image)
    elif image.mode == "F":
        image = _float_to_8bit(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _decode(path: Path, min_size: int | None = None) -> Image.Image:
    """Fully decode `path` to upright 8-bit RGB; raises whatever Pillow raises on a bad file."""
    with Image.open(path) as image:
        if min_size is not None:
            # JPEG can decode at 1/2, 1/4, 1/8 scale for free; draft keeps both sides >= min_size.
            image.draft(image.mode, (min_size, min_size))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)


def to_tensor(image: Image.Image) -> Tensor:
    """8-bit RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    # numpy, not torch: per-item torch ops spread over threads and crawl when the CPU is shared.
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def load_image(path: str | Path) -> Tensor:
    """(3, H, W) float in [0, 1] at native size, with the same conversions as FolderDataset."""
    path = Path(path)
    try:
        return to_tensor(_decode(path))
    except Exception as error:  # any decoder failure means the file is unusable
        raise RCDMError(f"cannot read image {path} ({error}): replace or remove the file") from error


def _split_position(relative_path: str) -> float:
    """A stable number in [0, 1) per file: the split never moves a file when others are added."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def _assign_split(relative_paths: list[str], val_fraction: float) -> list[str]:
    positions = [_split_position(p) for p in relative_paths]
    splits = ["val" if q < val_fraction else "train" for q in positions]
    if val_fraction > 0 and "val" not in splits and len(splits) >= 2:
        # A tiny folder would otherwise get no validation image at all.
        splits[int(np.argmin(positions))] = "val"
    return splits


def unreadable_reason(path: Path, min_size: int | None = None) -> str | None:
    """None when `path` decodes (at `min_size`, see _decode), else why not, in one line."""
    try:
        _decode(path, min_size)
    except Exception as error:  # any decoder failure means the file is unusable
        return f"{type(error).__name__}: {error}"
    return None


class FolderDataset(RCDMDataset):
    """Images under `root`; items are {"image": (3, S, S) in [0, 1], "labels": {"class": LongTensor}}.

    The class is the index of the file's top-level subfolder in `classes` (files directly in root: "").
    Construction decodes nothing: it reads the folder's file index (rcdm_lab/data/file_index.py), cached in
    `index_dir` when given, and leaves out only the files `rcdm-scan` found unreadable. Any other unreadable file
    raises UnreadableImageError when its item is read, for the reader to skip.
    """

    factor_kinds = {"class": "class"}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 64,
        val_fraction: float = 0.1,
        index_dir: str | Path | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise RCDMError(f"folder dataset split must be one of {list(_SPLITS)}, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise RCDMError(f"data.dataset.val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = int(image_size)
        self.val_fraction = float(val_fraction)
        if not self.root.is_dir():
            if self.root.exists():
                raise RCDMError(f"data.dataset.root={self.root} is a file: give the folder that holds the images")
            raise RCDMError(f"image folder {self.root} does not exist: check the path")

        index, _ = folder_index(self.root, IMAGE_EXTENSIONS, index_dir)
        relative = index.relative_paths
        if not relative:
            raise RCDMError(f"no images found in {self.root}: add images with extension {', '.join(IMAGE_EXTENSIONS)}")
        top_levels = [r.split("/", 1)[0] if "/" in r else "" for r in relative]
        self.classes: list[str] = sorted(set(top_levels))
        splits = _assign_split(relative, self.val_fraction) if split != "all" else [split] * len(relative)
        chosen = [i for i, s in enumerate(splits) if s == split]
        kept = self._without_unreadable(chosen, index)
        if not kept:
            raise RCDMError(
                f"no readable {split} images in {self.root} ({len(relative)} files found, val_fraction="
                f"{self.val_fraction}): add readable images ({', '.join(IMAGE_EXTENSIONS)}) "
                "or change data.dataset.val_fraction"
            )
        class_of = {name: number for number, name in enumerate(self.classes)}
        self.relative_paths: list[str] = [relative[i] for i in kept]
        self.targets: list[int] = [class_of[top_levels[i]] for i in kept]
        # The index's stat results, so the fingerprint never stats a file again.
        self._sizes = index.sizes[kept]
        self._mtimes_ns = index.mtimes_ns[kept]
        self._fingerprint: str | None = None

    def _without_unreadable(self, chosen: list[int], index: FileIndex) -> list[int]:
        """`chosen` less the files the index knows to be unreadable, named in one warning."""
        if not index.unreadable:
            return chosen
        bad = [index.relative_paths[i] for i in chosen if index.relative_paths[i] in index.unreadable]
        if bad:
            examples = ", ".join(f"{name} ({index.unreadable[name]})" for name in bad[:_WARN_EXAMPLES])
            more = f" and {len(bad) - _WARN_EXAMPLES} more" if len(bad) > _WARN_EXAMPLES else ""
            finder = "rcdm-scan" if index.scanned else "the file listing"
            warnings.warn(
                f"excluded {len(bad)} unreadable image file(s) of {self.root} that {finder} found: {examples}{more}; "
                f"after replacing them, run `rcdm-scan {self.root}` again",
                stacklevel=3,
            )
        return [i for i in chosen if index.relative_paths[i] not in index.unreadable]

    @property
    def paths(self) -> list[Path]:
        """The absolute path of every item, built on demand (items are read by relative path)."""
        return [self.root / relative for relative in self.relative_paths]

    def __len__(self) -> int:
        return len(self.relative_paths)

    def labels(self, index: int) -> dict[str, Tensor]:
        return {"class": torch.tensor(self.targets[index], dtype=torch.long)}

    def class_names(self, factor: str = "class") -> tuple[str, ...]:
        if factor != "class":
            raise KeyError(f"folder datasets have only the 'class' factor, not {factor!r}")
        return tuple(self.classes)

    def __getitem__(self, index: int) -> dict:
        relative = self.relative_paths[index]
        try:
            image = _decode(self.root / relative, self.image_size)
        except Exception as error:  # any decoder failure means the file is unusable; the reader decides to skip
            raise UnreadableImageError(relative, f"{type(error).__name__}: {error}", root=str(self.root)) from error
        image = resize_and_center_crop_pil(image, self.image_size)
        return {"image": to_tensor(image), "labels": self.labels(index)}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        # The same recipe as when every file was stat-ed here, so caches keyed on it survived the file index.
        files = list(zip(self.relative_paths, self._sizes.tolist(), self._mtimes_ns.tolist(), strict=True))
        recipe = {
            "dataset": "folder",
            "decoder_version": DECODER_VERSION,
            "split": self.split,
            "image_size": self.image_size,
            "files": files,
        }
        return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
