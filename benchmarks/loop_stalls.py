"""What keeps a training loop waiting: checkpoint writes and data loading (issue 13, item 5).

- checkpoint: how long `save_checkpoint` holds the loop for the paper's UNet (conf/model/adm_official.yaml at 128 px)
  with its EMA copy and Adam's two moments, written synchronously (AtomicCheckpointIO) against in a background
  thread (Lightning's AsyncCheckpointIO around it: the loop only waits for the tensors to be cloned); needs ~14 GB
  of memory (the payload and its clone);
- data loading: cached training items per second through the data module's DataLoader with 0, 1 and 2 workers
  (persistent, pinned memory where CUDA is available), the rate a training step has to beat to never wait.

    python benchmarks/loop_stalls.py [--rows checkpoint loader] [--loader-items 2048]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def checkpoint_payload(resolution: int = 128) -> tuple[dict, int]:
    """A Lightning-like checkpoint of the paper's UNet: weights, EMA weights, Adam's exp_avg and exp_avg_sq."""
    import torch
    from bench import compose_train
    from hydra.utils import instantiate

    cfg = compose_train(["model=adm_official", f"resolution={resolution}px"])
    unet = instantiate(cfg.model.unet, image_size=resolution, ssl_dim=2048, out_channels=6, learn_null_cond=True,
                       _convert_="all")
    weights = unet.state_dict()
    params = sum(t.numel() for t in weights.values())

    def copy(tag: str) -> dict:
        return {f"{tag}.{k}": torch.randn_like(v.float()) for k, v in weights.items()}

    return {"state_dict": {**weights, **copy("ema")}, "optimizer": {**copy("exp_avg"), **copy("exp_avg_sq")}}, params


def measure_checkpoint(repeats: int = 2) -> dict[str, float]:
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    from rcdm_lab.training.checkpoint_io import AtomicCheckpointIO

    payload, params = checkpoint_payload()
    result = {"params_M": params / 1e6}
    with tempfile.TemporaryDirectory() as folder:
        for name, io in (("sync", AtomicCheckpointIO()), ("async", AsyncCheckpointIO(AtomicCheckpointIO()))):
            held, joined = [], []
            for index in range(repeats):
                start = time.perf_counter()
                io.save_checkpoint(payload, Path(folder) / f"{name}{index}.ckpt")
                held.append(time.perf_counter() - start)
                # Join before the next one, as in training (checkpoints are hundreds of steps apart): two writes in
                # flight would hold three copies of the 6.4 GB payload (a 24 GB machine ran out of memory).
                finish = time.perf_counter()
                io.teardown()
                joined.append(time.perf_counter() - finish)
            result[f"{name}_loop_s"] = min(held)
            result[f"{name}_join_s"] = min(joined)
        result["size_MB"] = (Path(folder) / "sync0.ckpt").stat().st_size / 2**20
    return result


def measure_loader(items: int, workers: list[int], batch: int = 32, epochs: int = 2) -> dict[int, float]:
    """Cached demo items/s (MobileNetV2 112 px on shapes: memmap reads, no decoding) per worker count."""
    import torch
    from bench import compose_train
    from hydra.utils import instantiate

    from rcdm_lab.cli.train import encoder_spec
    from rcdm_lab.encoders import build_encoder

    warnings.filterwarnings("ignore")
    rates = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for count in workers:
            cfg = compose_train(["experiment=demo", f"data.dataset.num_train={items}", "data.dataset.num_val=64",
                                 f"data.cache_dir={cache_dir}", f"data.num_workers={count}",
                                 f"data.batch_size={batch}"])
            datamodule = instantiate(cfg.data)
            datamodule.attach_encoder(build_encoder(**encoder_spec(cfg)), device="cpu")
            datamodule.prepare_data()
            datamodule.setup("fit")
            loader = datamodule.train_dataloader()
            for _ in loader:   # first epoch starts the (persistent) workers
                pass
            start, seen = time.perf_counter(), 0
            for _ in range(epochs):
                for batch_items in loader:
                    seen += len(batch_items["x0"])
            rates[count] = seen / (time.perf_counter() - start)
            del loader
    print(f"(pin_memory={torch.cuda.is_available()}: only with CUDA)")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["checkpoint", "loader"])
    parser.add_argument("--loader-items", type=int, default=2048)
    args = parser.parse_args()
    if "checkpoint" in args.rows:
        c = measure_checkpoint()
        print(f"checkpoint ({c['params_M']:.0f} M-parameter UNet, {c['size_MB']:.0f} MB): loop held "
              f"{c['sync_loop_s']:.2f} s sync, {c['async_loop_s']:.2f} s async (writer joins "
              f"{c['async_join_s']:.2f} s later, off the loop)")
    if "loader" in args.rows:
        rates = measure_loader(args.loader_items, [0, 1, 2])
        print("data loading, cached demo items: " + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in rates.items()))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
