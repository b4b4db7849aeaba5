"""Built-in procedural dataset: one coloured shape on a textured background, every factor of variation known.

Images are a pure function of their factors, and the factors a pure function of (seed, split, index), so any
item can be re-rendered anywhere and probes can ask which factors a representation keeps.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.errors import RCDMError

# Bump whenever a change alters pixels: it is part of the fingerprint, so stale caches get rebuilt.
RENDERER_VERSION = 1

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "heart",
    "crescent",
)
COLOUR_CLASSES: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "purple", "white", "black")
TEXTURE_CLASSES: tuple[str, ...] = ("plain", "stripes", "checker", "dots")

COLOUR_RGB = np.array(
    [
        (220, 40, 40),
        (240, 215, 40),
        (40, 165, 60),
        (50, 205, 225),
        (45, 75, 215),
        (150, 55, 190),
        (240, 240, 240),
        (25, 25, 25),
    ],
    dtype=np.float32,
) / 255.0

# Fraction of the image spanned by the object's circumscribed circle: large enough to read at 32 px.
SCALE_RANGE = (0.35, 0.7)
# Texture cells span a quarter of the image (8 px at 32 px), coarse enough to survive downsampling.
_TEXTURE_CELLS = 4
_SUPERSAMPLING = 4
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class ShapeFactors:
    """What determines one image; x, y: centre of the circumscribed circle, as a fraction of the image (y down).

    The dataset's labels report what is visible instead: see `visible_centre` and `rotation_label`.
    """

    shape: int
    object_colour: int
    background_colour: int
    texture: int
    scale: float
    x: float
    y: float
    rotation: float  # degrees, counter-clockwise on screen


def _regular_polygon(corners: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(corners) / corners
    return np.stack([np.cos(angles), -np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    corners = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
    corners += [(-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    return np.array(corners, dtype=np.float64)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _centred_unit(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding box and scale so the farthest vertex sits at radius 1."""
    points = points - (points.min(axis=0) + points.max(axis=0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


_CIRCLE = _regular_polygon(72)
# Each shape is a list of (unit polygon, fill) strokes painted in order; the crescent is a disc minus a disc.
_SHAPE_STROKES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [(_regular_polygon(4, math.pi / 4), 255)],
    "triangle": [(_regular_polygon(3, math.pi / 2), 255)],
    "star": [(_star(), 255)],
    "cross": [(_centred_unit(_cross()), 255)],
    "hexagon": [(_regular_polygon(6), 255)],
    "heart": [(_centred_unit(_heart()), 255)],
    "crescent": [(_CIRCLE, 255), (_CIRCLE * 0.8 + np.array([0.45, 0.0]), 0)],
}
assert tuple(_SHAPE_STROKES) == SHAPE_CLASSES

# Rotations that leave each shape unchanged: a rotation label is only defined modulo this period (degrees).
# None: every rotation looks the same (the circle), so its rotation label is 0. The heart and the crescent are only
# mirror-symmetric: 360.
SYMMETRY_PERIOD: dict[str, float | None] = {
    "circle": None,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "cross": 90.0,
    "hexagon": 60.0,
    "heart": 360.0,
    "crescent": 360.0,
}
assert tuple(SYMMETRY_PERIOD) == SHAPE_CLASSES
# Side of the canvas on which each unit shape is drawn once to find the centroid of its visible area.
_CENTROID_CANVAS = 1024


def sample_factors(seed: int, split: str, index: int) -> ShapeFactors:
    """The factors of item `index`: an independent random stream per (seed, split, index)."""
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    object_colour = int(rng.integers(len(COLOUR_CLASSES)))
    # Draw the background among the other colours so the object is never invisible.
    background_colour = int((object_colour + 1 + rng.integers(len(COLOUR_CLASSES) - 1)) % len(COLOUR_CLASSES))
    scale = float(rng.uniform(*SCALE_RANGE))
    # Keep the circumscribed circle inside the image.
    x, y = (float(v) for v in rng.uniform(scale / 2, 1 - scale / 2, size=2))
    return ShapeFactors(
        shape=int(rng.integers(len(SHAPE_CLASSES))),
        object_colour=object_colour,
        background_colour=background_colour,
        texture=int(rng.integers(len(TEXTURE_CLASSES))),
        scale=scale,
        x=x,
        y=y,
        rotation=float(rng.uniform(0.0, 360.0)),
    )


@lru_cache(maxsize=32)
def _texture_coverage(texture: str, image_size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: antialiased coverage of the texture's second colour (box-filtered)."""
    n = image_size * _SUPERSAMPLING
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n * _TEXTURE_CELLS
    u, v = coords[None, :], coords[:, None]
    if texture == "plain":
        fine = np.zeros((n, n), dtype=bool)
    elif texture == "stripes":
        # Diagonal stripes whose perpendicular period is one texture cell.
        fine = np.mod((u + v) / math.sqrt(2), 1.0) < 0.5
    elif texture == "checker":
        fine = (np.floor(u) + np.floor(v)) % 2 == 1
    elif texture == "dots":
        fine = (np.mod(u, 1.0) - 0.5) ** 2 + (np.mod(v, 1.0) - 0.5) ** 2 < 0.3**2
    else:
        raise ValueError(f"unknown texture {texture!r}")
    blocks = fine.reshape(image_size, _SUPERSAMPLING, image_size, _SUPERSAMPLING)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _texture_colour(rgb: np.ndarray) -> np.ndarray:
    """A shade of the background colour: darker for light colours, lighter for dark ones."""
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    target = 0.0 if luminance > 0.5 else 1.0
    return 0.55 * rgb + 0.45 * target


def _object_coverage(factors: ShapeFactors, image_size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: the object drawn at 4x and box-filtered down, i.e. antialiased coverage."""
    n = image_size * _SUPERSAMPLING
    centre = np.array([factors.x * n, factors.y * n])
    canvas = _draw(SHAPE_CLASSES[factors.shape], n, centre, factors.scale * n / 2, _rotation_matrix(factors.rotation))
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _draw(shape: str, canvas_size: int, centre: np.ndarray, radius: float, rotation: np.ndarray) -> Image.Image:
    canvas = Image.new("L", (canvas_size, canvas_size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, fill in _SHAPE_STROKES[shape]:
        points = polygon @ rotation.T * radius + centre
        draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
    return canvas


@cache
def unit_centroid(shape: str) -> np.ndarray:
    """(2,) centroid of the shape's visible area, unrotated, in units of its circumscribed radius (y down).

    The centre of the circumscribed circle for the symmetric polygons; off it for the heart and the crescent (a
    disc with a bite taken out, whose visible part sits well left of the disc's centre).
    """
    size = _CENTROID_CANVAS
    mask = np.asarray(_draw(shape, size, np.array([size / 2, size / 2]), size * 0.45, np.eye(2)), dtype=np.float64)
    ys, xs = np.indices(mask.shape) + 0.5
    centroid = np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()
    return (centroid - size / 2) / (size * 0.45)


def _rotation_matrix(degrees: float) -> np.ndarray:
    theta = math.radians(degrees)
    # Counter-clockwise on screen, where y points down.
    return np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])


def visible_centre(factors: ShapeFactors) -> tuple[float, float]:
    """(x, y) of the centroid of the drawn shape, as fractions of the image (what the x and y labels report)."""
    offset = _rotation_matrix(factors.rotation) @ unit_centroid(SHAPE_CLASSES[factors.shape]) * factors.scale / 2
    return factors.x + float(offset[0]), factors.y + float(offset[1])


def rotation_label(factors: ShapeFactors) -> float:
    """The rotation modulo the shape's symmetry period, in [0, period) degrees (0 for the circle)."""
    period = SYMMETRY_PERIOD[SHAPE_CLASSES[factors.shape]]
    return 0.0 if period is None else math.fmod(factors.rotation, period)


def render(factors: ShapeFactors, image_size: int) -> np.ndarray:
    """(3, S, S) float32 image in [0, 1]."""
    base = COLOUR_RGB[factors.background_colour][:, None, None]
    shade = _texture_colour(COLOUR_RGB[factors.background_colour])[:, None, None]
    foreground = COLOUR_RGB[factors.object_colour][:, None, None]
    texture = _texture_coverage(TEXTURE_CLASSES[factors.texture], image_size)
    alpha = _object_coverage(factors, image_size)
    image = base + (shade - base) * texture
    image += (foreground - image) * alpha
    # numpy, not torch: tiny per-item torch ops spread over threads and crawl when the CPU is shared.
    return np.clip(image, 0.0, 1.0, out=image)


class ShapesDataset(RCDMDataset):
    """Procedural shapes; items are {"image": (3, S, S) in [0, 1], "labels": {factor: scalar tensor}}.

    Class factors are LongTensors (index into `class_names(factor)`); continuous factors are float32: scale in
    SCALE_RANGE; x and y in [0, 1], the centroid of the visible shape; rotation in degrees modulo the shape's
    symmetry period (`SYMMETRY_PERIOD`: [0, 90) for a square, 0 for the circle), so each label is a function of
    the pixels and a perfect probe can read it exactly. The validation split is its own stream.
    """

    factor_kinds = {
        "shape": "class",
        "object_colour": "class",
        "background_colour": "class",
        "texture": "class",
        "scale": "continuous",
        "x": "continuous",
        "y": "continuous",
        "rotation": "continuous",
    }
    _CLASS_NAMES = {
        "shape": SHAPE_CLASSES,
        "object_colour": COLOUR_CLASSES,
        "background_colour": COLOUR_CLASSES,
        "texture": TEXTURE_CLASSES,
    }

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        num_train: int = 10000,
        num_val: int = 1000,
        seed: int = 0,
    ) -> None:
        if split not in _SPLITS:
            raise RCDMError(f"shapes dataset split must be one of {sorted(_SPLITS)}, got {split!r}")
        if image_size < 8:
            raise RCDMError(f"shapes image_size must be at least 8 px, got {image_size}")
        self.split = split
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.num_items = int(num_train if split == "train" else num_val)
        if self.num_items <= 0:
            message = f"shapes dataset has no {split} items: set data.dataset.num_{split} above 0"
            raise RCDMError(message)

    def __len__(self) -> int:
        return self.num_items

    def factors(self, index: int) -> ShapeFactors:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return sample_factors(self.seed, self.split, int(index))

    def labels(self, index: int) -> dict[str, Tensor]:
        """The labels of item `index` without rendering it."""
        return self._labels_of(self.factors(index))

    def _labels_of(self, factors: ShapeFactors) -> dict[str, Tensor]:
        x, y = visible_centre(factors)
        # What the picture shows: x, y where the visible shape's centroid is, rotation modulo the shape's symmetry.
        values = {**{name: getattr(factors, name) for name in self.factor_names},
                  "x": x, "y": y, "rotation": rotation_label(factors)}
        return {
            name: torch.tensor(values[name], dtype=torch.long if self.factor_kinds[name] == "class" else torch.float32)
            for name in self.factor_names
        }

    def __getitem__(self, index: int) -> dict:
        factors = self.factors(index)
        image = torch.from_numpy(render(factors, self.image_size))
        return {"image": image, "labels": self._labels_of(factors)}

    def class_names(self, factor: str) -> tuple[str, ...]:
        if factor not in self._CLASS_NAMES:
            raise KeyError(f"{factor!r} is not a class factor; class factors: {sorted(self._CLASS_NAMES)}")
        return self._CLASS_NAMES[factor]

    def fingerprint(self) -> str:
        recipe = {
            "dataset": "shapes",
            "renderer_version": RENDERER_VERSION,
            "seed": self.seed,
            "split": self.split,
            "image_size": self.image_size,
            "num_items": self.num_items,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
