"""The real side of FID/KID, computed once: mean, covariance and a KID subset of a dataset's features.

Two sources:

- **our cache**: ``<data.cache_dir>/fid_reference/<key>.npz``, key = the dataset's fingerprint, the feature
  extractor's identity, the resolution and which real images were taken, so the next evaluation of any model
  trained on that data skips embedding the real images;
- **guided-diffusion's reference batches** (``VIRTUAL_imagenet128_labeled.npz`` and its siblings, the statistics
  behind the published ADM / RCDM FIDs): ``mu`` (2048,), ``sigma`` (2048, 2048) of pool3 Inception-v3 features,
  plus ``mu_s`` / ``sigma_s`` (spatial features, for sFID: not used here) and ``arr_0`` (the images: not read).
  Those pool3 features are the TensorFlow FID network's, the one :class:`rcdm_lab.metrics.fid.InceptionFeatures`
  runs (pytorch-fid's port of it), so FIDs against them are comparable with published numbers up to that port's
  small numerical differences; they are *not* comparable when ``fid.features=encoder``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.feature_stats import FeatureSummary

CACHE_SUBDIR = "fid_reference"
# Bump when what a cached file holds, or how it is computed, changes: stale files then miss instead of lying.
CACHE_FORMAT_VERSION = 1


def load_reference_npz(path: str | os.PathLike) -> FeatureSummary:
    """guided-diffusion's reference batch (keys ``mu``, ``sigma``; ``mu_s``, ``sigma_s``, ``arr_0`` ignored)."""
    path = Path(path)
    if not path.is_file():
        raise RCDMError(f"FID reference statistics {path} not found: download guided-diffusion's reference batch "
                        "(e.g. VIRTUAL_imagenet128_labeled.npz) or give the right path in fid.reference")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("mu", "sigma") if key not in archive.files]
            if missing:
                raise RCDMError(f"{path} has no {' or '.join(missing)} (keys: {sorted(archive.files)}): a FID "
                                "reference needs mu (D,) and sigma (D, D), as guided-diffusion's reference batches "
                                "hold; build one with rcdm-eval's cache or evaluator.py of guided-diffusion")
            mean, covariance = archive["mu"], archive["sigma"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise RCDMError(f"cannot read FID reference {path} ({error}): it must be an .npz written by numpy") from None
    return _checked(mean, covariance, str(path))


def _checked(mean: np.ndarray, covariance: np.ndarray, source: str) -> FeatureSummary:
    if mean.ndim != 1 or covariance.shape != (len(mean), len(mean)):
        raise RCDMError(f"{source}: mu must be (D,) and sigma (D, D), got {mean.shape} and {covariance.shape}; "
                        "this is not a FID reference batch (guided-diffusion's have (2048,) and (2048, 2048))")
    if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
        raise RCDMError(f"{source}: mu or sigma holds NaN or inf; the file is damaged, download it again")
    return FeatureSummary(torch.from_numpy(np.asarray(mean, dtype=np.float64)),
                          torch.from_numpy(np.asarray(covariance, dtype=np.float64)), source=source)


def check_dim(reference: FeatureSummary, dim: int, features: str) -> None:
    if len(reference.mean) != dim:
        raise RCDMError(f"FID reference {reference.source} has {len(reference.mean)}-d statistics but the {features} "
                        f"features are {dim}-d: reference batches need fid.features=inception (2048-d pool3)")


def reference_key(dataset_fingerprint: str, extractor: dict[str, Any], resolution: int, selection: dict[str, Any],
                  ) -> str:
    """Short hex digest of everything that determines the real side's statistics."""
    recipe = {"format": CACHE_FORMAT_VERSION, "dataset": dataset_fingerprint, "extractor": extractor,
              "resolution": int(resolution), "selection": selection}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / CACHE_SUBDIR / f"{key}.npz"


def save_cached(path: Path, reference: FeatureSummary) -> None:
    """Written atomically: a reader (another evaluation) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"mu": reference.mean.numpy(), "sigma": reference.covariance.numpy(),
                                     "count": np.array(reference.count or 0), "complete": np.array(reference.complete),
                                     "format": np.array(CACHE_FORMAT_VERSION)}
    if reference.kid_features is not None:
        arrays["kid_features"] = reference.kid_features.numpy()
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def load_cached(path: Path) -> FeatureSummary | None:
    """The cached statistics; None when absent, unreadable or of another format (they are then recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["format"]) != CACHE_FORMAT_VERSION:
                return None
            reference = _checked(archive["mu"], archive["sigma"], str(path))
            if "kid_features" in archive.files:
                reference.kid_features = torch.from_numpy(archive["kid_features"].astype(np.float64))
            reference.count, reference.complete = int(archive["count"]), bool(archive["complete"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RCDMError):
        return None
    return reference
