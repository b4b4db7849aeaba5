"""The two-view augmentations of joint-embedding SSL, as a config group (``augment=simclr|crop_only|no_colour``).

SimCLR's pipeline (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
Appendix A): a random resized crop with horizontal flip, colour jitter (strength 0.5: brightness, contrast,
saturation 0.4, hue 0.1) applied with p = 0.8, random grayscale with p = 0.2. Blur is left out at 32 px, as SimCLR
does on CIFAR-10. ``crop_only`` and ``no_colour`` are the crop + flip variants (the RCDM paper's Fig. 34 compares
an SSL model trained without colour augmentations).

torchvision's v2 transforms draw ONE set of parameters per call, so a batch tensor would get the same crop and
jitter for every image: :class:`TwoViews` calls the pipeline per image, under a generator seeded by
``(seed, epoch, index, view)``, so every view is a pure function of those four numbers -- the same with any
number of DataLoader workers, on a rerun and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from rcdm_lab.errors import RCDMError
from rcdm_lab.training.randomness import mixed_seed


def _pair(key: str, value: Any, low: float, high: float | None) -> tuple[float, float]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and \
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if ok:
        a, b = float(value[0]), float(value[1])
        ok = low < a <= b and (high is None or b <= high)
    if not ok:
        upper = f" and <= {high:g}" if high is not None else ""
        raise RCDMError(f"augment.{key}={value!r} is not allowed: use [min, max] with {low:g} < min <= max{upper}")
    return a, b


def _probability(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RCDMError(f"augment.{key}={value!r} is not allowed: use a probability from 0 to 1")
    return float(value)


@dataclass(frozen=True)
class AugmentSettings:
    """One augmentation pipeline: crop (always), flip, colour jitter and grayscale (each with a probability).

    ``jitter``: (brightness, contrast, saturation, hue) strengths of ColorJitter, applied with ``jitter_p``.
    """

    name: str = "simclr"
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RCDMError(f"augment.name={self.name!r} is not allowed: use a non-empty name")
        object.__setattr__(self, "crop_scale", _pair("crop_scale", self.crop_scale, 0.0, 1.0))
        object.__setattr__(self, "crop_ratio", _pair("crop_ratio", self.crop_ratio, 0.0, None))
        jitter = self.jitter
        ok = isinstance(jitter, Sequence) and not isinstance(jitter, str) and len(jitter) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in jitter)
        if not ok or float(jitter[3]) > 0.5:
            raise RCDMError(f"augment.jitter={jitter!r} is not allowed: use [brightness, contrast, saturation, hue], "
                            "each >= 0 and hue <= 0.5 (e.g. [0.4, 0.4, 0.4, 0.1]; [0, 0, 0, 0] for none)")
        object.__setattr__(self, "jitter", tuple(float(v) for v in jitter))
        for key in ("flip_p", "jitter_p", "grayscale_p"):
            object.__setattr__(self, key, _probability(key, getattr(self, key)))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AugmentSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise RCDMError(f"unknown augment setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{key: _plain(value) for key, value in config.items()})

    def record(self) -> dict[str, Any]:
        """Plain values (lists, floats, str): what the exported encoder file stores."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def pipeline(self, size: int) -> v2.Compose:
        """The per-image transform: float (3, H, W) in [0, 1] -> float (3, size, size) in [0, 1]."""
        steps: list[Any] = [v2.RandomResizedCrop(size, scale=self.crop_scale, ratio=self.crop_ratio, antialias=True)]
        if self.flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_p))
        if self.jitter_p > 0 and any(self.jitter):
            steps.append(v2.RandomApply([v2.ColorJitter(*self.jitter)], p=self.jitter_p))
        if self.grayscale_p > 0:
            steps.append(v2.RandomGrayscale(self.grayscale_p))
        return v2.Compose(steps)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class TwoViews:
    """``views`` augmentations of one image, each drawn under its own seed ``(seed, epoch, index, view)``."""

    def __init__(self, settings: AugmentSettings, size: int, views: int = 2, seed: int = 0) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.settings, self.size, self.views, self.seed = settings, int(size), int(views), int(seed)
        self.transform = settings.pipeline(self.size)

    def __call__(self, image: Tensor, epoch: int, index: int) -> Tensor:
        """(3, H, W) float in [0, 1] -> (views, 3, size, size) float in [0, 1]."""
        out = []
        # v2 draws from torch's global CPU generator: fork it, so the caller's stream is left untouched. Seeding
        # only that generator (not torch.manual_seed, which also seeds every accelerator) and no autograd
        # recording keep a 32 px view near 1 ms.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for view in range(self.views):
                torch.default_generator.manual_seed(mixed_seed(self.seed, epoch, index, view))
                out.append(self.transform(image))
            return torch.stack(out).clamp_(0.0, 1.0)
