"""Figures of notebook 03: the early readout's margins per group, and the methods' worst-group vs average accuracy."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from kdteach.debias import confidence_margin
from kdteach.report import SeedSummary, summarize_seeds

if TYPE_CHECKING:  # for the annotation only: experiments import plots, never the reverse
    from kdteach.experiments.dedier import StudentResult

__all__ = ["plot_margin_histograms", "plot_method_comparison"]


def plot_margin_histograms(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, group_names: Sequence[str], *, bins: int = 20, title: str = "") -> Figure:
    """One panel per group: the readout's confidence margin, split into examples it gets right and wrong.

    DeDiER's premise is visible here or not at all: on the bias-conflicting groups an early readout should be
    wrong, and wrong with a large margin.

    Args:
        readout_logits: (N, C) readout logits.
        labels: (N,) true classes.
        groups: (N,) group ids.
        group_names: one name per group.
        bins: histogram bins over [0, 1].
        title: figure title.

    Returns:
        The figure.
    """
    if len(readout_logits) != len(labels) or len(labels) != len(groups):
        raise ValueError(f"readout_logits, labels and groups must have the same length, got {len(readout_logits)}, {len(labels)}, {len(groups)}")
    margin = confidence_margin(readout_logits).cpu().numpy()
    wrong = (readout_logits.argmax(1).cpu() != labels.cpu()).numpy()
    groups = groups.cpu().numpy()
    cols = len(group_names)
    fig, axes = plt.subplots(1, cols, figsize=(3.0 * cols, 2.6), sharex=True, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for g, (ax, name) in enumerate(zip(axes[0], group_names)):
        member = groups == g
        ax.hist([margin[member & ~wrong], margin[member & wrong]], bins=edges, stacked=True, color=["tab:green", "tab:red"], label=["right", "wrong"])
        acc = 1 - wrong[member].mean() if member.any() else math.nan
        ax.set_title(f"{name}\n(n={int(member.sum())}, readout acc {acc:.0%})", fontsize=9)
        ax.set_xlabel("margin (top-1 - top-2)")
    axes[0][0].set_ylabel("training examples")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _per_method(results: Sequence[StudentResult], metric: str) -> dict[str, dict[int, float]]:
    # method -> {seed: a GroupMetrics field}, students without a test score left out (as dedier.dedier_per_seed).
    values: dict[str, dict[int, float]] = {}
    for r in results:
        if r.test is not None:
            values.setdefault(r.method, {})[r.seed] = float(getattr(r.test, metric))
    return values


def plot_method_comparison(results: Sequence[StudentResult], *, title: str = "") -> Figure:
    """Worst-group against average (train-weighted) accuracy, one point per method: the mean over seeds, with the
    seed-to-seed standard deviation as error bars where there are two seeds or more.

    Each method has its own hollow marker, so methods that land on the same point (in smoke mode DeDiER and KD
    can) stay visible; the title says how many seeds the points average.

    Args:
        results: kdteach.experiments.dedier.StudentResult of one dataset (students without a test score are skipped).
        title: figure title (the seed count is appended).

    Returns:
        The figure.
    """
    worst, average = _per_method(results, "worst_group"), _per_method(results, "average_train_weighted")
    if not worst:
        raise ValueError("results holds no scored student")
    def error(summary: SeedSummary) -> float | None:
        return None if math.isnan(summary.std) else 100 * summary.std

    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    markers = "osD^vP*X"
    seeds = max(len(v) for v in worst.values())
    for i, method in enumerate(worst):
        w, a = summarize_seeds(list(worst[method].values())), summarize_seeds(list(average[method].values()))
        ax.errorbar(100 * a.mean, 100 * w.mean, xerr=error(a), yerr=error(w), fmt=markers[i % len(markers)], capsize=3,
                    markersize=9 - i % 3, fillstyle="none", markeredgewidth=1.5, label=method)
    ax.set_xlabel("average accuracy, train-weighted (%)")
    ax.set_ylabel("worst-group accuracy (%)")
    ax.legend(fontsize=8)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set_title(f"{title} ({spread})" if title else spread)
    fig.tight_layout()
    return fig
