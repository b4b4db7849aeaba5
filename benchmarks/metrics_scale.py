"""Metrics at the paper's scale on synthetic data: ranking 50 000 x 50 000 representations, FID/KID over 50 000.

- ranking: ``conditioning_ranks`` of n samples among a gallery of n representations (Table 1b's setting); the
  samples are noisy copies of their conditionings, so ranks are small, as for a faithful model (a model whose
  ranks exceed the faiss candidates makes the faiss backend fall back to the exact count: slower, same ranks);
- FID stream: n synthetic post-ReLU-like features per side fed in batches through FeatureStats and the KID
  reservoir (never all in memory), then FID from the statistics and KID on the subsets.

Each measurement runs in a fresh spawned process (peak RSS is the process's own, as ru_maxrss reports it; on a GPU,
also the peak allocated CUDA memory). `make bench` prints these rows through benchmarks/bench.py.

    python benchmarks/metrics_scale.py [--n 50000] [--dim 2048] [--backend auto|exact|faiss] [--device cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kilobytes


def _cuda_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def measure_ranking(n: int = 50_000, dim: int = 2048, backend: str = "auto", device: str = "cpu",
                    batch_size: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Seconds and peak memory of ranking n samples among n gallery representations (run it in a fresh process)."""
    import torch

    from rcdm_lab.metrics.faithfulness import conditioning_ranks
    from rcdm_lab.metrics.knn import resolve_backend

    baseline = _rss_mb()
    generator = torch.Generator().manual_seed(seed)
    # ReLU'd Gaussians (a shared positive offset, like pooled CNN features); samples = conditioning + noise.
    gallery = torch.randn(n, dim, generator=generator).relu_()
    samples = gallery.clone().add_(torch.randn(n, dim, generator=generator), alpha=0.8)
    gallery, samples = gallery.to(device), samples.to(device)
    chosen = resolve_backend(backend, torch.device(device))
    start = time.perf_counter()
    ranks = conditioning_ranks(samples, gallery, torch.arange(n), batch_size=batch_size, backend=backend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"n": n, "dim": dim, "backend": chosen, "device": device, "seconds": seconds, "peak_mb": _rss_mb(),
            "baseline_mb": baseline, "inputs_mb": 2 * n * dim * 4 / 2**20, "cuda_peak_mb": _cuda_peak_mb(device),
            "mean_rank": float(ranks.double().mean()), "threads": torch.get_num_threads()}


def measure_fid_stream(n: int = 50_000, dim: int = 2048, batch: int = 1000, kid_max_features: int = 10_000,
                       seed: int = 0) -> dict[str, Any]:
    """Seconds and peak memory of FID/KID over n synthetic features per side, streamed in batches."""
    import torch

    from rcdm_lab.metrics.feature_stats import FeatureReservoir, FeatureStats, FeatureSummary
    from rcdm_lab.metrics.fid import summary_distances

    baseline = _rss_mb()
    start = time.perf_counter()
    sides = []
    for side, scale in enumerate((1.0, 1.1)):
        generator = torch.Generator().manual_seed(seed + side)
        stats, reservoir = FeatureStats(dim), FeatureReservoir(kid_max_features, seed + side)
        for first in range(0, n, batch):
            features = torch.randn(min(batch, n - first), dim, generator=generator, dtype=torch.float64)
            features = features.relu_().mul_(scale)
            stats.update(features)
            reservoir.update(features)
        sides.append(FeatureSummary.from_stream(stats, reservoir, f"synthetic {side}"))
    streamed = time.perf_counter()
    # conf/metric/fid.yaml's KID: 100 subsets of 100 (torch-fidelity's 1000-image subsets cost ~9x more here).
    result = summary_distances(sides[0], sides[1], kid_subset_size=100, kid_subsets=100, seed=seed)
    return {"n": n, "dim": dim, "seconds": time.perf_counter() - start, "stream_seconds": streamed - start,
            "peak_mb": _rss_mb(), "baseline_mb": baseline, "features_mb": 2 * n * dim * 8 / 2**20,
            "kid_features": kid_max_features, "threads": torch.get_num_threads(), **result}


def isolated(fn, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """fn(*args) in a fresh spawned process: its own peak memory (as benchmarks/bench.py's isolated)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--backend", default="auto", choices=("auto", "exact", "faiss"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rank = isolated(measure_ranking, args.n, args.dim, args.backend, args.device)
    cuda = f", CUDA peak {rank['cuda_peak_mb']:.0f} MB" if rank["cuda_peak_mb"] is not None else ""
    print(f"rank {args.n}x{args.n}: {rank['seconds']:.1f} s, peak {rank['peak_mb']:.0f} MB "
          f"({args.dim}-d, backend {rank['backend']} on {rank['device']}, {rank['threads']} threads; "
          f"process baseline {rank['baseline_mb']:.0f} MB, inputs {rank['inputs_mb']:.0f} MB{cuda}; "
          f"mean rank {rank['mean_rank']:.2f})")
    fid = isolated(measure_fid_stream, args.n, args.dim)
    print(f"FID {args.n} features: {fid['seconds']:.1f} s, peak {fid['peak_mb']:.0f} MB "
          f"({args.dim}-d, streamed in batches of 1000, KID on {fid['kid_features']} per side; stream "
          f"{fid['stream_seconds']:.1f} s; baseline {fid['baseline_mb']:.0f} MB; both sides' features would be "
          f"{fid['features_mb']:.0f} MB; fid={fid['fid']:.4g}, kid={fid['kid_mean']:.4g})")


if __name__ == "__main__":
    main()
