"""rcdm-sample: a PNG grid (conditioning image, then its samples) plus raw tensors, for any images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rcdm_lab import trained_run
from rcdm_lab.cli.common import hydra_entry, official_settings, require_values
from rcdm_lab.cli.validation import moved_into_sampling, validate_sample
from rcdm_lab.data.folder import list_images, load_image
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_lab.resize import resize_and_center_crop
from rcdm_lab.viz.grid import conditioning_grid, save_png


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_pipeline(cfg: DictConfig, device: torch.device) -> RCDMPipeline:
    """cfg.ckpt's pipeline: an rcdm-train checkpoint, or official:PATH read with cfg.official."""
    return trained_run.load_pipeline(str(cfg.ckpt), device, cfg.encoder_weights, official_settings(cfg))


def run(cfg: DictConfig) -> dict[str, Any]:
    require_values(cfg)
    validate_sample(cfg)
    device = pick_device(cfg.device)
    pipeline = load_pipeline(cfg, device)
    paths = list_images(cfg.images)
    # Each image is squared at the encoder's input size exactly as the encoder would, so any mix of sizes batches.
    size = pipeline.encoder.input_size
    encoder_inputs = torch.cat([resize_and_center_crop(load_image(p)[None], size) for p in paths])
    reps = pipeline.encode(encoder_inputs)
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    samples = pipeline.sample(reps, cfg.n, **sampling)
    out = Path(cfg.out)
    grid_path = save_png(conditioning_grid(encoder_inputs, samples), out / "samples.png",
                         upscale=max(1, 128 // pipeline.resolution))
    tensors_path = out / "samples.pt"
    torch.save({
        "images": [str(p) for p in paths],
        "representations": reps.cpu(),
        "samples": samples.view(len(paths), cfg.n, *samples.shape[1:]).cpu(),   # in [-1, 1]
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }, tensors_path)
    (out / "samples.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), "images": [str(p) for p in paths],
                                                  "n": cfg.n, "sampler": sampling["sampler"],
                                                  "steps": sampling["steps"], "guidance": sampling["guidance"],
                                                  "seed": sampling["seed"]}, indent=2))
    print(f"rcdm-sample: {len(paths)} image(s) x {cfg.n} samples -> {grid_path} and {tensors_path}")
    return {"grid": grid_path, "tensors": tensors_path}


main = hydra_entry("sample", run, moved=moved_into_sampling(""))

if __name__ == "__main__":
    sys.exit(main())
