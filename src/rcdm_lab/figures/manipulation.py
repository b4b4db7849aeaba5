"""Fig. 5/30/31: editing a representation through the dimensions its neighbourhood shares.

The paper's heuristic (section 4.3, appendix): take the k = 20 nearest neighbours of a query image's representation
h in a pool of representations, count per dimension in how many neighbours it is non-zero, and mask

- "most_common" (Fig. 5/30): the dimensions non-zero in more than `n_common` (14) of the k neighbours -- what the
  neighbourhood shares (for the paper's SimCLR dog: background and dog, leaving the clothes);
- "least_common" (Fig. 31): the dimensions non-zero in at least one but at most `n_rare` neighbours -- what is
  particular to few of them. Dimensions no neighbour uses are left out: they say nothing about this neighbourhood,
  and including them would make the "replace" rows paste most of the target's representation.

Rows (all with the same noise, so a column differs only through h): the original h; h with the masked dimensions
set to 0 (first column: the query); h with the masked dimensions taken from a target image (first column: the
target). "Non-zero" means |h| > `zero_threshold` (0 by default: exact zeros of a ReLU backbone; raise it for dense
representations, where every dimension is non-zero in every neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.blocks import sample_rows
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.figures.kind import check_settings
from rcdm_lab.metrics.distances import squared_distances_to
from rcdm_lab.metrics.knn import METRICS, check_metric, nearest_neighbors
from rcdm_lab.settings import integer, number, one_of, satisfies
from rcdm_lab.viz.grid import labelled_rows

PAPER = "Fig. 5/30/31"
SUMMARY = ("dims non-zero in > 14 of the 20 nearest neighbours (or rarely): zeroed, or replaced by a target image's "
           "values")
SEVERAL_MODELS = False

MODES = ("most_common", "least_common")
POOLS = ("train", "val")
# figure.json lists at most this many masked dimensions (a 2048-d mask would drown the numbers that matter).
MAX_LISTED_DIMS = 64


@dataclass(frozen=True)
class Settings:
    query_offset: int          # the query: input image number query_offset (images= folder order, or validation item)
    # The target image(s) whose values replace the masked dims (one row each): an int or a list of ints. Typed Any
    # because OmegaConf cannot type "int or list"; `target_offsets` checks it.
    target_offset: Any
    pool: str                  # where the neighbours come from: train | val (the run's representations)
    k: int                     # neighbours of the query counted (paper: 20); at most the pool size
    metric: str                # neighbour distance: cosine (the official script's normalised faiss index) | l2
    zero_threshold: float      # a dimension counts as non-zero when |h| > zero_threshold (raise it for dense h)
    mode: str                  # most_common (Fig. 5/30) | least_common (Fig. 31) | both
    n_common: int              # most_common masks dims non-zero in more than n_common of the k neighbours (paper: 14)
    n_rare: int                # least_common masks dims non-zero in 1..n_rare of the k neighbours (no paper value)
    samples_per_row: int       # samples per conditioning; every row shares the same noise

    def __post_init__(self) -> None:
        check_settings(self, [
            integer("query_offset", minimum=0),
            one_of("pool", POOLS),
            integer("k"),
            satisfies("metric", check_metric, " or ".join(METRICS)),
            number("zero_threshold", at_least=0),
            one_of("mode", (*MODES, "both")),
            integer("n_common", minimum=0),
            integer("n_rare"),
            integer("samples_per_row"),
        ])
        if self.query_offset in self.target_offsets:
            raise RCDMError(f"figure.query_offset={self.query_offset} must differ from target_offset "
                            f"{self.target_offsets}: the target is another image")

    @property
    def target_offsets(self) -> list[int]:
        """target_offset as a list of input-image indices >= 0."""
        value = self.target_offset
        offsets = list(value) if isinstance(value, (list, tuple)) else [value]
        if not offsets or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets):
            raise RCDMError(f"figure.target_offset must be an input-image index >= 0 or a non-empty list of them, "
                            f"got {value!r}")
        return offsets

    @property
    def modes(self) -> tuple[str, ...]:
        """The masks drawn: mode, or both of MODES."""
        return MODES if self.mode == "both" else (self.mode,)


def nonzero_counts(neighbours: Tensor, threshold: float = 0.0) -> Tensor:
    """(D,) int64: in how many of the (K, D) neighbour representations each dimension is non-zero (|h| > threshold)."""
    if neighbours.dim() != 2:
        raise RCDMError(f"expected neighbour representations shaped (K, D), got {tuple(neighbours.shape)}")
    if threshold < 0:
        raise RCDMError(f"zero_threshold must be >= 0 (|h| > threshold counts as non-zero), got {threshold}")
    return (neighbours.abs() > threshold).sum(0)


def common_dims_mask(counts: Tensor, n_common: int) -> Tensor:
    """(D,) bool: the dimensions non-zero in more than `n_common` neighbours (Fig. 5/30's "most common")."""
    return counts > n_common


def rare_dims_mask(counts: Tensor, n_rare: int) -> Tensor:
    """(D,) bool: the dimensions non-zero in 1..`n_rare` neighbours (Fig. 31's "least common"); unused ones excluded."""
    return (counts >= 1) & (counts <= n_rare)


def apply_mask(h: Tensor, mask: Tensor, replacement: Tensor | None = None) -> Tensor:
    """h with the dimensions in `mask` set to 0, or to `replacement`'s values; every other dimension untouched.

    `h` is (D,) or (N, D), `mask` a (D,) bool; `replacement` is broadcastable to h. Values are selected, never
    computed, so the result is bit-exact: 0 or the replacement on the mask, h elsewhere.
    """
    if mask.dtype != torch.bool or mask.shape != h.shape[-1:]:
        raise RCDMError(f"the mask must be a bool tensor over the {h.shape[-1]} dimensions of h, "
                        f"got {mask.dtype} {tuple(mask.shape)}")
    if replacement is None:
        return h.masked_fill(mask, 0)
    if replacement.shape[-1] != h.shape[-1]:
        raise RCDMError(f"the replacement has {replacement.shape[-1]} dimensions but h has {h.shape[-1]}: "
                        "take both representations from the same encoder")
    return torch.where(mask, replacement.to(h), h)


def _check_counts(k: int, pool_size: int, pool: str, n_common: int, n_rare: int, modes: tuple[str, ...]) -> None:
    """Refuse settings that cannot give a mask, before any sampling."""
    if not 1 <= k <= pool_size:
        raise RCDMError(f"figure.k={k} neighbours, but the {pool} pool holds {pool_size} representations: "
                        f"use 1 <= k <= {pool_size} (e.g. figure.k={min(20, pool_size)}), or a bigger dataset")
    if "most_common" in modes and not 0 <= n_common < k:
        raise RCDMError(f"figure.n_common={n_common} with k={k}: no dimension can be non-zero in more than "
                        f"{n_common} of {k} neighbours; use 0 <= n_common < k (the paper: 14 of 20)")
    if "least_common" in modes and not 1 <= n_rare <= k:
        raise RCDMError(f"figure.n_rare={n_rare} with k={k}: use 1 <= n_rare <= k")


def make(ctx: FigureContext, settings: Settings) -> dict[str, Any]:
    k, num_samples = settings.k, settings.samples_per_row
    n_common, n_rare = settings.n_common, settings.n_rare
    threshold, metric, pool = settings.zero_threshold, settings.metric, settings.pool
    modes = settings.modes
    query_offset, target_offsets = settings.query_offset, settings.target_offsets
    pool_reps = ctx.run.representations(pool)
    _check_counts(k, len(pool_reps), pool, n_common, n_rare, modes)

    offsets = [query_offset, *target_offsets]
    images, names = ctx.input_images(max(offsets) + 1)
    images, names = images[offsets], [names[i] for i in offsets]
    h = ctx.run.pipeline.encode(images).float().cpu()
    h_query, h_targets = h[0], h[1:]
    # With pool=val and validation inputs the query is its own nearest neighbour, as in the official folder setup.
    distances, indices = nearest_neighbors(h_query[None], pool_reps, k, metric)
    counts = nonzero_counts(pool_reps[indices[0]], threshold)

    # Each row: (label, first-column image, conditioning, JSON description).
    rows: list[tuple[str, Tensor, Tensor, dict[str, Any]]] = [("original", images[0], h_query, {"kind": "original"})]
    masks: dict[str, dict[str, Any]] = {}
    for mode in modes:
        mask = common_dims_mask(counts, n_common) if mode == "most_common" else rare_dims_mask(counts, n_rare)
        rule = f"count > {n_common} of {k}" if mode == "most_common" else f"1 <= count <= {n_rare} of {k}"
        if not mask.any():
            raise RCDMError(f"{mode}: no dimension satisfies {rule} (non-zero = |h| > {threshold}), so there is "
                            f"nothing to mask; loosen n_common/n_rare, or raise zero_threshold for a dense "
                            f"representation")
        dims = mask.nonzero().flatten().tolist()
        masks[mode] = {"rule": rule, "size": len(dims), "fraction": len(dims) / mask.numel(),
                       "dims": dims[:MAX_LISTED_DIMS], "dims_truncated": len(dims) > MAX_LISTED_DIMS,
                       "nonzero_in_query": int((h_query[mask].abs() > threshold).sum())}
        short = mode.split("_")[0]
        rows.append((f"{short} = 0", images[0], apply_mask(h_query, mask), {"kind": "zeroed", "mode": mode}))
        for t, h_target in enumerate(h_targets):
            rows.append((f"{short} <- {names[t + 1]}", images[t + 1], apply_mask(h_query, mask, h_target),
                         {"kind": "replaced", "mode": mode, "target": names[t + 1]}))

    conditionings = torch.stack([row[2] for row in rows])
    # ctx.sample gives every row the same k noise images: a column changes only because h does.
    samples = ctx.sample(conditionings, num_samples)
    grid = sample_rows([row[1] for row in rows], samples, num_samples)
    png = ctx.save(labelled_rows(grid, [row[0] for row in rows]))

    sample_reps = ctx.run.pipeline.encode(samples).float().cpu().view(len(rows), num_samples, -1)
    to_original = squared_distances_to(h_query[None], conditionings[None])[0]
    samples_to_original = squared_distances_to(h_query.expand(len(rows), -1), sample_reps).mean(1)
    samples_to_own = squared_distances_to(conditionings, sample_reps).mean(1)
    return {
        "figure_png": png,
        "query": names[0],
        "targets": names[1:],
        "pool": pool,
        "k": k,
        "metric": metric,
        "zero_threshold": threshold,
        "neighbors": {"indices": indices[0].tolist(), "distances": distances[0].tolist()},
        "masks": masks,
        "rows": [{**row[3], "label": row[0],
                  # Squared L2 of this conditioning to the original h: how big the edit is.
                  "sq_l2_to_original": float(to_original[i]),
                  # Mean squared L2 of the row's samples to the original h and to their own conditioning.
                  "samples_sq_l2_to_original": float(samples_to_original[i]),
                  "samples_sq_l2_to_conditioning": float(samples_to_own[i])}
                 for i, row in enumerate(rows)],
    }
