"""Nearest-neighbour search over representations: the one place every metric and figure gets neighbours and ranks.

Two backends give the *same* answers: ``exact`` (brute force in chunks of queries with torch, on the CPU or a GPU)
and ``faiss`` (an exact flat index, IndexFlatL2 / IndexFlatIP on normalised vectors, on the CPU; used only when
faiss is installed). Neither trusts its own float32 order: each bulk float32 distance carries a rigorous error bound
(``_tolerance``), and every comparison the bound cannot decide is re-made with the canonical float64 distance
(:func:`paired_distances`, subtract-then-square, so a duplicate gets exactly the same value as the original).
Hence the tie rules hold on both backends:

- a rank is ``1 + #{keys strictly closer than the target}``: a key tied with the target does not push it down;
- neighbours are ordered by (distance, key index): of two tied keys, the lower index comes first.

Memory is O(batch_size x len(keys)) for the exact backend and O(batch_size x candidates) for faiss, never
queries x keys.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_lab.errors import RCDMError

METRICS = ("l2", "cosine")
BACKENDS = ("auto", "exact", "faiss")

# Unit roundoff of float32: the bulk distances are float32 (twice the speed of float64 on a CPU, ~30x on most GPUs).
_U32 = 2.0 ** -24


def check_metric(metric: str) -> None:
    """Refuse a metric pairwise_distances does not know, naming the known ones (also used to check settings early)."""
    if metric not in METRICS:
        raise RCDMError(f"unknown distance metric {metric!r}; use one of {METRICS}")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise RCDMError(f"unknown neighbour-search backend {backend!r}; use one of {BACKENDS}")


def faiss_available() -> bool:
    # find_spec, not import: importing faiss costs ~0.3 s and loads OpenMP; only a faiss search should pay that.
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: faiss when it is installed and the search runs on the CPU (faiss-cpu has no GPU index), else exact."""
    check_backend(backend)
    if backend == "faiss" and not faiss_available():
        raise RCDMError("backend=faiss but faiss is not installed: pip install faiss-cpu, or use backend=exact "
                        "(same results, brute force)")
    if backend == "auto":
        return "faiss" if faiss_available() and device.type == "cpu" else "exact"
    return backend


def pairwise_distances(queries: Tensor, keys: Tensor, metric: str = "l2") -> Tensor:
    """(Q, K) distances: squared L2, or 1 - cosine similarity."""
    check_metric(metric)
    if metric == "l2":
        # Computed in float64: ||q||^2 + ||k||^2 - 2 q.k cancels badly in float32 for nearby points.
        q, k = queries.double(), keys.double()
        return (q.pow(2).sum(1, keepdim=True) + k.pow(2).sum(1) - 2 * q @ k.T).clamp_min(0)
    return 1 - F.normalize(queries.double(), dim=1) @ F.normalize(keys.double(), dim=1).T   # cosine


def paired_distances(a: Tensor, b: Tensor, metric: str = "l2") -> Tensor:
    """(N,) float64 distance of a[i] to b[i]: the canonical value every backend's comparisons are decided with.

    Subtract-then-square for l2 (no cancellation: a duplicate of a point is at exactly 0, two duplicates of a key
    are at exactly the same distance from any query); for cosine 1 - a.b / sqrt(|a|^2 |b|^2), one division of
    sums, so two keys with the same dot and norm (exact sums, e.g. small-integer vectors) tie exactly -- normalising
    each row first does not (measured: 1.1e-16 apart, which split such ties).
    """
    check_metric(metric)
    a, b = a.double(), b.to(a.device).double()
    if metric == "l2":
        return (a - b).pow(2).sum(1)
    norms = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt().clamp_min(1e-300)   # a zero vector: distance 1
    return 1 - (a * b).sum(1) / norms


