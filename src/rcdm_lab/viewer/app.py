"""The rcdm-viewer page (gradio): pick or drop images, look at their samples, walk an interpolation, edit h.

The page only lays out controls; every button calls a method of `ViewerHandlers`, which turns the controls into a
`ViewerSession` view (rcdm_lab/viewer/session.py) and the view into what the page shows. Errors -- a corrupt upload,
a checkpoint that does not load, settings a figure refuses -- become a gradio error message in the page, never a
dead app. The API names (`/samples`, `/interpolation`, `/manipulation`, `/save`) are what gradio_client calls.
"""

from __future__ import annotations

import functools
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import gradio as gr
import torch
from PIL import Image

from rcdm_lab.diffusion.samplers import SAMPLERS
from rcdm_lab.errors import RCDMError
from rcdm_lab.viewer.session import Controls, Picture, View, ViewerSession
from rcdm_lab.viz.grid import to_pil

# Thumbnails and samples are shown at least this many pixels wide (a 32 px sample is unreadable at its size).
SHOWN_SIZE = 160
# A handler with this default gets a progress bar in the page that follows the sampler's tqdm bar.
SAMPLING_PROGRESS = gr.Progress(track_tqdm=True)


def page_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Any failure of `handler` becomes a message in the page (gr.Error), with the app still serving."""
    @functools.wraps(handler)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            # A user error says what to fix; anything else is named by its type, for a bug report.
            message = str(error) if isinstance(error, RCDMError) else f"{type(error).__name__}: {error}"
            raise gr.Error(message, duration=None) from error
    return guarded


def _enlarged(image01: torch.Tensor) -> Image.Image:
    return to_pil(image01, min_width=SHOWN_SIZE)


class ViewerHandlers:
    """What each control of the page does; tested directly (tests/viewer/)."""

    def __init__(self, session: ViewerSession, thumbnails: int = 24) -> None:
        self.session = session
        self.thumbnail_count = thumbnails   # validation images offered for picking

    # ------------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def picture(index: float | None, upload: str | None) -> Picture:
        return Picture(val_index=int(index or 0), upload=upload or None)

    @staticmethod
    def controls(sampler: str, steps: float, guidance: float, seed: float, samples: float) -> Controls:
        return Controls(sampler=str(sampler), steps=int(steps), guidance=float(guidance), seed=int(seed),
                        samples=int(samples))

    def models_markdown(self) -> str:
        lines = [f"- **{m.label}**: `{m.ckpt}` ({m.run.pipeline.resolution} px)" for m in self.session.models]
        lines += [f"- ⚠ {error}" for error in self.session.errors]
        return "\n".join(lines) or "no checkpoint loaded yet: load one below"

    # ------------------------------------------------------------------------------------------------ actions
    @page_errors
    def load(self, ckpt: str) -> tuple[str, list[Image.Image]]:
        loaded = len(self.session.models)
        message = self.session.load(ckpt)
        if len(self.session.models) == loaded:
            gr.Warning(message)   # also listed under the models, where it stays
        return self.models_markdown(), self.thumbnails()

    def thumbnails(self) -> list[Image.Image]:
        if not self.session.models:
            return []
        return self.session.validation_images(self.thumbnail_count, min_width=96)

    @page_errors
    def samples(self, a_index, a_upload, sampler, steps, guidance, seed, k, factors,
                progress=SAMPLING_PROGRESS) -> tuple[str, list, str, str | None, str, View]:
        view = self.session.samples(self.picture(a_index, a_upload), self.controls(sampler, steps, guidance, seed, k),
                                    factors=bool(factors))
        shown = [_enlarged(image) for batch in view.samples for image in batch]
        return (view.png, shown, samples_markdown(view), view.results.get("dim_variance_png"), view.command, view)

    @page_errors
    def interpolation(self, a_index, a_upload, b_index, b_upload, sampler, steps, guidance, seed, k, num_steps,
                      progress=SAMPLING_PROGRESS) -> tuple[str, Any, list, str, str, View]:
        view = self.session.interpolation(self.picture(a_index, a_upload), self.picture(b_index, b_upload),
                                          self.controls(sampler, steps, guidance, seed, k), int(num_steps))
        alphas = view.results["alphas"]
        slider = gr.Slider(minimum=0, maximum=len(alphas) - 1, value=0, step=1,
                           label=f"α: point 0 of {len(alphas) - 1} (α = {alphas[0]:.2f})")
        return (view.png, slider, self.at_alpha(view, 0), interpolation_markdown(view, 0), view.command, view)

    def at_alpha(self, view: View | None, position: float) -> list[Image.Image]:
        """The samples (one per noise row) at path point `position` of an interpolation view."""
        if view is None or view.kind != "interpolation":
            return []
        num_steps = len(view.results["alphas"])
        samples = view.samples[0]
        rows = len(samples) // num_steps
        i = min(max(int(position), 0), num_steps - 1)
        return [_enlarged(image) for image in samples[i * rows:(i + 1) * rows]]

    def alpha_moved(self, view: View | None, position: float) -> tuple[list[Image.Image], str]:
        if view is None or view.kind != "interpolation":
            return [], ""
        return self.at_alpha(view, position), interpolation_markdown(view, int(position))

    @page_errors
    def manipulation(self, a_index, a_upload, b_index, b_upload, sampler, steps, guidance, seed, k, mode,
                     neighbours, n_common, n_rare, zero_threshold,
                     progress=SAMPLING_PROGRESS) -> tuple[str, str, str, View]:
        view = self.session.manipulation(self.picture(a_index, a_upload), self.picture(b_index, b_upload),
                                         self.controls(sampler, steps, guidance, seed, k), str(mode),
                                         int(neighbours), int(n_common), int(n_rare), float(zero_threshold))
        return view.png, manipulation_markdown(view), view.command, view

    @page_errors
    def save(self, view: View | None) -> str:
        if view is None:
            raise gr.Error("nothing to save yet: make a view first")
        folder = self.session.save(view)
        return (f"saved `{folder / 'figure.png'}` and `{folder / 'figure.json'}` "
                f"(gallery: `{folder.parent / 'index.html'}`)")


# ------------------------------------------------------------------------------------------------ numbers shown
def _spread_lines(spread: dict[str, Any], names: list[str]) -> list[str]:
    lines = ["| input | sample | ‖f(sample) − h‖² | relative to a random pair |", "|---|---|---|---|"]
    relative = spread.get("relative_sq_l2_to_conditioning") or [[None] * len(row)
                                                                 for row in spread["sq_l2_to_conditioning"]]
    for name, row, rel_row in zip(names, spread["sq_l2_to_conditioning"], relative, strict=True):
        for j, (value, rel) in enumerate(zip(row, rel_row, strict=True)):
            lines.append(f"| {name} | {j} | {value:.4g} | {'' if rel is None else f'{rel:.3f}'} |")
    if "held_fraction" in spread:
        lines.append(f"\n**{100 * spread['held_fraction']:.0f}%** of the {spread['varying_dims']} dimensions that vary "
                     "over the data vary across the samples by less "
                     f"than a tenth of their variance over the data (median ratio "
                     f"{spread['median_dim_variance_ratio']:.3g}): what h keeps. Plot: sorted ratios per dimension.")
    return lines


def samples_markdown(view: View) -> str:
    results = view.results
    names = list(results["images"])
    lines: list[str] = []
    if view.kind == "compare_models":
        for label, model in results["models"].items():
            lines += [f"#### {label}", *_spread_lines(model["spread"], names)]
        lines.append(f"\nsame noise across models: {results['same_noise']}")
    else:
        lines += _spread_lines(results["spread"], names)
    for name, kept in results.get("factors_kept", {}).items():
        lines += [f"\n**factors kept** by the samples of {name} (fraction of samples the factor classifier reads "
                  "as the input's value):", "| factor | kept |", "|---|---|",
                  *(f"| {factor} | {value:.2f} |" for factor, value in kept.items())]
    return "\n".join(lines)


def interpolation_markdown(view: View, position: int) -> str:
    results = view.results
    lines = [f"α walks from {results['images'][0]} (0) to {results['images'][1]} (1); each row keeps one noise.",
             "| point | α | ‖f(samples) − h(a)‖² | ‖f(samples) − h(b)‖² |", "|---|---|---|---|"]
    for i, (alpha, to_a, to_b) in enumerate(zip(results["alphas"], results["sq_l2_to_a"], results["sq_l2_to_b"],
                                                strict=True)):
        mark = "**" if i == position else ""
        lines.append(f"| {mark}{i}{mark} | {mark}{alpha:.2f}{mark} | {to_a:.4g} | {to_b:.4g} |")
    return "\n".join(lines)


def manipulation_markdown(view: View) -> str:
    results = view.results
    lines = [f"query {results['query']}, {results['k']} nearest neighbours in the {results['pool']} pool "
             f"({results['metric']})."]
    for mode, mask in results["masks"].items():
        lines.append(f"- {mode}: {mask['size']} dimensions ({100 * mask['fraction']:.1f}%), rule {mask['rule']}")
    lines += ["", "| row | ‖h' − h‖² | samples to h | samples to h' |", "|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['label']} | {row['sq_l2_to_original']:.4g} | {row['samples_sq_l2_to_original']:.4g} | "
                     f"{row['samples_sq_l2_to_conditioning']:.4g} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the page
def build_app(session: ViewerSession, samples: int = 6, thumbnails: int = 24) -> gr.Blocks:
    """The page over `session`; `samples`: the starting samples per conditioning."""
    handlers = ViewerHandlers(session, thumbnails)
    sampling = session.sampling
    with gr.Blocks(title="rcdm-viewer", analytics_enabled=False) as app:
        gr.Markdown("## rcdm-viewer — what does the representation keep?\nSamples from one h show what h keeps "
                    "(stable across samples) and what it discards (varies).")
        models = gr.Markdown(handlers.models_markdown())
        with gr.Row():
            ckpt_box = gr.Textbox(label="load another checkpoint", placeholder="outputs/<run>/checkpoints/last.ckpt",
                                  scale=4)
            load_button = gr.Button("Load", scale=1)
        with gr.Row():
            with gr.Column():
                a_index = gr.Number(label="image A: validation image #", value=0, precision=0, minimum=0)
                a_upload = gr.Image(label="or drop / upload image A", type="filepath", sources=["upload", "clipboard"],
                                    height=160)
            with gr.Column():
                b_index = gr.Number(label="image B: validation image #", value=1, precision=0, minimum=0)
                b_upload = gr.Image(label="or drop / upload image B", type="filepath", sources=["upload", "clipboard"],
                                    height=160)
        with gr.Row():
            picks = gr.Radio(["A", "B"], value="A", label="a click on a validation image sets image", scale=1)
            gallery = gr.Gallery(value=handlers.thumbnails(), label="validation images", columns=12,
                                 height=220, allow_preview=False, scale=6)
        with gr.Row():
            sampler = gr.Dropdown(list(SAMPLERS), value=sampling["sampler"], label="sampler")
            steps = gr.Number(value=int(sampling["steps"]), precision=0, minimum=1, label="steps")
            guidance = gr.Number(value=float(sampling["guidance"]), minimum=0, label="guidance")
            seed = gr.Number(value=int(sampling["seed"]), precision=0, minimum=0, label="seed")
            k = gr.Slider(1, 16, value=samples, step=1, label="samples per conditioning")
        shared = [sampler, steps, guidance, seed, k]
        with gr.Tabs():
            with gr.Tab("Samples"):
                factors = gr.Checkbox(label="factors kept (datasets with factor labels; trains a small classifier "
                                            "once)", value=False)
                sample_button = gr.Button("Sample image A", variant="primary")
                sample_view = gr.State(None)
                sample_grid = gr.Image(label="grid (first column: the input)", type="filepath", interactive=False,
                                       elem_id="samples-grid")
                sample_gallery = gr.Gallery(label="samples", columns=8, height=200, allow_preview=True)
                sample_numbers = gr.Markdown()
                sample_variance = gr.Image(label="per-dimension variance of the samples' representations",
                                           type="filepath", interactive=False)
                sample_command = gr.Code(label="the same figure from the command line", language="shell")
                sample_save = gr.Button("Save grid + JSON")
                sample_saved = gr.Markdown()
            with gr.Tab("Interpolation"):
                num_steps = gr.Slider(3, 16, value=8, step=1, label="points on the path A → B")
                interpolate_button = gr.Button("Interpolate A → B", variant="primary")
                interpolation_view = gr.State(None)
                alpha = gr.Slider(0, 7, value=0, step=1, label="α: point on the path")
                alpha_gallery = gr.Gallery(label="samples at α (one per noise row)", columns=8, height=200)
                interpolation_numbers = gr.Markdown()
                interpolation_grid = gr.Image(label="the whole path", type="filepath", interactive=False,
                                              elem_id="interpolation-grid")
                interpolation_command = gr.Code(label="the same figure from the command line", language="shell")
                interpolation_save = gr.Button("Save grid + JSON")
                interpolation_saved = gr.Markdown()
            with gr.Tab("Manipulation"):
                with gr.Row():
                    mode = gr.Radio(["most_common", "least_common", "both"], value="most_common", label="mask")
                    neighbours = gr.Number(value=20, precision=0, minimum=1, label="nearest neighbours (k)")
                    n_common = gr.Number(value=14, precision=0, minimum=0, label="most common: non-zero in > n")
                    n_rare = gr.Number(value=5, precision=0, minimum=1, label="least common: non-zero in ≤ n")
                    zero_threshold = gr.Number(value=0.0, minimum=0, label="non-zero means |h| >")
                manipulate_button = gr.Button("Mask image A's shared dimensions (zero, or B's values)",
                                              variant="primary")
                manipulation_view = gr.State(None)
                manipulation_grid = gr.Image(label="rows: original, masked = 0, masked ← B", type="filepath",
                                             interactive=False, elem_id="manipulation-grid")
                manipulation_numbers = gr.Markdown()
                manipulation_command = gr.Code(label="the same figure from the command line", language="shell")
                manipulation_save = gr.Button("Save grid + JSON")
                manipulation_saved = gr.Markdown()

        load_button.click(handlers.load, [ckpt_box], [models, gallery], api_name="load")

        def pick(which: str, evt: gr.SelectData):
            return (evt.index, gr.update()) if which == "A" else (gr.update(), evt.index)

        gallery.select(pick, [picks], [a_index, b_index], api_name=False)
        sample_button.click(handlers.samples, [a_index, a_upload, *shared, factors],
                            [sample_grid, sample_gallery, sample_numbers, sample_variance, sample_command,
                             sample_view], api_name="samples")
        interpolate_button.click(handlers.interpolation, [a_index, a_upload, b_index, b_upload, *shared, num_steps],
                                 [interpolation_grid, alpha, alpha_gallery, interpolation_numbers,
                                  interpolation_command, interpolation_view], api_name="interpolation")
        alpha.change(handlers.alpha_moved, [interpolation_view, alpha], [alpha_gallery, interpolation_numbers],
                     api_name=False, show_progress="hidden")
        manipulate_button.click(handlers.manipulation,
                                [a_index, a_upload, b_index, b_upload, *shared, mode, neighbours, n_common, n_rare,
                                 zero_threshold],
                                [manipulation_grid, manipulation_numbers, manipulation_command, manipulation_view],
                                api_name="manipulation")
        sample_save.click(handlers.save, [sample_view], [sample_saved], api_name="save")
        interpolation_save.click(handlers.save, [interpolation_view], [interpolation_saved], api_name=False)
        manipulation_save.click(handlers.save, [manipulation_view], [manipulation_saved], api_name=False)
    return app


# System fonts only: the default theme fetches Google Fonts, which an offline machine cannot reach.
OFFLINE_THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "monospace"])


def wait_until_served(url: str, process: subprocess.Popen | None = None, timeout: float = 120) -> float:
    """Seconds until a viewer started as `process` answers 200 at `url` (scripts and tests that start one)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the viewer exited with status {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing served {url} within {timeout:.0f} s")
