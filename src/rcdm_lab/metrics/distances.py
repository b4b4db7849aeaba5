"""How far is "far" in representation space? Reference distances for RCDM samples (paper Appendix C, Fig. 21/22).

A squared distance between a sample's representation and its conditioning's representation h means little on its
own. The paper puts it next to reference sets measured from the same h: random validation images, same-class
images, nearest training neighbours, the conditioning image under single augmentations (flip, centre crop, colour
jitter, grayscale, solarization) and under the SSL multi-crop augmentation of DINO/SwAV. If samples sit closer to
h than a flipped copy of the image does, the representation pins them down tightly.

This module holds the pure tensor functions (augmentations of image batches, row-wise distances, summaries). All
images are (B, 3, H, W) floats in [0, 1] -- the pixel convention of the frozen encoders, which normalise themselves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from rcdm_lab.errors import RCDMError
from rcdm_lab.settings import Rule, integer

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun

SINGLE_AUGMENTATIONS = ("flip", "center_crop", "color_jitter", "grayscale", "solarize")

# DINO/SwAV blur sigmas are in pixels of a 224 px crop; we rescale them to the actual image size so a 32 px CIFAR
# image gets the same *relative* blur rather than being smeared beyond recognition.
_BLUR_REFERENCE_SIZE = 224


def _check_images(images: Tensor) -> None:
    """Raise RCDMError unless `images` is a non-empty (B, 3, H, W) float batch in [0, 1]."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise RCDMError(f"expected a batch of RGB images shaped (B, 3, H, W), got {shape}; "
                        "add a batch dimension with images[None] or convert grayscale with .expand(-1, 3, -1, -1)")
    if len(images) == 0:
        raise RCDMError("got an empty batch of images; pick at least one conditioning image")
    if not images.is_floating_point():
        raise RCDMError(f"expected float images in [0, 1], got dtype {images.dtype}; convert with images.float() / 255")
    # Samples come out of the diffusion model in [-1, 1]; fed as-is, solarize/jitter would silently do the wrong thing.
    low, high = images.min().item(), images.max().item()
    if low < -1e-4 or high > 1 + 1e-4:
        raise RCDMError(f"expected images in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                        "map diffusion samples from [-1, 1] with (x + 1) / 2")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with the global CPU RNG seeded, restoring it afterwards.

    torchvision v2 transforms draw their random parameters from the global CPU RNG (they take no generator), so
    forking it is the only way to make them reproducible without disturbing the caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def single_augmentations(
    crop_fraction: float = 0.7,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    seed: int = 0,
) -> dict[str, Callable[[Tensor], Tensor]]:
    """Named single augmentations, each mapping a (B, 3, H, W) batch in [0, 1] to a batch of the same size.

    "flip" (horizontal), "center_crop" (the central `crop_fraction` of each side, resized back to H x W), "grayscale"
    (kept as 3 equal channels) and "solarize" (pixels >= 0.5 inverted) are deterministic. "color_jitter" draws
    independent parameters per image from an RNG seeded with `seed` on every call, so it is a pure function of its
    input too: the same batch always gets the same jitter and the global RNG is left untouched.
    """
    if not 0 < crop_fraction <= 1:
        raise RCDMError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def checked(transform: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def apply(images: Tensor) -> Tensor:
            _check_images(images)
            return transform(images)
        apply.__name__ = transform.__name__
        return apply

    def flip(images: Tensor) -> Tensor:
        return images.flip(-1)

    def center_crop(images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        crop = [max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))]
        cropped = TF.center_crop(images, crop)
        # Bilinear upsampling is a convex combination of pixels, so the clamp only removes float round-off.
        return TF.resize(cropped, [height, width], antialias=True).clamp(0, 1)

    def color_jitter(images: Tensor) -> Tensor:
        # v2 transforms share one parameter draw across a batch; loop so each image is jittered independently.
        with _seeded(seed):
            return torch.stack([jitter(image) for image in images])

    def grayscale(images: Tensor) -> Tensor:
        return TF.rgb_to_grayscale(images, num_output_channels=3)

    def solarize(images: Tensor) -> Tensor:
        return TF.solarize(images, threshold=0.5)

    transforms = {"flip": flip, "center_crop": center_crop, "color_jitter": color_jitter, "grayscale": grayscale,
                  "solarize": solarize}
    return {name: checked(transform) for name, transform in transforms.items()}


def _global_view(
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    jitter: tuple[float, float, float, float],
    jitter_p: float,
    grayscale_p: float,
    blur_p: float,
    blur_sigma: tuple[float, float],
    solarize_p: float,
) -> v2.Compose:
    """One DINO global-view pipeline (without the final normalisation, which the encoders do themselves)."""
    side = min(size)
    factor = side / _BLUR_REFERENCE_SIZE
    sigma = (blur_sigma[0] * factor, blur_sigma[1] * factor)
    # Kernel about 10% of the image side (BYOL's 23 px at 224), odd, at least 3 and no larger than the image.
    kernel = max(3, int(round(0.1 * side)) | 1)
    kernel = min(kernel, side if side % 2 else side - 1)
    steps: list[Callable] = [
        v2.RandomResizedCrop(list(size), scale=scale, ratio=ratio, antialias=True),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
    ]
    if kernel >= 3:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=blur_p))
    steps.append(v2.RandomSolarize(threshold=0.5, p=solarize_p))
    return v2.Compose(steps)


