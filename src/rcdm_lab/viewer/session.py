"""What rcdm-viewer does, without the page: load checkpoints, turn what the user picked into a figure, save it.

Every view is a figure kind of rcdm_lab.figures rendered through rcdm-figure's own `render`, so the grid the page
shows, the files its Save button writes and what the printed `rcdm-figure` command renders are the same figure.
Inputs are validation items (by number) or uploaded images; a view mixing in an upload renders from a folder of
the chosen images (the command's `images=`), written once per distinct set of inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image

from rcdm_lab.cli.common import run_name_of
from rcdm_lab.cli.figure import render
from rcdm_lab.cli.validation import check_sampling
from rcdm_lab.data.folder import load_image
from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import figure_kind
from rcdm_lab.figures.context import FigureContext
from rcdm_lab.trained_run import TrainedRun
from rcdm_lab.viz.gallery import write_gallery
from rcdm_lab.viz.grid import to_pil
from rcdm_lab.viz.report import write_json


@dataclass(frozen=True)
class Picture:
    """One input the user picked: validation item `val_index`, or an uploaded image file (which wins)."""

    val_index: int = 0
    upload: str | None = None


@dataclass(frozen=True)
class Controls:
    """The page's sampling controls: they replace these keys of the viewer's `sampling:` settings."""

    sampler: str
    steps: int
    guidance: float
    seed: int
    samples: int          # samples per conditioning (a row of the grid)


@dataclass
class Model:
    label: str
    ckpt: str
    run: TrainedRun


@dataclass
class View:
    """A rendered figure, in a scratch folder until saved."""

    kind: str
    folder: Path
    results: dict[str, Any]
    samples: list[torch.Tensor]   # what each sampling call of the figure returned, in [0, 1], in call order

    @property
    def command(self) -> str:
        return str(self.results["command"])

    @property
    def png(self) -> str:
        return str(self.results["figure_png"])


@dataclass
class ViewerSession:
    models: list[Model]
    sampling: dict[str, Any]                 # RCDMPipeline.sample settings the page's controls start from
    out_root: Path                           # views are rendered under out_root/views, saved under out_root/saved
    figure_defaults: dict[str, dict[str, Any]]   # per figure kind: its shipped conf/figure/<kind>.yaml values
    command_options: list[str] = field(default_factory=list)   # overrides every equivalent command repeats
    errors: list[str] = field(default_factory=list)            # checkpoints that did not load, for the page
    device: str | torch.device = "cpu"
    encoder_weights: str | None = None
    data: dict[str, Any] | None = None       # data=: replaces the checkpoints' recorded dataset (or gives one)
    official: dict[str, Any] | None = None   # conf/official/: how a ckpt=official:PATH is read
    _views: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------------------------------------ models
    def load(self, ckpt: str, label: str | None = None) -> str:
        """Load another checkpoint; a message for the page either way (a failure is recorded, never raised)."""
        ckpt = str(ckpt).strip()
        label = label or run_name_of(ckpt)
        if any(model.label == label for model in self.models):
            label = f"{label}-{len(self.models) + 1}"
        try:
            if not ckpt:
                raise RCDMError("no checkpoint path given")
            run = TrainedRun.load(ckpt, device=self.device, data=self.data, encoder_weights=self.encoder_weights,
                                  official=self.official)
        except Exception as error:   # any failure to load is a message on the page, never a dead app
            message = f"{ckpt or '(empty)'} did not load: {error}"
            self.errors.append(message)
            return message
        self.models.append(Model(label, ckpt, run))
        data = "" if run.has_data else "; no data: upload images to look at"
        return f"loaded {ckpt} as {label!r} ({run.pipeline.resolution} px, {run.pipeline.encoder.dim}-d h{data})"

    def require_models(self) -> list[Model]:
        if not self.models:
            raise RCDMError("no checkpoint is loaded: load one above (an rcdm-train last.ckpt)")
        return self.models

    def validation_images(self, count: int, min_width: int = 0) -> list[Image.Image]:
        """The first validation images of the first model's data, as PIL images (the picker's thumbnails)."""
        run = self.require_models()[0].run
        if not run.has_data:
            return []
        count = min(count, run.split_size("val"))
        images = run.val_items(count)["image"]
        return [to_pil(image, min_width) for image in images]

    def validation_size(self) -> int:
        run = self.require_models()[0].run
        return run.split_size("val") if run.has_data else 0

    # ------------------------------------------------------------------------------------------------ views
    def samples(self, picture: Picture, controls: Controls, factors: bool = False) -> View:
        """k samples of one image from every loaded model (compare_models when several: the same noise)."""
        models = self.require_models()
        if len(models) > 1:
            return self._render("compare_models", [picture], controls,
                                lambda offsets: {"num_images": 1, "first_image": offsets[0],
                                                 "samples_per_image": controls.samples})
        return self._render("samples", [picture], controls,
                            lambda offsets: {"num_images": 1, "first_image": offsets[0],
                                             "samples_per_image": controls.samples,
                                             "factors": factors and self.has_factor_labels()})

    def interpolation(self, a: Picture, b: Picture, controls: Controls, num_steps: int) -> View:
        """Samples along (1 - α) h(a) + α h(b) at num_steps α from 0 to 1, one noise per row along the path."""
        return self._render("interpolation", [a, b], controls,
                            lambda offsets: {"first_image": offsets[0], "second_image": offsets[1],
                                             "num_steps": num_steps, "start": 0.0, "stop": 1.0,
                                             "noise_rows": controls.samples})

    def manipulation(self, query: Picture, target: Picture, controls: Controls, mode: str, k: int,
                     n_common: int, n_rare: int, zero_threshold: float) -> View:
        """Mask the dims the query's k nearest training neighbours share (or rarely use): zeroed, or the target's."""
        return self._render("manipulation", [query, target], controls,
                            lambda offsets: {"query_offset": offsets[0], "target_offset": [offsets[1]],
                                             "mode": mode, "k": k, "n_common": n_common, "n_rare": n_rare,
                                             "zero_threshold": zero_threshold,
                                             "samples_per_row": controls.samples})

    def has_factor_labels(self) -> bool:
        run = self.require_models()[0].run
        return run.has_data and run.split_size("val") > 0 and bool(run.datamodule.dataset("val").labels(0))

    def save(self, view: View) -> Path:
        """Copy the view's figure to out_root/saved/<kind>-<time>/ (figure.png, figure.json with its paths moved
        there) and refresh the gallery (index.html) of every saved view."""
        saved_root = self.out_root / "saved"
        target = saved_root / f"{view.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{view.folder.name.split('-')[0]}"
        if target.exists():
            return target   # saved already: the same view, the same files
        shutil.copytree(view.folder, target)
        results = json.loads(json.dumps(view.results), object_hook=lambda d: _moved(d, view.folder, target))
        write_json(target / "figure.json", results)
        write_gallery(saved_root, title="rcdm-viewer: saved views")
        return target

    # ------------------------------------------------------------------------------------------------ rendering
    def _render(self, kind_name: str, pictures: Sequence[Picture], controls: Controls, values_for) -> View:
        models = self.require_models()
        started = time.perf_counter()
        sampling = self.sampling_for(controls)
        images, offsets = self._inputs(pictures)
        kind = figure_kind(kind_name)
        values = values_for(offsets)
        settings = kind.settings({**self.figure_defaults.get(kind_name, {}), **values, "kind": kind_name})
        folder = self.out_root / "views" / f"{next(self._views):04d}-{kind_name}"
        if folder.exists():
            shutil.rmtree(folder)   # a view number from an earlier session in the same folder
        labels = [model.label for model in models]
        ctx = _RecordingContext(runs=[model.run for model in models], sampling=sampling, out_dir=folder,
                            seed=controls.seed, images=str(images) if images else None, labels=labels)
        command = self.command(kind_name, values, controls, images, labels)
        results = render(kind, settings, ctx, [model.ckpt for model in models], command, started)
        return View(kind_name, folder, results, ctx.recorded)

    def sampling_for(self, controls: Controls) -> dict[str, Any]:
        """The viewer's sampling settings with the page's controls, checked like every command checks them."""
        sampling = {**self.sampling, "sampler": controls.sampler, "steps": int(controls.steps),
                    "guidance": float(controls.guidance), "seed": int(controls.seed)}
        if int(controls.samples) < 1:
            raise RCDMError(f"samples per conditioning must be >= 1, got {controls.samples}")
        check_sampling(OmegaConf.create({"sampling": sampling}))
        if sampling["guidance"] != 1.0:
            unguided = [m.label for m in self.models if not m.run.pipeline.supports_guidance]
            if unguided:
                raise RCDMError(f"guidance {sampling['guidance']:g} needs a model trained with condition dropout; "
                                f"{', '.join(unguided)} was not (model.cond_drop=0): set guidance to 1")
        return sampling

    def _inputs(self, pictures: Sequence[Picture]) -> tuple[Path | None, list[int]]:
        """(None, validation offsets) when every picture is a validation item, else (a folder holding the pictures
        in order as 0.png, 1.png, ..., their offsets 0, 1, ...): what the figure's images= reads."""
        size = self.validation_size()
        for picture in pictures:
            if not picture.upload and size == 0:
                raise RCDMError("this model has no validation images (a released checkpoint records no data): "
                                "upload an image, or start rcdm-viewer with data=folder data.dataset.root=DIR")
            if not picture.upload and not 0 <= int(picture.val_index) < size:
                raise RCDMError(f"validation image {picture.val_index} does not exist: pick 0 to {size - 1}")
        if not any(picture.upload for picture in pictures):
            return None, [int(picture.val_index) for picture in pictures]
        decoded = [self._decoded(picture) for picture in pictures]
        digest = hashlib.sha256(b"".join(image.tobytes() + str(image.size).encode() for image in decoded))
        folder = self.out_root / "inputs" / digest.hexdigest()[:16]
        if not folder.is_dir():
            partial = folder.with_name(folder.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(decoded):
                image.save(partial / f"{i}.png")   # lossless: the command reads exactly these pixels
            partial.replace(folder)
        return folder, list(range(len(pictures)))

    def _decoded(self, picture: Picture) -> Image.Image:
        """The picture as an RGB PIL image: an upload decoded (a corrupt file: RCDMError), or a validation item."""
        if picture.upload:
            return to_pil(load_image(picture.upload))
        run = self.models[0].run
        return to_pil(run.val_items(int(picture.val_index) + 1)["image"][-1])

    def command(self, kind: str, values: Mapping[str, Any], controls: Controls, images: Path | None,
                labels: list[str]) -> str:
        """The rcdm-figure command that renders this view: its figure settings that differ from the shipped ones,
        the sampling controls, the inputs folder and the checkpoints."""
        parts = ["rcdm-figure", f"figure={kind}"]
        ckpts = [model.ckpt for model in self.models]
        if len(ckpts) == 1:
            parts.append(f"ckpt={ckpts[0]}")
        else:
            parts += [f"ckpts=[{','.join(ckpts)}]", f"labels=[{','.join(labels)}]"]
        if images is not None:
            parts.append(f"images={images}")
        shipped = self.figure_defaults.get(kind, {})
        parts += [f"figure.{key}={_override_value(value)}" for key, value in values.items()
                  if shipped.get(key, object()) != value]
        parts += list(self.command_options)
        parts += [f"sampling.sampler={controls.sampler}", f"sampling.steps={int(controls.steps)}",
                  f"sampling.guidance={float(controls.guidance):g}", f"sampling.seed={int(controls.seed)}"]
        return " ".join(shlex.quote(part) for part in parts)


@dataclass
class _RecordingContext(FigureContext):
    """A FigureContext that keeps every batch of samples it drew, for the page's larger views of them."""

    def __post_init__(self) -> None:
        self.recorded: list[torch.Tensor] = []

    def sample(self, h: torch.Tensor, num_per_condition: int, run: TrainedRun | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        samples = super().sample(h, num_per_condition, run=run, noise=noise)
        self.recorded.append(samples.detach().cpu())
        return samples


def _override_value(value: Any) -> str:
    """A Python value as a Hydra command-line override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def _moved(record: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """A JSON object with every path string under `old` moved under `new`."""
    prefix = str(old)
    return {key: str(new) + value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else value
            for key, value in record.items()}
