"""Figures of notebooks 05 and 06: accuracy against compute per exit, reliability per exit, prediction-set metrics
per exit for each method, one example's sets across exits, and the wiggle regression intervals. (Notebook 07's
figures are in kdteach.plots.capstone.)"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdteach.exits import ECE_BINS, reliability_bins

__all__ = [
    "plot_accuracy_vs_compute",
    "plot_reliability",
    "plot_set_metrics",
    "plot_set_membership",
    "plot_wiggle_intervals",
]

METRIC_TITLES = {"coverage": "coverage", "size": "mean size (empty = 0; labels, or width)", "empty_rate": "empty rate", "nestedness": "nestedness N(t)"}


def plot_accuracy_vs_compute(models: Sequence[Any]) -> Figure:
    """Accuracy against mean multiply-accumulates: each exit alone (anytime prediction) and the
    confidence-threshold policy over its thresholds, for each model.

    Args:
        models: kdteach.experiments.exits.ModelResult-like objects: .model (a name), .exits (each with .macs and
            .accuracy) and .policy (kd.exits.PolicyPoint).

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, color in zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.plot([e.macs / 1e3 for e in m.exits], [100 * e.accuracy for e in m.exits], "o--", color=color, label=f"{m.model}: exit alone")
        points = sorted((p.mean_macs / 1e3, 100 * p.accuracy) for p in m.policy)
        ax.plot(*zip(*points), "-", color=color, alpha=0.8, label=f"{m.model}: confidence threshold")
    ax.set_xlabel("multiply-accumulates per example (thousands)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(exit_logits: torch.Tensor, labels: torch.Tensor, *, bins: int = ECE_BINS, min_count: int = 10,
                     names: Sequence[str] | None = None) -> Figure:
    """Reliability diagram per exit: accuracy against mean confidence in the ECE's equal-width confidence bins.

    Bins with fewer than min_count examples say little (one example is 0% or 100% accurate): they are drawn as
    small hollow markers, not joined to the line.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).
        bins: number of bins (default: the ECE's, kd.exits.ECE_BINS).
        min_count: bins with fewer examples are only marked.
        names: a label per exit (default "exit 1", ...).

    Returns:
        The figure.
    """
    count, confidence, accuracy = (v.cpu() for v in reliability_bins(exit_logits, labels, bins=bins))
    names = list(names) if names is not None else [f"exit {t + 1}" for t in range(len(count))]
    fig, ax = plt.subplots(figsize=(4.8, 4))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    for t, color in zip(range(len(count)), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3):
        enough, few = count[t] >= min_count, (count[t] > 0) & (count[t] < min_count)
        ax.plot(confidence[t][enough], accuracy[t][enough], "o-", color=color, label=names[t])
        ax.plot(confidence[t][few], accuracy[t][few], "o", mfc="none", ms=4, color=color, alpha=0.6)
    ax.plot([], [], "o", mfc="none", color="gray", label=f"bin with < {min_count} examples")
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability per exit ({bins} bins, as the ECE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# One marker shape (hollow) and line style per method, and a small horizontal offset around each exit: methods that
# coincide (every nested method has N(t) = 1) stay visible on top of each other.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
DODGE = 0.3  # total horizontal spread of the methods around each exit (in exits)


def plot_set_metrics(summaries: Sequence[Any], *, alpha: float, methods: Sequence[str] | None = None,
                     metrics: Sequence[str] = ("coverage", "size", "empty_rate", "nestedness"),
                     over: str = "calibration splits") -> Figure:
    """Coverage, size, empty rate and nestedness per exit, one line per method, with a +-1 std band over splits
    where the summary has one (coverage_std, size_std).

    Methods often coincide (every nested method has N(t) = 1, every method N(1) = 1): each gets its own hollow
    marker, line style and a small horizontal offset around the exit, so none hides another. The figure says
    "mean ± std over n" only when it averages n > 1 splits.

    Args:
        summaries: kd.sets.MethodSummary's (one per method).
        alpha: the target miscoverage (coverage panel: a dashed line at 1 - alpha).
        methods: which methods to draw (default all).
        metrics: which panels.
        over: what the summaries average over, for the title ("calibration splits").

    Returns:
        The figure.
    """
    chosen = [s for s in summaries if methods is None or s.method in methods]
    offsets = [DODGE * (j / (len(chosen) - 1) - 0.5) if len(chosen) > 1 else 0.0 for j in range(len(chosen))]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for j, (summary, offset) in enumerate(zip(chosen, offsets)):
            values = torch.tensor(getattr(summary, metric), dtype=torch.float64)
            exits = torch.arange(1, len(values) + 1) + offset
            line, = ax.plot(exits, values, ls=LINESTYLES[j % len(LINESTYLES)], marker=MARKERS[j % len(MARKERS)], ms=5, mfc="none",
                            alpha=0.85, label=summary.method)
            std = getattr(summary, metric + "_std", None)
            if std is not None and summary.splits > 1:
                std = torch.tensor(std, dtype=torch.float64)
                ax.fill_between(exits, values - std, values + std, color=line.get_color(), alpha=0.12)
        if metric == "coverage":
            ax.axhline(1 - alpha, ls="--", color="black", lw=1, label=f"1 - alpha = {1 - alpha:g}")
        ax.set_title(METRIC_TITLES.get(metric, metric))
        ax.set_xlabel("exit")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    counts = sorted({s.splits for s in chosen})
    if counts and counts[0] > 1:
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        title = f"mean ± std over {n} {over} (bands: ± 1 std where drawn)"
    elif counts and counts[-1] > 1:
        title = f"means over {counts[0]}-{counts[-1]} {over}; ± 1 std bands only for methods with more than one"
    else:
        title = "one run: no spread to show"
    fig.suptitle(title + "; markers offset around each exit", fontsize=10)
    fig.tight_layout()
    return fig


def plot_set_membership(sets: Mapping[str, torch.Tensor], index: int, label: int) -> Figure:
    """One example's sets at every exit, per method: a grid of exits x classes, filled where the class is in the set.

    Args:
        sets: method -> (exits, N, C) bool sets.
        index: which example.
        label: its true class (outlined).

    Returns:
        The figure.
    """
    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets), 2.8), squeeze=False)
    for ax, (method, s) in zip(axes[0], sets.items()):
        grid = s[:, index].double().cpu()
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto")
        ax.add_patch(plt.Rectangle((label - 0.5, -0.5), 1, grid.shape[0], fill=False, ec="red", lw=2))
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]), [str(t + 1) for t in range(grid.shape[0])])
        ax.set_xlabel("class")
        ax.set_title(method, fontsize=10)
    axes[0][0].set_ylabel("exit")
    fig.suptitle(f"example {index}: sets across exits (red: true class {label})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_wiggle_intervals(curves: Any, *, exits: Sequence[int] | None = None) -> Figure:
    """Intervals on the input grid at a few exits, one panel per method, over the training data.

    Args:
        curves: kdteach.experiments.sets.WiggleCurves (data, grid_x, intervals: method -> (lower, upper)).
        exits: 0-based exits to draw (default: a quarter of the way, halfway, last).

    Returns:
        The figure.
    """
    grid_x, data = curves.grid_x.cpu(), curves.data
    methods = list(curves.intervals)
    total = curves.intervals[methods[0]][0].shape[0]
    exits = list(exits) if exits is not None else sorted({total // 4, total // 2, total - 1})
    low, high = float(data.train_x.min()), float(data.train_x.max())
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.8), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        lower, upper = (v.cpu() for v in curves.intervals[method])
        ax.scatter(data.train_x[:, 0], data.train_y, s=3, color="gray", alpha=0.5, label="training data")
        for t in exits:
            empty = lower[t] > upper[t]
            ax.fill_between(grid_x, lower[t].clamp(-5, 5), upper[t].clamp(-5, 5), where=~empty, alpha=0.3, label=f"exit {t + 1}")
        ax.axvspan(grid_x[0], low, color="orange", alpha=0.08)
        ax.axvspan(high, grid_x[-1], color="orange", alpha=0.08, label="outside training inputs")
        ax.set_ylim(-5, 5)
        ax.set_title(method)
        ax.set_xlabel("x (standardised)")
    axes[0][0].set_ylabel("y (standardised)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Intervals on a grid of inputs (blank where an interval is empty)", fontsize=10)
    fig.tight_layout()
    return fig