def target_ranks(queries: Tensor, keys: Tensor, targets: Tensor, metric: str = "l2", batch_size: int = 1024,
                 backend: str = "auto", device: str | torch.device | None = None, candidates: int = 128) -> Tensor:
    """(Q,) rank (1 = nearest) of keys[targets[i]] among all keys by distance to queries[i], on the CPU.

    rank = 1 + number of keys strictly closer than the target (ties do not push it down). ``device``: where the
    exact search runs (default: the queries' device). ``candidates``: neighbours faiss returns per query; a query
    whose target lies beyond them is counted by the exact search instead (same result, slower), so a good model's
    small ranks are cheap and a bad model's large ones are still exact.
    """
    check_metric(metric)
    targets = torch.as_tensor(targets, dtype=torch.long)
    chosen, device = _backend_and_device(backend, device, queries)
    space = _Space(keys, metric, device, use_faiss=chosen == "faiss")
    ranks = []
    for start in range(0, len(queries), batch_size):
        chunk, own_keys = queries[start:start + batch_size], targets[start:start + batch_size]
        if chosen == "faiss":
            ranks.append(_faiss_ranks(space, chunk, own_keys, candidates))
        else:
            ranks.append(_exact_ranks(space, chunk, own_keys))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def nearest_neighbors(queries: Tensor, keys: Tensor, k: int = 1, metric: str = "l2", batch_size: int = 1024,
                      backend: str = "auto", device: str | torch.device | None = None,
                      ) -> tuple[Tensor, Tensor]:
    """Distances (float64) and indices (Q, k) of the k nearest keys of each query, ordered by (distance, index).

    In batches of queries on ``device`` (default: the queries' device); results on the queries' device.
    """
    check_metric(metric)
    if k > len(keys):
        raise RCDMError(f"asked for {k} neighbours among only {len(keys)} points")
    out_device = queries.device
    chosen, device = _backend_and_device(backend, device, queries)
    space = _Space(keys, metric, device, use_faiss=chosen == "faiss")
    distances, indices = [], []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start:start + batch_size]
        found = _faiss_neighbours(space, chunk, k) if chosen == "faiss" else _exact_neighbours(space, chunk, k)
        distances.append(found[0].to(out_device))
        indices.append(found[1].to(out_device))
    if not distances:
        return torch.zeros(0, k, dtype=torch.float64, device=out_device), torch.zeros(0, k, dtype=torch.long,
                                                                                    device=out_device)
    return torch.cat(distances), torch.cat(indices)


# ------------------------------------------------------------------------------------------------ internals
def _backend_and_device(backend: str, device: str | torch.device | None, queries: Tensor) -> tuple[str, torch.device]:
    device = torch.device(device) if device is not None else queries.device
    chosen = resolve_backend(backend, device)
    return chosen, torch.device("cpu") if chosen == "faiss" else device   # faiss-cpu searches on the CPU


