"""`make bench`: the project's hot paths, each measured in the same run as the reference it is judged against.

Every measurement runs in a fresh spawned process, one after another, so its peak memory (RSS on CPU, max allocated
on CUDA) is its own and no measurement warms another's caches. Each row prints its precision and threads.

- training (goal >= 3x): the UNet with cached h (Lightning fit, data loading included) against the same UNet with
  the ResNet-50 at 224 px computed every step (the official pipeline's work);
- cache build (goal >= 0.8): RCDMDataModule.prepare_data (render or decode, resize, encode, write) against the
  encoder's network on ready tensors of its input size, same batch;
- FID features (goal >= 0.9): extract_features on images at the model's resolution against the TorchScript
  Inception on ready 299 px tensors; and the cost of FID and KID themselves;
- sampling: RCDMPipeline.sample per sampler at the demo config;
- at scale (plain lines after the table, issue 13): FolderDataset construction over 200 000 generated files without
  and with its file index; ranking 50 000 x 50 000 synthetic representations and FID/KID over 50 000 synthetic
  features, with time and peak memory; how long a checkpoint of the paper's UNet holds the training loop.

The training row uses the issue's `model=adm`-like UNet at 32 px (64 channels, mult 1,2,2, attention at 16, 2 res
blocks, resblock up/down, h of dim 2048) at batch 32, with random weights (speed does not depend on them).

    python benchmarks/bench.py [--rows training cache fid fid_cost sampling folder_index rank fid_stream loop_stalls]
                               [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import lightning as L  # noqa: E402  (after the environment defaults above)

# The model=adm_official-like UNet at 32 px (conf/model/adm.yaml with attention moved to 16 px).
ADM_LIKE_UNET = ["model=adm", "resolution=32px", "unet_layout.attention_resolutions=[16]", "model.unet.dropout=0.0"]
TRAIN_BATCH = 32


@dataclass
class Measurement:
    what: str
    value: float             # img/s (or seconds for a cost row)
    unit: str
    precision: str
    threads: int
    peak_memory_mb: float
    detail: dict[str, Any] = field(default_factory=dict)


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kilobytes


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a fresh spawned process: its own peak memory, nothing shared with the other measurements."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ------------------------------------------------------------------------------------------------ training
class StepTimer(L.Callback):
    """perf_counter at the end of every training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def measure_training(cache: bool, precision: str, warmup: int, steps: int, cache_dir: str,
                     unet: list[str] = ADM_LIKE_UNET, num_train: int = 2 * TRAIN_BATCH) -> Measurement:
    """Training img/s over `steps` steps after `warmup` (Lightning fit, data loading included): cached h, or the
    ResNet-50 (random weights, 224 px, official [-1, 1] input) run on every batch."""
    import torch

    from rcdm_lab.cli.train import build

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train([
            "encoder=resnet50", "encoder.weights=random", "encoder.input_size=224", "encoder.input_norm=official",
            "layer=backbone", *unet, f"data.batch_size={TRAIN_BATCH}",
            f"data.cache={str(cache).lower()}",
            f"data.cache_dir={cache_dir}", f"data.dataset.num_train={num_train}", "data.dataset.num_val=8",
            "data.flip=false", "data.num_workers=0", f"trainer.max_steps={warmup + steps}",
            f"trainer.precision={precision}", "trainer.enable_progress_bar=false",
            "+trainer.enable_checkpointing=false", "callbacks.checkpoint=null", "callbacks.preview=null", "~logger",
            f"output_dir={tmp}",
        ])
        L.seed_everything(0, verbose=False)
        module, datamodule, trainer = build(cfg)
        datamodule.prepare_data()   # the cache exists before the clock starts (its cost is the cache-build row)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=datamodule)
        chosen = str(trainer.precision)
    times = timer.times[warmup - 1:]
    rate = TRAIN_BATCH * (len(times) - 1) / (times[-1] - times[0])
    what = "cached h" if cache else "ResNet-50 224 px every step"
    return Measurement(what, rate, "img/s", chosen, _threads(), _peak_memory_mb(),
                       {"s_per_step": TRAIN_BATCH / rate, "params_M": sum(p.numel() for p in module.unet.parameters())
                        / 1e6, "torch": torch.__version__})


