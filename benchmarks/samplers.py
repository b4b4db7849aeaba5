"""Faithfulness and encoder-space FID against UNet evaluations, per sampler (`make bench-samplers [CKPT=...]`).

For the first N validation conditionings of a checkpoint, k samples each from the same seed (the same x_T for every
setting: comparisons between settings are paired), every sample encoded again and its own conditioning ranked
among the whole validation gallery by L2 distance (rcdm-eval metric=faithfulness), at guidance 1 and at the demo's
guidance. Per setting, one line:

    sampler=NAME steps=N nfe=M guidance=W mrr=X mrr_ci=[LO,HI] top1=Y fid_enc=Z s_per_image=S

`nfe` is counted, not claimed: the UNet's batch rows divided by the number of samples (a guided step runs the
conditional and the unconditional half in one batch of twice the rows, so it counts 2). `mrr_ci` is the bootstrap
95 % interval over conditionings (rcdm_lab.metrics.intervals); `fid_enc` the Frechet distance between the samples'
representations and the validation gallery's (comparable within one table: it depends on N x k). Writes
results.json, results.md and faithfulness_vs_nfe.png into --out.

    python benchmarks/samplers.py [--ckpt outputs/demo/checkpoints/last.ckpt] [--num-conditionings 200] [-k 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (sampler, steps): the paper's DDPM 100, ADM's usual DDIM budgets, and the multistep solvers at 10-20 steps (the
# ODE ones and DPM-Solver++(2M)'s SDE variant, which injects noise as DDPM does).
SETTINGS = [("ddpm", 100), ("ddim", 25), ("ddim", 50), ("dpmpp_2m", 10), ("dpmpp_2m", 15), ("dpmpp_2m", 20),
            ("unipc", 10), ("unipc", 15), ("unipc", 20), ("dpmpp_2m_sde", 10), ("dpmpp_2m_sde", 15),
            ("dpmpp_2m_sde", 20)]
REFERENCE = ("ddpm", 100)


@dataclass
class Row:
    sampler: str
    steps: int
    nfe: float
    guidance: float
    mrr: float
    mrr_ci: list[float]
    top1: float
    mean_rank: float
    fid_enc: float
    s_per_image: float
    # Paired with DDPM-100 at the same guidance (same conditionings, same x_T): interval of MRR(this) - MRR(DDPM).
    mrr_minus_reference_ci: list[float] | None = None

    def line(self) -> str:
        return (f"sampler={self.sampler} steps={self.steps} nfe={self.nfe:g} guidance={self.guidance:g} "
                f"mrr={self.mrr:.4f} mrr_ci=[{self.mrr_ci[0]:.4f},{self.mrr_ci[1]:.4f}] top1={self.top1:.4f} "
                f"fid_enc={self.fid_enc:.2f} s_per_image={self.s_per_image:.4f}")


class RowCounter:
    """Counts the batch rows the UNet sees (a forward hook), i.e. network evaluations per sample times samples."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.rows = 0
        self._handle = unet.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output) -> None:
        self.rows += int(output.shape[0])

    def close(self) -> None:
        self._handle.remove()