def multicrop_views(
    images: Tensor,
    num_views: int,
    generator_seed: int = 0,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: tuple[float, float] = (1.0, 0.1),
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    solarize_p: tuple[float, float] = (0.0, 0.2),
) -> Tensor:
    """(B, num_views, 3, H, W) random DINO/SwAV global views of each image, same size as the input.

    RandomResizedCrop(`scale`, `ratio`) back to H x W, horizontal flip, ColorJitter(`jitter`) with p=`jitter_p`,
    grayscale with p=`grayscale_p`, Gaussian blur and solarization. DINO has two global pipelines that differ only in
    blur/solarization probabilities -- (blur 1.0, solarize 0.0) and (blur 0.1, solarize 0.2) -- so even views use the
    first entries of `blur_p`/`solarize_p` and odd views the second. SwAV uses scale=(0.14, 1.0). `blur_sigma` is in
    pixels of a 224 px image and is rescaled to H. Every image and view is augmented independently, and the result
    depends only on the inputs and `generator_seed` (the global RNG is forked, not consumed).
    """
    _check_images(images)
    if num_views < 1:
        raise RCDMError(f"num_views must be at least 1, got {num_views}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise RCDMError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    size = (images.shape[-2], images.shape[-1])
    pipelines = [_global_view(size, scale, ratio, flip_p, jitter, jitter_p, grayscale_p, blur_p[i], blur_sigma,
                              solarize_p[i]) for i in range(2)]
    with _seeded(generator_seed):
        # Loop image by image: a v2 transform applied to a batch draws one set of parameters for the whole batch.
        views = [torch.stack([pipelines[view % 2](image) for view in range(num_views)]) for image in images]
    # Antialiased resizing may overshoot [0, 1] by round-off; the encoders' statistics assume the exact range.
    return torch.stack(views).clamp_(0, 1)


def augmentation_views(images: Tensor, seed: int = 0, num_multicrop: int = 8, **params) -> dict[str, Tensor]:
    """Group name -> (B, n_g, 3, H, W) augmented views of `images`, in the order the paper's figures list them.

    The single augmentations of :func:`single_augmentations` give n_g = 1; "multicrop" gives `num_multicrop` views
    (omitted when 0). `params` go to :func:`single_augmentations` or :func:`multicrop_views` by name, e.g.
    ``crop_fraction=0.5`` or ``scale=(0.14, 1.0)``.
    """
    _check_images(images)
    single_names = set(inspect.signature(single_augmentations).parameters) - {"seed"}
    multi_names = set(inspect.signature(multicrop_views).parameters) - {"images", "num_views", "generator_seed"}
    unknown = set(params) - single_names - multi_names
    if unknown:
        raise RCDMError(f"unknown augmentation parameter(s) {sorted(unknown)}; "
                        f"use any of {sorted(single_names | multi_names)}")
    if num_multicrop < 0:
        raise RCDMError(f"num_multicrop must be >= 0, got {num_multicrop}")
    singles = single_augmentations(seed=seed, **{k: v for k, v in params.items() if k in single_names})
    views = {name: transform(images)[:, None] for name, transform in singles.items()}
    if num_multicrop:
        views["multicrop"] = multicrop_views(images, num_multicrop, generator_seed=seed,
                                             **{k: v for k, v in params.items() if k in multi_names})
    return views


def squared_distances_to(cond: Tensor, refs: Tensor) -> Tensor:
    """(M, n) float64 squared L2 distances from each conditioning cond[i] (M, D) to its own references refs[i] (n, D).

    This is the row-wise companion of :func:`rcdm_lab.metrics.knn.pairwise_distances`, not a second implementation
    of it: the all-pairs function would compute M x (M * n) distances only to keep the diagonal blocks, and its
    ||q||^2 + ||k||^2 - 2 q.k expansion (right for matrix products) cancels, so an identical reference comes out as
    round-off rather than 0. Subtracting first is exact, which matters when the point is to compare small distances.
    """
    if cond.dim() != 2 or refs.dim() != 3:
        raise RCDMError(f"expected cond (M, D) and refs (M, n, D), got {tuple(cond.shape)} and {tuple(refs.shape)}; "
                        "reshape per-conditioning references with refs.view(M, n, D)")
    if refs.shape[0] != cond.shape[0] or refs.shape[2] != cond.shape[1]:
        raise RCDMError(f"cond {tuple(cond.shape)} and refs {tuple(refs.shape)} disagree: refs must be (M, n, D) "
                        "with the same M conditionings and D dimensions")
    return (refs.to(cond.device).double() - cond.double()[:, None]).pow(2).sum(-1)


def summarize(groups: Mapping[str, Tensor | Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per group, in insertion order: count (an int), mean, median, std, min, max of all its values, as plain floats.

    Values of any shape are flattened. The median is the usual one (mean of the two middle values for an even count,
    unlike torch.median's lower middle) and std is the population standard deviation (numpy's default), which is
    defined for a single value. Non-finite values are refused because the result is meant to be written as JSON.
    """
    summary: dict[str, dict[str, float]] = {}
    for name, values in groups.items():
        flat = torch.as_tensor(values).detach().double().flatten().cpu()
        if flat.numel() == 0:
            raise RCDMError(f"distance group {name!r} is empty; give it at least one reference or leave it out")
        if not torch.isfinite(flat).all():
            raise ValueError(f"distance group {name!r} holds non-finite values (NaN or inf)")
        ordered, count = flat.sort().values, flat.numel()
        summary[name] = {
            "count": count,
            "mean": flat.mean().item(),
            "median": ((ordered[(count - 1) // 2] + ordered[count // 2]) / 2).item(),
            "std": flat.std(correction=0).item(),
            "min": flat.min().item(),
            "max": flat.max().item(),
        }
    return summary


# ------------------------------------------------------------------------------------------ rcdm-eval metric=distances
CLASS_FACTOR_PREFERENCE = ("class", "shape")


def pick_class_factor(labels: Mapping[str, Tensor], requested: str | None) -> str | None:
    """The label that defines "same class": the requested one, else "class", else "shape", else the first label."""
    if requested is not None:
        if requested not in labels:
            raise RCDMError(f"distances.class_factor={requested!r} is not a label of this dataset; "
                            f"labels: {sorted(labels) or 'none'}")
        return requested
    for name in (*CLASS_FACTOR_PREFERENCE, *labels):
        if name in labels:
            return name
    return None


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_conditionings", optional=True),
    integer("per_reference"),
    integer("num_multicrop"),
]


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """Fig. 21/22 as numbers: squared L2 from M validation conditionings' h to each reference set, and a box plot."""
    from rcdm_lab.metrics.knn import nearest_neighbors
    from rcdm_lab.viz.plots import box_plot

    m = run.count("val", settings["num_conditionings"], "distances.num_conditionings", default=8)
    n = int(settings["per_reference"])
    items = run.val_items(m, "distances.num_conditionings")
    cond = items["h"].cpu()
    val_reps = run.representations("val")
    if len(val_reps) < 2:
        raise RCDMError("distances need at least 2 validation images (random references exclude the conditioning)")
    generator = torch.Generator().manual_seed(int(sampling.get("seed", 0)))
    groups: dict[str, Tensor] = {}

    def others(i: int, pool: Tensor) -> Tensor:
        """Up to n random indices from `pool`, never the conditioning itself."""
        pool = pool[pool != i]
        return pool[torch.randperm(len(pool), generator=generator)[:n]]

    everyone = torch.arange(len(val_reps))
    groups["random val"] = torch.cat([squared_distances_to(cond[i:i + 1], val_reps[others(i, everyone)][None])[0]
                                      for i in range(m)])
    labels = run.labels("val")
    factor = pick_class_factor(labels, settings.get("class_factor"))
    if factor is not None:
        same = [others(i, torch.nonzero(labels[factor] == labels[factor][i]).flatten()) for i in range(m)]
        values = [squared_distances_to(cond[i:i + 1], val_reps[idx][None])[0] for i, idx in enumerate(same) if len(idx)]
        if values:
            groups[f"same {factor}"] = torch.cat(values)
    train_reps = run.representations("train")
    neighbour_distances, _ = nearest_neighbors(cond, train_reps, k=min(n, len(train_reps)))
    groups["train neighbours"] = neighbour_distances.flatten()
    views = augmentation_views(items["image"], seed=int(sampling.get("seed", 0)),
                               num_multicrop=int(settings["num_multicrop"]), **settings["augmentations"])
    for name, batch in views.items():
        reps = run.pipeline.encode(batch.flatten(0, 1)).cpu().view(m, batch.shape[1], -1)
        groups[name] = squared_distances_to(cond, reps).flatten()
    samples = run.sample(items["h"], n, sampling)
    groups["RCDM samples"] = squared_distances_to(cond, run.pipeline.encode(samples).cpu().view(m, n, -1)).flatten()
    title = f"squared L2 to the conditioning's h ({m} validation conditionings)"
    return {
        "num_conditionings": m,
        "per_reference": n,
        "class_factor": factor,
        "table": summarize(groups),
        "box_plot_png": str(box_plot(groups, out_dir / "distances.png", title=title, log_scale=True)),
    }