# ------------------------------------------------------------------------------------------------ cache build
def _datamodule(data_overrides: list[str], encoder_overrides: list[str], cache_dir: str):
    from hydra.utils import instantiate

    from rcdm_lab.cli.train import encoder_spec
    from rcdm_lab.encoders import build_encoder

    cfg = compose_train([*encoder_overrides, *data_overrides, f"data.cache_dir={cache_dir}"])
    encoder = build_encoder(**encoder_spec(cfg))
    datamodule = instantiate(cfg.data)
    datamodule.attach_encoder(encoder, device="cpu")
    return cfg, encoder, datamodule


def measure_cache_build(data_overrides: list[str], encoder_overrides: list[str]) -> Measurement:
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as cache_dir:
        cfg, encoder, datamodule = _datamodule(data_overrides, encoder_overrides, cache_dir)
        items = sum(len(datamodule.dataset(split)) * (2 if datamodule.flips(split) else 1)
                    for split in ("train", "val"))
        start = time.perf_counter()
        datamodule.prepare_data()
        seconds = time.perf_counter() - start
    return Measurement("RCDMDataModule.prepare_data", items / seconds, "encodings/s", "32 (encoders run fp32)",
                       _threads(), _peak_memory_mb(), {"encodings": items, "seconds": seconds,
                                                        "batch": datamodule.cache_batch_size,
                                                        "num_workers": datamodule.num_workers,
                                                        "input_size": encoder.input_size})


def measure_encoder_forward(data_overrides: list[str], encoder_overrides: list[str], count: int) -> Measurement:
    import torch

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as cache_dir:
        _, encoder, datamodule = _datamodule(data_overrides, encoder_overrides, cache_dir)
    batch, size = datamodule.cache_batch_size, encoder.input_size
    # Ready tensors at the input size: the encoder's own forward (normalise, network, pool) with nothing to resize.
    pixels = torch.rand(batch, 3, size, size)
    encoder(pixels)
    encoder(pixels)   # warm-up: oneDNN picks its kernels on the first calls
    start = time.perf_counter()
    done = 0
    while done < max(count, 4 * batch):
        encoder(pixels)
        done += batch
    seconds = time.perf_counter() - start
    return Measurement(f"bare {encoder.name} forward at {size} px", done / seconds, "encodings/s", "32",
                       _threads(), _peak_memory_mb(), {"batch": batch})


