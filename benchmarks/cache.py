"""Training throughput with the representation cache vs computing the encoder every step (`make bench-cache`).

The paper's official convention: a ResNet-50 seeing 224 px inputs normalised to [-1, 1] (encoder.input_norm=
official), the demo-sized UNet at 32 px, batch 32. Random ResNet-50 weights (offline; the cost is the same).
Cache building is excluded from the timing (it is built first); each mode runs `--warmup` steps, then the
time of the next `--steps` steps is measured between the ends of training batches (data loading included).

    python benchmarks/cache.py [--steps 10] [--warmup 3] [--num-train 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# The demo UNet (conf/recipe/cpu.yaml) without the rest of the recipe (resume, Min-SNR, condition dropout, data sizes).
DEMO_UNET = [
    "model.unet.model_channels=32",
    "model.unet.num_res_blocks=1",
    "model.unet.resblock_updown=false",
    "model.unet.dropout=0.0",
]


class StepTimer(L.Callback):
    """perf_counter at the end of every training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.times.append(time.perf_counter())


def compose(cache: bool, args: argparse.Namespace, output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    overrides = [
        "encoder=resnet50",
        "encoder.weights=random",
        "encoder.input_size=224",
        "encoder.input_norm=official",
        "layer=backbone",
        "resolution=32px",
        *DEMO_UNET,
        "data.batch_size=32",
        f"data.cache={str(cache).lower()}",
        f"data.cache_dir={args.cache_dir}",
        f"data.dataset.num_train={args.num_train}",
        "data.dataset.num_val=8",
        "data.num_workers=0",
        f"trainer.max_steps={args.warmup + args.steps}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        "callbacks.checkpoint=null",
        "callbacks.preview=null",
        "~logger",
        f"output_dir={output_dir}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def images_per_second(cache: bool, args: argparse.Namespace) -> float:
    from rcdm_lab.cli.train import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(cache, args, Path(tmp))
        L.seed_everything(0, verbose=False)
        module, datamodule, trainer = build(cfg)
        if cache:
            start = time.perf_counter()
            datamodule.prepare_data()  # built (or found) before the clock starts
            print(f"  cache ready in {time.perf_counter() - start:.1f} s (not timed)")
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=datamodule)
    times = timer.times[args.warmup - 1:]  # the end of the last warm-up step starts the clock
    if len(times) < 2:
        raise RuntimeError(f"only {len(timer.times)} training steps ran; expected {args.warmup + args.steps}")
    return cfg.data.batch_size * (len(times) - 1) / (times[-1] - times[0])


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
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-50 (random) at 224 px, "
          f"input_norm=official, demo UNet at 32 px, batch 32, {args.warmup} warm-up + {args.steps} timed steps")
    results = {}
    for cache in (True, False):
        label = "cache" if cache else "live encoder"
        print(f"{label}:")
        results[label] = images_per_second(cache, args)
        print(f"  {results[label]:.1f} img/s")
    ratio = results["cache"] / results["live encoder"]
    print(f"cached {results['cache']:.1f} img/s vs live encoder {results['live encoder']:.1f} img/s: "
          f"{ratio:.1f}x faster with the cache")


if __name__ == "__main__":
    main()
