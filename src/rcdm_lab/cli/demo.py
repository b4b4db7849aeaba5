"""rcdm-demo (`make demo`): train a small RCDM on shapes, then show and measure what its samples keep.

Prints `faithfulness (guidance=W): F` -- the fraction of samples whose representation's nearest neighbour among the
held-out conditionings is their own conditioning (chance: 1/16) -- and writes outputs/demo/samples.png: held-out
shapes, then real photos (out of distribution), each followed by its samples.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import hydra_entry
from rcdm_lab.cli.train import train
from rcdm_lab.cli.validation import moved_into_sampling
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.faithfulness import nearest_conditioning_accuracy
from rcdm_lab.resize import resize_and_center_crop
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.grid import conditioning_grid, save_png


def bundled_photos(names: list[str]) -> torch.Tensor:
    """scikit-image's bundled photos as (N, 3, 224, 224) in [0, 1]."""
    try:
        import skimage.data
    except ImportError:
        raise RCDMError("the demo's out-of-distribution photos come from scikit-image: "
                        "pip install scikit-image") from None
    photos = []
    for name in names:
        array = torch.from_numpy(getattr(skimage.data, name)()).float() / 255
        array = array.unsqueeze(-1).expand(*array.shape, 3) if array.dim() == 2 else array[..., :3]
        photos.append(resize_and_center_crop(array.permute(2, 0, 1)[None], 224)[0])
    return torch.stack(photos)


def evaluate(cfg: DictConfig, ckpt: Path) -> dict:
    demo = cfg.demo
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)   # conf/sampling/ + the demo's delta
    trained = TrainedRun.load(ckpt)
    pipeline = trained.pipeline
    held_out = trained.val_items(demo.num_conditionings)
    k = demo.samples_per_conditioning
    results, guided = {}, None
    for guidance in sorted({1.0, float(sampling["guidance"])}):
        start = time.perf_counter()
        samples = pipeline.sample(held_out["h"], k, **{**sampling, "guidance": guidance})
        sample_reps = pipeline.encode((samples + 1) / 2)
        score = nearest_conditioning_accuracy(sample_reps, held_out["h"], k)
        results[f"faithfulness_guidance_{guidance:g}"] = score
        results[f"sampling_seconds_guidance_{guidance:g}"] = round(time.perf_counter() - start, 1)
        print(f"faithfulness (guidance={guidance:g}): {score:.3f}   (chance {1 / len(held_out['h']):.3f})")
        guided = samples
    photos = bundled_photos(list(demo.photos))
    photo_samples = pipeline.sample(pipeline.encode(photos), k, **sampling)
    rows = torch.cat([resize_and_center_crop(held_out["image"], 224), photos])
    grid = conditioning_grid(rows, torch.cat([guided, photo_samples]))
    path = save_png(grid, Path(cfg.output_dir) / "samples.png", upscale=3)
    results["samples_png"] = str(path)
    return results


def run(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    timing_file = Path(cfg.output_dir) / "timing.json"   # written by the TrainingClock callback
    # A finished run resumed again trains nothing and Lightning then never reaches the clock's hooks: without this,
    # the last training's timing would be reported as this run's (with a negative setup time).
    timing_file.unlink(missing_ok=True)
    ckpt = train(cfg)
    trained = time.perf_counter()
    results = evaluate(cfg, ckpt)
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    if not timing.get("steps"):
        print(f"rcdm-demo: {ckpt} was already trained to the end: reused, no training step ran")
    results.update(checkpoint=str(ckpt), timing=timing, train_phase_seconds=round(trained - start, 1),
                   total_seconds=round(time.perf_counter() - start, 1))
    (Path(cfg.output_dir) / "demo.json").write_text(json.dumps(results, indent=2))
    if timing.get("steps"):
        # Startup, data rendering and the representation cache: everything of the training phase but the steps.
        setup = results["train_phase_seconds"] - timing["train_seconds"]
        sampling = results["total_seconds"] - results["train_phase_seconds"]
        print(f"rcdm-demo: {timing['steps']} training steps in {timing['train_seconds']:.0f} s "
              f"({timing['ms_per_step']:.0f} ms/step, precision {timing['precision']}); setup and caching "
              f"{setup:.0f} s; sampling and measuring {sampling:.0f} s")
    print(f"rcdm-demo: wrote {results['samples_png']} (first column: the conditioning image; rows 1-"
          f"{cfg.demo.num_conditionings} held-out shapes, then real photos) and {ckpt}; "
          f"total {results['total_seconds']:.0f} s")
    return results


main = hydra_entry("demo", run, moved=moved_into_sampling("demo.", "callbacks.preview."))

if __name__ == "__main__":
    sys.exit(main())
