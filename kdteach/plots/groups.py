"""Figures of notebook 02: example images per group, per-group accuracy over seeds, linear probes per stage."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from kdteach.groups import GroupMetrics

__all__ = ["plot_group_grid", "plot_group_accuracies", "plot_probes"]


def plot_group_grid(data, per_group: int = 8, *, seed: int = 0) -> Figure:
    """A row of example images for each group, labelled with the group's name and size.

    Args:
        data: a kdteach.data.GroupedData.
        per_group: images per row.
        seed: which examples are drawn.

    Returns:
        The figure.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    counts = data.group_counts()
    generator = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(data.num_groups, per_group, figsize=(1.1 * per_group + 1.6, 1.15 * data.num_groups), squeeze=False)
    for g, row in enumerate(axes):
        members = torch.nonzero(data.groups == g).flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[:per_group]]
        for ax, i in zip(row, list(chosen) + [None] * per_group):
            ax.set_xticks([])
            ax.set_yticks([])
            if i is not None:
                image = data.images[i].permute(1, 2, 0).numpy()
                ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
            else:
                ax.set_axis_off()
        row[0].set_ylabel(f"{data.group_names[g]}\n(n={counts[g]})", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(data.name)
    fig.tight_layout()
    return fig


def plot_group_accuracies(by_model: Mapping[str, Sequence[GroupMetrics]], *, worst_group: bool = True) -> Figure:
    """Bars of each model's per-group test accuracy, mean over seeds, with the seed-to-seed std as error bars.

    Args:
        by_model: model name -> one GroupMetrics per seed (e.g. kdteach.experiments.spurious.SpuriousResult.by_model()).
        worst_group: add a last group of bars for the worst-group accuracy.

    Returns:
        The figure.
    """
    scored = {name: list(metrics) for name, metrics in by_model.items() if metrics}
    if not scored:
        raise ValueError("by_model holds no GroupMetrics")
    group_names = list(next(iter(scored.values()))[0].group_names)
    columns = group_names + (["worst-group"] if worst_group else [])
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 4, 3.6))
    width = 0.8 / len(scored)
    for m, (name, metrics) in enumerate(scored.items()):
        values = np.array([list(g.per_group) + ([g.worst_group] if worst_group else []) for g in metrics]) * 100
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(len(columns))
        ax.bar(np.arange(len(columns)) + (m - (len(scored) - 1) / 2) * width, np.nanmean(values, axis=0), width, yerr=std, capsize=2, label=name)
    ax.set_xticks(np.arange(len(columns)), columns, rotation=15)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    seeds = max(len(metrics) for metrics in scored.values())
    # "mean ± std" only where there is a spread to show: one seed has no std (its error bars are zero).
    ax.set_title(f"accuracy per group, mean ± std over {seeds} seeds" if seeds > 1 else "accuracy per group (1 seed)")
    fig.tight_layout()
    return fig


def plot_probes(probes: Mapping[str, Sequence]) -> Figure:
    """Linear-probe balanced accuracy per stage, for the label and for the spurious attribute, one line per model.

    Args:
        probes: model name -> rows with .stage, .label and .spurious (kdteach.experiments.spurious.StageProbe).

    Returns:
        The figure (two panels: label, spurious attribute).
    """
    if not probes:
        raise ValueError("probes is empty")
    stages = list(dict.fromkeys(str(r.stage) for rows in probes.values() for r in rows))  # in order of first appearance
    # Models often agree (every probe at 100% for the background): each model's line is shifted a little along x and
    # drawn in its own marker and line style, so that no line hides under another.
    offsets = np.linspace(-0.12, 0.12, len(probes)) if len(probes) > 1 else np.zeros(1)
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1)))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, target, title in zip(axes, ("label", "spurious"), ("label", "spurious attribute")):
        for m, (name, rows) in enumerate(probes.items()):
            marker, linestyle = styles[m % len(styles)]
            x = [stages.index(str(r.stage)) + offsets[m] for r in rows]
            ax.plot(x, [100 * float(getattr(r, target)) for r in rows], marker=marker, linestyle=linestyle, label=name)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(stages)), stages)
        ax.set_title(f"linear probe for the {title}")
        ax.set_xlabel("stage")
    axes[0].set_ylabel("balanced accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