def write_jpeg_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs of 300-500 px cut from scikit-image's bundled photos, in two class folders (ImageNet-like)."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    sources = [getattr(photos, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(seed)
    for index in range(count):
        source = sources[index % len(sources)]
        height, width = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        image = Image.fromarray(source[..., :3]).resize((width, height))
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:05d}.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------------------------ FID
def measure_fid_features(project: bool, count: int, resolution: int) -> Measurement:
    import torch

    from rcdm_lab.metrics.fid import INCEPTION_SIZE, InceptionFeatures, extract_features

    warnings.filterwarnings("ignore")
    network = InceptionFeatures()
    batch = 64
    if project:
        images = torch.rand(count, 3, resolution, resolution)
        for _ in range(2):   # warm-up, as for the bare network: oneDNN picks its kernels on the first calls
            extract_features(images[:batch], network)
        start = time.perf_counter()
        extract_features(images, network, batch_size=batch)
        what = f"extract_features from {resolution} px"
    else:
        pixels = torch.rand(batch, 3, INCEPTION_SIZE, INCEPTION_SIZE) * 2 - 1
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            network.net(pixels)
            network.net(pixels)
            start = time.perf_counter()
            for _ in range(count // batch):
                network.net(pixels)
        what = "bare Inception at 299 px"
    seconds = time.perf_counter() - start
    return Measurement(what, count / seconds, "img/s", "32", _threads(), _peak_memory_mb(), {"batch": batch})


def measure_fid_cost(count: int) -> Measurement:
    import torch

    from rcdm_lab.metrics.fid import feature_distances

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(count, 2048, generator=generator, dtype=torch.float64)
    fake = torch.rand(count, 2048, generator=generator, dtype=torch.float64) * 1.1
    timings = {}
    for metric in ("fid", "kid"):
        start = time.perf_counter()
        feature_distances(real, fake, metrics=(metric,))
        timings[metric] = time.perf_counter() - start
    return Measurement(f"FID + KID of {count} vs {count} 2048-d features", sum(timings.values()), "s", "64",
                       _threads(), _peak_memory_mb(), {f"{k}_s": v for k, v in timings.items()})


# ------------------------------------------------------------------------------------------------ sampling
def measure_sampling(sampler: str, steps: int, guidance: float, count: int) -> Measurement:
    import torch
    from omegaconf import OmegaConf

    from rcdm_lab.cli.train import build
    from rcdm_lab.pipeline import RCDMPipeline

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        # The demo's UNet and diffusion with random weights (sampling speed does not depend on them).
        cfg = compose_train(["experiment=demo", "encoder.weights=random", "~logger", f"output_dir={tmp}",
                             "data.cache=false"])
        L.seed_everything(0, verbose=False)
        module, _, _ = build(cfg)
    pipeline = RCDMPipeline(unet=module.unet.eval(), diffusion=module.diffusion, encoder=None,
                            resolution=int(cfg.resolution))
    h = torch.randn(count, module.unet.ssl_dim)
    settings = {**OmegaConf.to_container(cfg.sampling, resolve=True), "sampler": sampler, "steps": steps,
                "guidance": guidance, "progress": False}
    pipeline.sample(h[: settings["batch_size"]], sampler=sampler, steps=2, guidance=guidance)   # warm-up
    start = time.perf_counter()
    pipeline.sample(h, **settings)
    seconds = time.perf_counter() - start
    from rcdm_lab.precision import resolve_precision

    chosen = resolve_precision(settings["precision"], "cpu").value
    return Measurement(f"{sampler} {steps} steps, guidance {guidance:g}", count / seconds, "img/s", chosen, _threads(),
                       _peak_memory_mb(), {"batch": settings["batch_size"], "ms_per_image_step":
                                           1000 * seconds / count / steps})


# ------------------------------------------------------------------------------------------------ scale
# Plain lines whose wording the issue fixes (`folder index: N files, first A s, second B s`, `rank NxN ...`), each
# measured in its own process like the table's rows, and judged against its goal on the same line.
def folder_index_line(num_files: int) -> str:
    """FolderDataset construction over a generated folder: without its file index, then reusing it."""
    from folder_index import generate_folder, measure_folder_index

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        generate_folder(root, num_files)
        result = isolated(measure_folder_index, root, Path(tmp) / "index")
    goal = "met" if result["second_s"] <= 5 else "NOT met"
    return (f"folder index: {result['files']} files, first {result['first_s']:.1f} s, second {result['second_s']:.1f} s"
            f" (goal second <= 5 s: {goal}; first = listing + stat, no decoding)")


def rank_line(n: int, dim: int) -> str:
    from metrics_scale import measure_ranking

    result = isolated(_with_peak, measure_ranking, n, dim)
    full_matrix_mb = n * n * 8 / 2**20
    # The goal: an 8 GB laptop ranks Table 1b's 50 000 conditionings (the inputs themselves are n x dim x 2 floats).
    goal = "met" if result["peak_mb"] <= 4096 else "NOT met"
    return (f"rank {n}x{n} ({dim}-d, {result.get('backend', '?')}): {result['seconds']:.1f} s, "
            f"peak {result['peak_mb']:.0f} MB (goal <= 4096 MB: {goal}; the two inputs are "
            f"{2 * n * dim * 4 / 2**20:.0f} MB, the full distance matrix alone would be {full_matrix_mb:.0f} MB)")


def fid_stream_line(n: int, dim: int) -> str:
    """Streamed FID/KID at n and at n / 5 features per side: the goal is a peak that does not grow with n."""
    from metrics_scale import measure_fid_stream

    small = isolated(_with_peak, measure_fid_stream, n // 5, dim)
    result = isolated(_with_peak, measure_fid_stream, n, dim)
    features_mb = n * dim * 8 / 2**20
    goal = "met" if result["peak_mb"] <= 1.1 * small["peak_mb"] else "NOT met"
    return (f"FID {n} features ({dim}-d, streamed, KID on a bounded subset): {result['seconds']:.1f} s, "
            f"peak {result['peak_mb']:.0f} MB (goal: within 10% of the peak at {n // 5} features, "
            f"{small['peak_mb']:.0f} MB: {goal}; holding both sides' features would take {2 * features_mb:.0f} MB)")


def loop_stall_lines() -> list[str]:
    from loop_stalls import measure_checkpoint

    c = isolated(measure_checkpoint)
    return [f"checkpoint ({c['params_M']:.0f} M-parameter UNet + EMA + Adam, {c['size_MB']:.0f} MB): the training loop "
            f"waits {c['sync_loop_s']:.2f} s written in place, {c['async_loop_s']:.2f} s written in the background"]


def _with_peak(fn: Callable[..., dict], *args: Any) -> dict:
    start = time.perf_counter()
    result = dict(fn(*args))
    result.setdefault("seconds", time.perf_counter() - start)
    result["peak_mb"] = _peak_memory_mb()
    return result


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Row:
    name: str
    project: Measurement
    reference: Measurement | None
    goal: float | None

    @property
    def ratio(self) -> float | None:
        if self.reference is None:
            return None
        return self.project.value / self.reference.value

    def line(self) -> str:
        def cell(m: Measurement) -> str:
            return (f"{m.what}: {m.value:.3g} {m.unit} ({m.precision}, {m.threads} threads, "
                    f"peak {m.peak_memory_mb:.0f} MB)")

        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x" + (
            f" (goal >= {self.goal:g}: {'met' if self.ratio >= self.goal else 'NOT met'})" if self.goal else "")
        reference = cell(self.reference) if self.reference else "--"
        return f"| {self.name} | {cell(self.project)} | {reference} | {ratio} |"


def scale_lines(args: argparse.Namespace) -> list[str]:
    lines: list[str] = []

    def add(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    if "folder_index" in args.rows:
        add(folder_index_line(args.folder_files))
    if "rank" in args.rows:
        add(rank_line(args.rank_n, args.dim))
    if "fid_stream" in args.rows:
        add(fid_stream_line(args.fid_n, args.dim))
    if "loop_stalls" in args.rows:
        for line in loop_stall_lines():
            add(line)
    return lines


def run_rows(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        print(row.line(), flush=True)

    print("| row | project | reference | ratio |\n|---|---|---|---|")
    if "training" in args.rows:
        with tempfile.TemporaryDirectory() as cache_dir:
            for precision in dict.fromkeys(["32", "auto"]):
                unet = [*ADM_LIKE_UNET, *args.train_overrides]
                project = isolated(measure_training, True, precision, args.warmup, args.steps, cache_dir, unet)
                reference = isolated(measure_training, False, precision, args.warmup, args.steps, cache_dir, unet)
                add(Row(f"training, adm-like UNet 32 px, batch {TRAIN_BATCH}, precision {precision}", project,
                        reference, 3.0))
    if "cache" in args.rows:
        demo_data = ["experiment=demo", f"data.dataset.num_train={args.cache_items}",
                     "data.dataset.num_val=64"]
        add(Row("cache build, demo (MobileNetV2 112 px, shapes)", isolated(measure_cache_build, demo_data, []),
                isolated(measure_encoder_forward, demo_data, [], args.cache_items), 0.8))
        with tempfile.TemporaryDirectory() as folder:
            write_jpeg_folder(Path(folder), args.jpegs)
            folder_data = ["data=folder", f"data.dataset.root={folder}", "resolution=32px", "data.flip=false"]
            resnet = ["encoder=resnet50", "encoder.weights=random", "encoder.input_size=224",
                      "encoder.input_norm=official"]
            add(Row(f"cache build, ResNet-50 224 px, folder of {args.jpegs} JPEGs",
                    isolated(measure_cache_build, folder_data, resnet),
                    isolated(measure_encoder_forward, folder_data, resnet, args.jpegs), 0.8))
    if "fid" in args.rows:
        add(Row("FID features, Inception-v3", isolated(measure_fid_features, True, args.fid_images, 32),
                isolated(measure_fid_features, False, args.fid_images, 32), 0.9))
    if "fid_cost" in args.rows:
        add(Row("FID/KID computation", isolated(measure_fid_cost, 1000), None, None))
    if "sampling" in args.rows:
        for sampler, steps in args.sampling:
            add(Row(f"sampling, demo UNet 32 px, {sampler} {steps}",
                    isolated(measure_sampling, sampler, steps, args.guidance, args.sampling_images), None, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["training", "cache", "fid", "fid_cost", "sampling",
                                                      "folder_index", "rank", "fid_stream", "loop_stalls"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (>= 1)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per mode")
    parser.add_argument("--cache-items", type=int, default=1024, help="shapes encoded by the demo cache row")
    parser.add_argument("--jpegs", type=int, default=256, help="JPEGs in the folder of the ResNet-50 cache row")
    parser.add_argument("--fid-images", type=int, default=256)
    parser.add_argument("--sampling-images", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=8.0, help="the demo's guidance")
    parser.add_argument("--train-overrides", nargs="*", default=[], help="extra training overrides, e.g. "
                        "model.compile=true")
    parser.add_argument("--folder-files", type=int, default=200_000, help="files in the folder-index row")
    parser.add_argument("--rank-n", type=int, default=50_000, help="conditionings (and gallery) of the rank row")
    parser.add_argument("--fid-n", type=int, default=50_000, help="features per side of the streamed FID row")
    parser.add_argument("--dim", type=int, default=2048, help="representation / feature width of the scale rows")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args()
    # The paper's, the old CPU default, sampling=guided's and sampling=default's solvers (experiments/samplers).
    args.sampling = [("ddpm", 100), ("ddim", 25), ("dpmpp_2m", 20), ("unipc", 20), ("dpmpp_2m_sde", 20)]
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    import torch

    from rcdm_lab.precision import cpu_bf16_support

    native, why = cpu_bf16_support()
    machine = f"torch {torch.__version__}, {os.cpu_count()} CPUs, bf16 {'native' if native else 'emulated'} ({why})"
    print(machine)
    start = time.perf_counter()
    rows = run_rows(args)
    lines = scale_lines(args)
    total = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ["| row | project | reference | ratio |", "|---|---|---|---|", *(row.line() for row in rows)]
    report = f"{machine}; {total / 60:.1f} min\n\n" + "\n".join(table) + "\n\n" + "\n".join(lines) + "\n"
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(json.dumps({"machine": machine, "seconds": round(total, 1), "rows": [
        {"name": row.name, "ratio": row.ratio, "goal": row.goal, "project": asdict(row.project),
         "reference": asdict(row.reference) if row.reference else None} for row in rows], "lines": lines},
        indent=2) + "\n")
    print(f"bench: {total / 60:.1f} min; wrote {out / 'bench.md'} and {out / 'bench.json'}")


if __name__ == "__main__":
    main()
