"""Bootstrap confidence intervals for per-conditioning means (faithfulness MRR, factor agreement, ...).

Samples drawn from one conditioning are not independent draws of a metric: the unit that varies between repetitions
of an evaluation is the conditioning. So every interval here resamples conditionings -- one value per conditioning
(e.g. the mean reciprocal rank of its k samples) -- never samples. The resampling is scipy's
(`scipy.stats.bootstrap`, BCa by default: second-order accurate, corrects the skew MRR has near 0), seeded so an
evaluation's interval is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from rcdm_lab.errors import RCDMError


def per_conditioning_means(values: Tensor, samples_per_conditioning: int) -> Tensor:
    """(N,) mean of each conditioning's k values, for values (N * k,) grouped by conditioning (row-major)."""
    values = torch.as_tensor(values).double().flatten()
    k = int(samples_per_conditioning)
    if k < 1 or len(values) % k:
        raise RCDMError(f"{len(values)} values cannot be split into groups of {k} samples per conditioning")
    return values.view(-1, k).mean(dim=1)


def mean_interval(per_conditioning: Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0,
                  method: str = "BCa") -> tuple[float, float]:
    """Bootstrap `level` interval of the mean of one value per conditioning (N,), resampling conditionings.

    Paired comparisons (two samplers on the same conditionings and noise) pass the per-conditioning differences:
    their interval is much narrower than either interval alone suggests.
    """
    values = torch.as_tensor(per_conditioning).double().flatten().numpy()
    if len(values) < 2:
        raise RCDMError(f"a bootstrap interval needs at least 2 conditionings, got {len(values)}")
    if not np.isfinite(values).all():
        raise RCDMError("bootstrap values hold NaN or inf")
    if not 0 < level < 1:
        raise RCDMError(f"confidence level must lie in (0, 1), got {level}")
    # Every resample has the same mean; BCa would divide by zero. "The same" up to rounding: a mean over factors
    # computed in SIMD lanes differed by ~1e-17 between conditionings whose values were equal, and BCa gave NaN.
    if np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())):
        return float(values.mean()), float(values.mean())
    result = stats.bootstrap((values,), np.mean, confidence_level=level, n_resamples=resamples, method=method,
                             rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def verdict(interval: tuple[float, float] | list[float], expected_sign: int = 1) -> str:
    """A claim about a difference, judged by its interval: "reproduced" when the interval excludes 0 on the side the
    claim names (`expected_sign` +1: the difference is positive; -1: negative), "not reproduced" when it excludes 0
    on the other side, "inconclusive" when it contains 0."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    low, high = (float(v) * expected_sign for v in interval)
    low, high = min(low, high), max(low, high)
    if low > 0:
        return VERDICTS[0]
    if high < 0:
        return VERDICTS[1]
    return VERDICTS[2]
