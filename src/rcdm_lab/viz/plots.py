"""Figures for the metrics: distance box plots (paper Fig. 21/22), rank histograms (Fig. 17), factors kept.

Built on :class:`matplotlib.figure.Figure` directly rather than pyplot: no global figure registry, no backend
selection, so plotting is safe from threads, in CI without a display, and never leaks open figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from rcdm_lab.errors import RCDMError

DPI = 120


def _as_flat(values: Tensor | Sequence[float], what: str) -> Tensor:
    flat = torch.as_tensor(values).detach().double().flatten().cpu()
    if flat.numel() == 0:
        raise RCDMError(f"{what} is empty; give it at least one value or leave it out")
    if not torch.isfinite(flat).all():
        raise ValueError(f"{what} holds non-finite values (NaN or inf)")
    return flat


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def box_plot(
    groups: Mapping[str, Tensor | Sequence[float]],
    path: str | Path,
    title: str = "",
    ylabel: str = "squared L2 distance",
    log_scale: bool = False,
) -> Path:
    """One box per group, in insertion order, each labelled with its name and size; writes a PNG at `path`.

    Groups differ wildly in size (one flip per image, hundreds of same-class images), hence the "n=" in each label.
    Long or many labels are rotated so they stay readable. With `log_scale`, values <= 0 switch the axis to symlog
    (linear below the smallest positive value) instead of being dropped.
    """
    if not groups:
        raise RCDMError("box_plot needs at least one group of distances")
    names = list(groups)
    data = [_as_flat(groups[name], f"group {name!r}").numpy() for name in names]
    labels = [f"{name}\n(n={len(values)})" for name, values in zip(names, data, strict=True)]
    figure = Figure(figsize=(min(14.0, max(4.0, 1.0 + 0.9 * len(names))), 4.0), layout="constrained")
    ax = figure.add_subplot()
    ax.boxplot(data, showmeans=True)
    # Set tick labels ourselves: boxplot's `labels` keyword was renamed across matplotlib versions.
    rotate = len(names) > 6 or max(len(name) for name in names) > 10
    ax.set_xticks(range(1, len(names) + 1), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    if log_scale:
        positive = [values[values > 0] for values in data]
        if all(values.size for values in data) and all(len(p) == len(v) for p, v in zip(positive, data, strict=True)):
            ax.set_yscale("log")
        else:
            # An exact 0 (a training duplicate of the conditioning, say) has no place on a log axis; rather than fail
            # after an expensive evaluation, go linear below the smallest positive value and log above it.
            smallest = min((p.min() for p in positive if p.size), default=1.0)
            ax.set_yscale("symlog", linthresh=float(smallest))
            if min(values.min() for values in data) >= 0:
                ax.set_ylim(bottom=0)   # distances: no empty negative half of the symlog axis
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def rank_counts(ranks: Tensor | Sequence[int], max_rank: int) -> list[int]:
    """Counts of ranks 1..max_rank, then one last entry counting every rank above max_rank (length max_rank + 1)."""
    if max_rank < 1:
        raise RCDMError(f"max_rank must be at least 1, got {max_rank}")
    flat = _as_flat(ranks, "ranks")
    if not torch.equal(flat, flat.round()) or (flat < 1).any():
        raise ValueError("ranks must be integers >= 1 (1 = the conditioning is the nearest)")
    flat = flat.long()
    counts = torch.bincount(flat.clamp_max(max_rank + 1) - 1, minlength=max_rank + 1)
    return counts.tolist()


def rank_histogram(
    ranks: Mapping[str, Tensor | Sequence[int]],
    path: str | Path,
    max_rank: int | None = None,
    title: str = "",
) -> Path:
    """Side-by-side bars of the rank of the conditioning (1 = best), one colour per metric name, as a PNG at `path`.

    Bins are the integers 1..max_rank; when `max_rank` is given, a last "> max_rank" bin collects the tail so one far
    outlier does not squeeze the informative low ranks. Without it, max_rank is the largest rank seen (no tail bin).
    """
    if not ranks:
        raise RCDMError("rank_histogram needs ranks for at least one metric")
    tail = max_rank is not None
    if max_rank is None:
        max_rank = max(int(_as_flat(values, f"ranks of {name!r}").max().item()) for name, values in ranks.items())
    counts = {name: rank_counts(values, max_rank) for name, values in ranks.items()}
    bins = max_rank + 1 if tail else max_rank
    width = 0.8 / len(counts)
    # Wide enough for side-by-side bars, capped so hundreds of ranks still give a page-sized figure.
    figure = Figure(figsize=(min(12.0, max(5.0, 2.0 + 0.3 * bins * len(counts) ** 0.5)), 3.5), layout="constrained")
    ax = figure.add_subplot()
    for index, (name, metric_counts) in enumerate(counts.items()):
        offset = (index - (len(counts) - 1) / 2) * width
        ax.bar([b + 1 + offset for b in range(bins)], metric_counts[:bins], width=width, label=name)
    # Label every bin when few, else about ten evenly spaced ranks (always rank 1), plus the tail bin.
    step = max(1, -(-max_rank // 10))
    ticks = [1, *range(step, max_rank + 1, step)] if step > 1 else list(range(1, max_rank + 1))
    labels = [str(t) for t in ticks]
    if tail:
        ticks.append(max_rank + 1)
        labels.append(f"> {max_rank}")
    ax.set_xticks(ticks, labels)
    ax.set_xlabel("rank of the conditioning")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def factor_bars(
    kept: Mapping[str, float],
    intervals: Mapping[str, Sequence[float]],
    chance: Mapping[str, float],
    ceiling: Mapping[str, float | None],
    path: str | Path,
    title: str = "",
) -> Path:
    """One bar per factor (kept, with its [low, high] interval as an error bar), chance and ceiling as markers.

    rcdm-eval metric=factors: a bar far above its chance marker and close to its ceiling marker is a factor the
    samples keep from their conditioning. A None ceiling is left out.
    """
    if not kept:
        raise RCDMError("factor_bars needs at least one factor")
    names = list(kept)
    values = _as_flat([kept[name] for name in names], "kept").tolist()
    low_high = [list(intervals[name]) for name in names]
    below = [max(0.0, v - lo) for v, (lo, _) in zip(values, low_high, strict=True)]
    above = [max(0.0, hi - v) for v, (_, hi) in zip(values, low_high, strict=True)]
    positions = list(range(len(names)))
    figure = Figure(figsize=(max(5.0, 1.0 + 0.8 * len(names)), 4.0), layout="constrained")
    ax = figure.add_subplot()
    ax.bar(positions, values, width=0.6, color="tab:blue", alpha=0.8, label="kept (95 % interval)",
           yerr=[below, above], capsize=4, ecolor="black")
    ax.scatter(positions, [chance[name] for name in names], marker="_", s=600, linewidths=2.5, color="tab:red",
               zorder=3, label="chance")
    with_ceiling = [(p, ceiling[name]) for p, name in zip(positions, names, strict=True)
                    if ceiling.get(name) is not None]
    if with_ceiling:
        ax.scatter([p for p, _ in with_ceiling], [c for _, c in with_ceiling], marker="v", s=60, color="tab:green",
                   zorder=3, label="ceiling (classifier on the real images)")
    rotate = len(names) > 6 or max(len(name) for name in names) > 10
    ax.set_xticks(positions, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, 1.22)   # headroom for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("kept: samples with the\nconditioning's value")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def dim_variance_plot(ratios: Mapping[str, Tensor | Sequence[float]], path: str | Path, held: float = 0.1,
                      title: str = "") -> Path:
    """Per-dimension variance of the samples' representations over the data's, sorted, one curve per model.

    Dimensions on the left of a curve are the ones its conditioning fixes (the samples agree there); the dashed
    line at `held` is where rcdm_lab.metrics.diversity counts a dimension as held, the solid one at 1 is the spread
    of the data itself. A log axis, because the interesting dimensions sit orders of magnitude below 1.
    """
    if not ratios:
        raise RCDMError("dim_variance_plot needs the variance ratios of at least one model")
    figure = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = figure.add_subplot()
    for name, values in ratios.items():
        flat = _as_flat(values, f"variance ratios of {name!r}").clamp_min(1e-6)
        ranks = torch.linspace(0, 1, len(flat))
        share = 100 * float((flat < held).double().mean())
        ax.plot(ranks.numpy(), flat.sort().values.numpy(), label=f"{name}: {share:.0f}% of dims held")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(held, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("dimensions, sorted (fraction)")
    ax.set_ylabel("sample variance / data variance")
    ax.set_title(title or "what the samples keep, per dimension", fontsize=10)
    ax.legend(fontsize=8)
    return _save(figure, path)


def read_metrics_csv(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Lightning's CSVLogger metrics.csv as {metric: (steps, values)}, keeping only the rows that hold each metric
    (the logger writes sparse rows: losses every log_every_n_steps, faithfulness every callback interval)."""
    import csv

    series: dict[str, tuple[list[int], list[float]]] = {}
    with Path(path).open(newline="") as file:
        for row in csv.DictReader(file):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(float(step)))
                values.append(float(value))
    return series


