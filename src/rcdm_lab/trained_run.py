"""A trained RCDM together with the data it was trained on: where every evaluation and figure starts.

`rcdm-train` records its (resolved) data config in each checkpoint, so `TrainedRun.load(ckpt)` rebuilds the same
dataset and opens the same representation cache -- validation conditionings, training neighbours and real images
for FID come from exactly the data the model saw, without the user restating it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.data.datamodule import RCDMDataModule
from rcdm_lab.errors import RCDMError
from rcdm_lab.pipeline import RCDMPipeline

OFFICIAL_PREFIX = "official:"


def load_pipeline(ckpt: str, device: str | torch.device = "cpu", encoder_weights: str | None = None,
                  official: Mapping[str, Any] | None = None) -> RCDMPipeline:
    """The pipeline of an rcdm-train checkpoint, or of `official:PATH` (a released facebookresearch/RCDM UNet) read
    with `official` = conf/official/ ({"flags": its MODEL_FLAGS, "encoder": build_encoder kwargs})."""
    if not str(ckpt).startswith(OFFICIAL_PREFIX):
        return RCDMPipeline.from_checkpoint(ckpt, device=device, encoder_weights=encoder_weights)
    from rcdm_lab.encoders import build_encoder

    if official is None:
        raise RCDMError(f"ckpt={ckpt} is a released checkpoint but no official: settings came with it "
                        "(conf/official/default.yaml: its flags and encoder)")
    encoder_settings = dict(official["encoder"])
    if encoder_weights is not None:
        encoder_settings["weights"] = encoder_weights
    encoder = build_encoder(**encoder_settings)
    return RCDMPipeline.from_official(str(ckpt).removeprefix(OFFICIAL_PREFIX), encoder=encoder,
                                      flags=dict(official["flags"]), device=device)


@dataclass
class TrainedRun:
    ckpt: Path
    pipeline: RCDMPipeline
    _datamodule: RCDMDataModule | None

    @classmethod
    def load(
        cls,
        ckpt: str | os.PathLike,
        device: str | torch.device = "cpu",
        data: Mapping[str, Any] | None = None,
        encoder_weights: str | None = None,
        official: Mapping[str, Any] | None = None,
    ) -> TrainedRun:
        """The checkpoint's pipeline (EMA UNet, diffusion, encoder) and datamodule, caches built if missing.

        `data` (a data config with `_target_`, e.g. conf/data/folder.yaml resolved) replaces the recorded dataset,
        e.g. to evaluate on another folder; its resolution is always the model's. `ckpt=official:PATH` is a released
        facebookresearch/RCDM model read with `official` (conf/official/: its flags and encoder); it records no
        data, so it has validation images, neighbours and a gallery only when `data` names some.
        """
        if str(ckpt).startswith(OFFICIAL_PREFIX):
            pipeline = load_pipeline(str(ckpt), device, encoder_weights, official)
            if data is None:
                return cls(Path(str(ckpt).removeprefix(OFFICIAL_PREFIX)), pipeline, None)
        else:
            checkpoint = read_checkpoint(ckpt)  # read once: the pipeline and the recorded data config come from it
            pipeline = RCDMPipeline.from_checkpoint(checkpoint, device=device, encoder_weights=encoder_weights)
            if data is None:
                data = checkpoint.record.data
                if data is None:
                    raise RCDMError(f"{ckpt} does not record its training data (written before rcdm_lab recorded "
                                    "it): name the dataset, e.g. data=shapes (add the data.* overrides used in "
                                    "training)")
        datamodule = instantiate({**dict(data), "resolution": pipeline.resolution})
        datamodule.attach_encoder(pipeline.encoder, device=pipeline.device)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return cls(Path(str(ckpt).removeprefix(OFFICIAL_PREFIX)), pipeline, datamodule)

    @property
    def has_data(self) -> bool:
        """Whether the run has a dataset (validation images, training neighbours, a gallery to rank in)."""
        return self._datamodule is not None

    @property
    def datamodule(self) -> RCDMDataModule:
        if self._datamodule is None:
            raise RCDMError(f"{self.ckpt} is a released checkpoint with no data: pass images=... for the inputs, or "
                            "data=folder data.dataset.root=DIR for validation images, neighbours and a gallery")
        return self._datamodule

    # ------------------------------------------------------------------------------------------------ data
    def split_size(self, split: str) -> int:
        return len(self.datamodule.dataset(split))

    def count(self, split: str, requested: int | None, what: str, default: int) -> int:
        """How many items of `split` a setting asks for; None: `default`, or the whole split when it is smaller.

        A default must not fail on a small dataset, so it adapts (and says so in one line); an explicit count is
        kept as given, and asking for more than the split has is refused where the items are taken.
        """
        if requested is not None:
            return int(requested)
        available = self.split_size(split)
        if default > available:
            print(f"{what}: the {split} split has {available} items, fewer than the default {default}: using all "
                  f"{available}")
            return available
        return default

    def val_items(self, n: int, what: str = "conditionings") -> dict:
        """The first n validation items {"x0", "h", "image", "labels", "index"}; an error if there are fewer."""
        available = self.split_size("val")
        if n > available:
            raise RCDMError(f"{what}: asked for {n} validation items but the validation split has {available}; "
                            "ask for fewer, or evaluate on a bigger validation set (data.dataset.num_val for "
                            "shapes, more images in a folder)")
        return self.datamodule.val_items(n)

    def representations(self, split: str) -> Tensor:
        """(N, D) float32 representations of every (unflipped) item of `split`, on the CPU."""
        return self.datamodule.source(split).representations()

    def images(self, split: str, indices: Tensor | list[int]) -> Tensor:
        """(len(indices), 3, R, R) images of `split` in [0, 1] at the model's resolution, as the UNet saw them."""
        return (self.datamodule.source(split).diffusion_targets([int(i) for i in indices]) + 1) / 2

    def labels(self, split: str) -> dict[str, Tensor]:
        """Every item's labels of `split` as {factor: (N,) tensor} ({} when the dataset has none)."""
        dataset = self.datamodule.dataset(split)
        rows = [dataset.labels(i) for i in range(len(dataset))]
        if not rows or not rows[0]:
            return {}
        return {factor: torch.stack([torch.as_tensor(row[factor]) for row in rows]) for factor in rows[0]}

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(self, h: Tensor, num_per_condition: int, settings: Mapping[str, Any]) -> Tensor:
        """Samples in [0, 1] (N * k, 3, R, R) grouped by conditioning, with `settings` = RCDMPipeline.sample kwargs."""
        return (self.pipeline.sample(h, num_per_condition, **dict(settings)) + 1) / 2