class _Space:
    """The keys prepared once: raw (for canonical re-checks) and float32 bulk vectors, plus the bulk error scale.

    l2 keys are centred on their float32-rounded mean first: distances do not change, but the ||q||^2 + ||k||^2
    terms that the float32 error is proportional to shrink by the large common offset of post-ReLU features.
    """

    def __init__(self, keys: Tensor, metric: str, device: torch.device, use_faiss: bool = False) -> None:
        self.metric, self.device, self.raw = metric, device, keys
        if keys.ndim != 2:
            raise RCDMError(f"keys must be (K, D), got shape {tuple(keys.shape)}")
        self.centre = keys.mean(0, dtype=torch.float64).float().to(device) if metric == "l2" else None
        self._index: Any = None
        if use_faiss:
            self.bulk = self._faiss_bulk()
        else:
            self.bulk = torch.cat([self.prepare(keys[start:start + 8192]) for start in range(0, len(keys), 8192)])
        self.max_norm = float(self.bulk.pow(2).sum(1).max()) if metric == "l2" and len(keys) else 1.0

    def _faiss_bulk(self) -> Tensor:
        """The flat index, filled in slices, and its storage as the bulk keys: one float32 copy of the keys, not two
        (400 MB less at 50 000 x 2048)."""
        import faiss

        dim = self.raw.shape[1]
        self._index = (faiss.IndexFlatL2 if self.metric == "l2" else faiss.IndexFlatIP)(dim)
        for start in range(0, len(self.raw), 8192):
            self._index.add(self.prepare(self.raw[start:start + 8192]).contiguous().numpy())
        storage = faiss.rev_swig_ptr(self._index.get_xb(), len(self.raw) * dim)
        return torch.from_numpy(storage).view(len(self.raw), dim)

    def prepare(self, queries: Tensor) -> Tensor:
        queries = queries.to(self.device).float()
        return queries - self.centre if self.metric == "l2" else F.normalize(queries, dim=1)

    def tolerance(self, prepared: Tensor) -> Tensor:
        """(Q,) bound on |float32 bulk distance - true distance|, rigorous (Higham's gamma_D for a D-term dot).

        l2: |err| <= 2 gamma_D (||q||^2 + ||k||^2) for q.k and the norms; cosine: gamma_D plus the normalisation's
        few ulps, on unit vectors. x4 covers the float32 rounding of the inputs and of the final sum. For 2048-d
        features that is 2.4e-4 of the scale: only near-ties get re-checked in float64.
        """
        gamma = (prepared.shape[1] + 2) * _U32
        scale = (prepared.pow(2).sum(1) + self.max_norm) if self.metric == "l2" else torch.full(
            (len(prepared),), 2.0, device=prepared.device)
        return 4 * gamma * scale.double()

    def bulk_distances(self, prepared: Tensor) -> Tensor:
        with _exact_float32_matmul():
            if self.metric == "l2":
                return prepared.pow(2).sum(1, keepdim=True) + self.bulk.pow(2).sum(1) - 2 * prepared @ self.bulk.T
            return 1 - prepared @ self.bulk.T

    def canonical(self, queries: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Canonical float64 distances of queries[rows] to keys[cols] (pairs), in slices to bound memory."""
        out = []
        for start in range(0, len(rows), 65536):
            r, c = rows[start:start + 65536], cols[start:start + 65536]
            out.append(paired_distances(queries[r.to(queries.device)].to(self.device),
                                        self.raw[c.to(self.raw.device)].to(self.device), self.metric))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=self.device)

    def index(self) -> Any:
        if self._index is None:
            raise RuntimeError("_Space was built without a faiss index (use_faiss=False)")
        return self._index


@contextmanager
def _exact_float32_matmul():
    # TF32 (what torch.set_float32_matmul_precision("high") in training turns on) has a 10-bit mantissa: the error
    # bound above would not hold. Off for the search, the caller's setting restored afterwards.
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _own_distances(space: _Space, queries: Tensor, targets: Tensor) -> Tensor:
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(space.raw):
        raise RCDMError(f"targets must index the {len(space.raw)} keys")
    rows = torch.arange(len(queries))
    return space.canonical(queries, rows, targets)


def _count_closer(space: _Space, queries: Tensor, bulk: Tensor, cols: Tensor | None, own: Tensor,
                  tol: Tensor) -> Tensor:
    """Per row, the keys (all of them, or the candidate columns `cols`) strictly closer than `own`, exactly."""
    # Compared in float32, never a float64 copy of the chunk (it would double the ranking's peak memory): the
    # thresholds are widened by the float32 rounding of own +- tol, so what they decide stays decided exactly.
    widened = tol + 4 * _U32 * (own.abs() + tol)
    low = (own - widened)[:, None].to(bulk.device, torch.float32)
    high = (own + widened)[:, None].to(bulk.device, torch.float32)
    count = (bulk < low).sum(1)
    band = (bulk >= low) & (bulk <= high)   # undecided by the float32 value: re-check canonically
    rows, where = band.nonzero(as_tuple=True)
    if len(rows):
        key_cols = where if cols is None else cols[rows, where]
        closer = space.canonical(queries, rows, key_cols) < own.to(space.device)[rows.to(space.device)]
        count = count + torch.zeros_like(count).index_add_(0, rows, closer.to(count.device, count.dtype))
    return count


def _exact_ranks(space: _Space, queries: Tensor, targets: Tensor) -> Tensor:
    own = _own_distances(space, queries, targets)
    prepared = space.prepare(queries)
    closer = _count_closer(space, queries, space.bulk_distances(prepared), None, own, space.tolerance(prepared))
    return (1 + closer).cpu()


def _faiss_ranks(space: _Space, queries: Tensor, targets: Tensor, candidates: int) -> Tensor:
    own = _own_distances(space, queries, targets).cpu()
    prepared = space.prepare(queries).cpu()
    tol = space.tolerance(prepared).cpu()
    found, cols = _faiss_search(space, prepared, min(candidates, len(space.raw)))
    ranks = 1 + _count_closer(space, queries.cpu(), found, cols, own, tol)
    # Decided when the last candidate is surely farther than the target: every other key is then farther too.
    widened = tol + 4 * _U32 * (own.abs() + tol)
    undecided = (found[:, -1].double() <= own + widened) & (found.shape[1] < len(space.raw))
    if undecided.any():
        rows = undecided.nonzero(as_tuple=True)[0]
        ranks[rows] = _exact_ranks(space, queries[rows.to(queries.device)], targets[rows.to(targets.device)])
    return ranks


def _select(space: _Space, queries: Tensor, rows: Tensor, cols: Tensor, num_rows: int, k: int,
            ) -> tuple[Tensor, Tensor]:
    """The k nearest of each row's candidate columns by (canonical distance, index); rows/cols row-major sorted."""
    distances = space.canonical(queries, rows, cols).cpu()
    rows, cols = rows.cpu(), cols.cpu()
    counts = torch.bincount(rows, minlength=num_rows)
    width = int(counts.max())
    position = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    padded = torch.full((num_rows, width), float("inf"), dtype=torch.float64)
    padded_cols = torch.full((num_rows, width), -1, dtype=torch.long)
    # Candidates sit in increasing key order within a row, so a stable sort breaks distance ties by index.
    order = cols.argsort(stable=True)
    order = order[rows[order].argsort(stable=True)]
    padded[rows[order], position] = distances[order]
    padded_cols[rows[order], position] = cols[order]
    values, picked = padded.sort(dim=1, stable=True)
    return values[:, :k], padded_cols.gather(1, picked)[:, :k]


def _exact_neighbours(space: _Space, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    prepared = space.prepare(queries)
    bulk = space.bulk_distances(prepared).double()
    tol = space.tolerance(prepared)[:, None]
    kth = bulk.topk(k, dim=1, largest=False).values[:, -1:]
    # The true k-th distance is <= kth + tol, so any key of the true top k has a bulk distance <= kth + 2 tol.
    rows, cols = (bulk <= kth + 2 * tol).nonzero(as_tuple=True)
    return _select(space, queries, rows, cols, len(queries), k)


def _faiss_neighbours(space: _Space, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    prepared = space.prepare(queries).cpu()
    tol = space.tolerance(prepared).cpu()[:, None]
    found, cols = _faiss_search(space, prepared, min(len(space.raw), 2 * k + 16))
    kth = found[:, k - 1:k].double()
    keep = found.double() <= kth + 2 * tol
    undecided = (found[:, -1:].double() <= kth + 2 * tol).squeeze(1) & (found.shape[1] < len(space.raw))
    rows, where = keep.nonzero(as_tuple=True)
    # faiss orders candidates by float32 distance; _select needs them by key index within a row.
    values, indices = _select(space, queries.cpu(), rows, cols[rows, where], len(queries), k)
    if undecided.any():
        redo = undecided.nonzero(as_tuple=True)[0]
        values[redo], indices[redo] = _exact_neighbours(space, queries[redo.to(queries.device)], k)
    return values, indices


def _faiss_search(space: _Space, prepared: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """(Q, count) float32 distances ascending and key indices from the flat index (IP turned into 1 - IP)."""
    found, cols = space.index().search(prepared.contiguous().numpy(), count)
    found, cols = torch.from_numpy(found), torch.from_numpy(cols).long()
    return (found if space.metric == "l2" else 1 - found), cols
