"""Training throughput with the representation cache vs computing the encoder every step (`make bench-cache`).

The paper's official convention: a ResNet-50 seeing 224 px inputs normalised to [-1, 1] (encoder.input_norm=
official), here with the demo-sized UNet at 32 px, batch 32 (`make bench` measures the same with the ADM-sized
UNet). Random ResNet-50 weights (offline; the cost is the same). Cache building is excluded from the timing; each
mode runs `--warmup` steps, then the next `--steps` steps are timed between the ends of training batches (data
loading included). The measurement itself is benchmarks/bench.py's `measure_training`.

    python benchmarks/cache.py [--steps 10] [--warmup 3] [--num-train 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import isolated, measure_training  # noqa: E402  (a sibling script, not a package)

# The demo UNet (conf/recipe/cpu.yaml) without the rest of the recipe (resume, Min-SNR, condition dropout, data sizes).
DEMO_UNET = [
    "resolution=32px",
    "model.unet.model_channels=32",
    "model.unet.num_res_blocks=1",
    "model.unet.resblock_updown=false",
    "model.unet.dropout=0.0",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    parser.add_argument("--num-train", type=int, default=256, help="shapes training items (cached once)")
    parser.add_argument("--cache-dir", default=".cache/rcdm_lab", help="where the representation cache lives")
    parser.add_argument("--precision", default="auto", help="trainer.precision (auto: from the hardware)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    print(f"ResNet-50 (random) at 224 px, input_norm=official, demo UNet at 32 px, batch 32, {args.warmup} warm-up "
          f"+ {args.steps} timed steps")
    results = {}
    for cache, label in ((True, "cache"), (False, "live encoder")):
        results[label] = isolated(measure_training, cache, args.precision, args.warmup, args.steps, args.cache_dir,
                                  DEMO_UNET, args.num_train)
        m = results[label]
        print(f"{label}: {m.value:.1f} img/s ({m.precision}, {m.threads} threads, peak {m.peak_memory_mb:.0f} MB)")
    ratio = results["cache"].value / results["live encoder"].value
    print(f"cached {results['cache'].value:.1f} img/s vs live encoder {results['live encoder'].value:.1f} img/s: "
          f"{ratio:.1f}x faster with the cache")


if __name__ == "__main__":
    main()