def demo_guidance() -> float:
    """The guidance rcdm-demo samples with, from its composed config (conf/demo.yaml and everything it includes)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return float(compose("demo").sampling.guidance)


def default_sampling() -> dict:
    from rcdm_lab.cli.common import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "sampling" / "default.yaml"), resolve=True)


def measure(run, items: dict, gallery: torch.Tensor, k: int, sampling: dict) -> tuple[Row, torch.Tensor]:
    from rcdm_lab.metrics.faithfulness import conditioning_ranks, mrr_interval, rank_summary
    from rcdm_lab.metrics.fid import frechet_distance

    counter = RowCounter(run.pipeline.unet)
    start = time.perf_counter()
    try:
        samples = run.sample(items["h"], k, sampling)
    finally:
        counter.close()
    seconds = time.perf_counter() - start
    reps = run.pipeline.encode(samples).cpu()
    ranks = conditioning_ranks(reps, gallery, items["index"].repeat_interleave(k), "l2")
    summary = rank_summary(ranks, len(gallery))
    row = Row(sampler=sampling["sampler"], steps=int(sampling["steps"]), nfe=counter.rows / len(samples),
              guidance=float(sampling["guidance"]), mrr=summary["mrr"], mrr_ci=mrr_interval(ranks, k),
              top1=summary["top1"], mean_rank=summary["mean_rank"], fid_enc=frechet_distance(gallery, reps),
              s_per_image=seconds / len(samples))
    return row, ranks


def plot(rows: list[Row], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    guidances = sorted({row.guidance for row in rows})
    figure = Figure(figsize=(5.0 * len(guidances), 4.0), layout="constrained")
    axes = figure.subplots(1, len(guidances), squeeze=False)[0]
    for ax, guidance in zip(axes, guidances, strict=True):
        at = [row for row in rows if row.guidance == guidance]
        for reference in (row for row in at if (row.sampler, row.steps) == REFERENCE):
            ax.axhspan(*reference.mrr_ci, color="0.85", label=f"DDPM {reference.steps} (95 % CI)")
        for offset, sampler in enumerate(dict.fromkeys(row.sampler for row in at)):
            series = sorted((row for row in at if row.sampler == sampler), key=lambda row: row.nfe)
            # Nudged sideways (log axis: a factor) so samplers at the same NFE do not hide each other's intervals.
            ax.errorbar([row.nfe * (1 + 0.025 * (offset - 2)) for row in series], [row.mrr for row in series],
                        yerr=[[row.mrr - row.mrr_ci[0] for row in series], [row.mrr_ci[1] - row.mrr for row in series]],
                        marker="o", capsize=3, label=sampler)
        ax.set_xscale("log")
        ax.set_xticks(sorted({row.nfe for row in at}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("UNet evaluations per sample (NFE)")
        ax.set_ylabel("MRR of the own conditioning (L2)")
        ax.set_title(f"guidance {guidance:g}")
        ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="outputs/demo/checkpoints/last.ckpt")
    parser.add_argument("--num-conditionings", type=int, default=200,
                        help="N validation conditionings (200: ~15 min here; the study used 256)")
    parser.add_argument("-k", "--samples-per-conditioning", type=int, default=2)
    parser.add_argument("--guidance", type=float, nargs="+", default=None,
                        help="guidance scales (default: 1 and the demo's, conf/experiment/demo.yaml)")
    parser.add_argument("--settings", nargs="+", default=None, metavar="SAMPLER:STEPS",
                        help="e.g. ddpm:100 unipc:15 (default: the issue's nine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench/samplers")
    parser.add_argument("--replot", metavar="RESULTS_JSON", help="only redraw the plot of an earlier results.json")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        title = (f"{saved['ckpt']}: N={saved['num_conditionings']} x k={saved['samples_per_conditioning']}, "
                 f"ranks among {saved['gallery_size']} validation images")
        print(plot([Row(**row) for row in saved["rows"]], Path(args.replot).parent / "faithfulness_vs_nfe.png", title))
        return
    from rcdm_lab.cli.sample import pick_device
    from rcdm_lab.errors import RCDMError
    from rcdm_lab.metrics.intervals import mean_interval, per_conditioning_means
    from rcdm_lab.trained_run import TrainedRun

    if not Path(args.ckpt).is_file():
        raise SystemExit(f"no checkpoint {args.ckpt}: run `make demo` first (or pass CKPT=<a last.ckpt>)")
    settings = ([(name, int(steps)) for name, steps in (s.split(":") for s in args.settings)]
                if args.settings else SETTINGS)
    guidances = args.guidance or [1.0, demo_guidance()]
    device = pick_device("auto")
    run = TrainedRun.load(args.ckpt, device=device)
    n, k = args.num_conditionings, args.samples_per_conditioning
    items = run.val_items(n, "--num-conditionings")
    gallery = run.representations("val")
    base = {**default_sampling(), "seed": args.seed, "progress": False}
    print(f"{args.ckpt}: N={n} conditionings x k={k} samples, gallery {len(gallery)} validation images, "
          f"{torch.get_num_threads()} threads, device {device}")
    rows: list[Row] = []
    ranks: dict[tuple[str, int, float], torch.Tensor] = {}
    started = time.perf_counter()
    for guidance in guidances:
        for sampler, steps in tqdm(settings, desc=f"guidance {guidance:g}", leave=False):
            try:
                row, ranks[sampler, steps, guidance] = measure(
                    run, items, gallery, k, {**base, "sampler": sampler, "steps": steps, "guidance": guidance})
            except RCDMError as error:
                raise SystemExit(f"{sampler} {steps} at guidance {guidance:g}: {error}") from error
            reference = ranks.get((*REFERENCE, guidance))
            if reference is not None and (sampler, steps) != REFERENCE:
                difference = (per_conditioning_means(1 / ranks[sampler, steps, guidance].double(), k)
                              - per_conditioning_means(1 / reference.double(), k))
                row.mrr_minus_reference_ci = list(mean_interval(difference))
            rows.append(row)
            tqdm.write(row.line())
    total = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    verdicts = []
    for guidance in guidances:
        reference = next((r for r in rows if (r.sampler, r.steps) == REFERENCE and r.guidance == guidance), None)
        if reference is None:
            continue
        within = [r for r in rows if r.guidance == guidance and r.steps <= 20 and r.sampler != REFERENCE[0]
                  and reference.mrr_ci[0] <= r.mrr <= reference.mrr_ci[1]]
        best = min(within, key=lambda r: (r.nfe, -r.mrr), default=None)
        verdicts.append(f"guidance {guidance:g}: DDPM-100 MRR {reference.mrr:.4f} "
                        f"[{reference.mrr_ci[0]:.4f},{reference.mrr_ci[1]:.4f}]; "
                        + (f"fewest evaluations within it at <= 20 steps: {best.sampler} {best.steps} "
                           f"(nfe {best.nfe:g}, MRR {best.mrr:.4f}, {reference.nfe / best.nfe:.1f}x fewer)"
                           if best else "no setting with <= 20 steps lies within its interval"))
    for verdict in verdicts:
        print(verdict)
    title = f"{args.ckpt}: N={n} x k={k}, ranks among {len(gallery)} validation images"
    png = plot(rows, out / "faithfulness_vs_nfe.png", title)
    meta = {"ckpt": args.ckpt, "num_conditionings": n, "samples_per_conditioning": k, "gallery_size": len(gallery),
            "seed": args.seed, "threads": torch.get_num_threads(), "device": str(device),
            "precision": base["precision"], "batch_size": base["batch_size"], "seconds": round(total, 1)}
    (out / "results.json").write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows], "verdicts": verdicts},
                                                 indent=2) + "\n")
    (out / "results.md").write_text("\n".join([f"`{title}`, {total / 60:.1f} min", "", "```",
                                               *(r.line() for r in rows), "```", "", *verdicts, ""]))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {png} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