def _smoothed(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` values: per-batch losses are too noisy to read a trend from."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def convergence_plot(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Loss per quarter of the diffusion chain (top) and faithfulness (bottom) over training steps, from the run's
    metrics.csv: the loss flattens long before the model uses its conditioning, which the faithfulness curve shows.
    """
    series = read_metrics_csv(metrics_csv)
    quarters = sorted(key for key in series if key.startswith("train/loss_q"))
    faithfulness = [key for key in ("faithfulness/top1", "faithfulness/mrr", "faithfulness/guided_top1",
                                    "faithfulness/guided_mrr") if key in series]
    if not quarters and "train/loss" not in series:
        raise RCDMError(f"{metrics_csv} holds no train/loss rows: is it an rcdm-train run's logs/metrics.csv?")
    panels = 2 if faithfulness else 1
    figure = Figure(figsize=(7.0, 2.6 * panels + 0.4), layout="constrained")
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    for key in quarters or ["train/loss"]:
        steps, values = series[key]
        window = max(1, len(values) // 25)
        label = {"q0": "t in the first quarter (least noise)", "q3": "t in the last quarter (most noise)"}.get(
            key.rsplit("_", 1)[-1], key.removeprefix("train/"))
        axes[0].plot(steps, _smoothed(values, window), label=label, linewidth=1.2)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (smoothed)")
    axes[0].legend(fontsize=7)
    axes[0].set_title(title or "convergence", fontsize=10)
    if faithfulness:
        for key in faithfulness:
            steps, values = series[key]
            axes[1].plot(steps, values, marker="o", markersize=3, label=key.removeprefix("faithfulness/"))
        axes[1].set_ylabel("faithfulness (validation)")
        axes[1].set_ylim(0, max(1e-3, max(max(series[k][1]) for k in faithfulness)) * 1.15)
        axes[1].legend(fontsize=7)
    axes[-1].set_xlabel("training step")
    return _save(figure, path)
