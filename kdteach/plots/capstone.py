"""Figures of notebook 07, the capstone: coverage and set size per exit, one line per group, one panel per set
method and student, the teacher beside them. Each takes a kdteach.experiments.capstone.DatasetResult."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from kdteach.plots.sets import DODGE, LINESTYLES, MARKERS

__all__ = ["plot_group_coverage", "plot_group_sizes"]

METHODS = ("LAC", "RAPS", "AVCS", "Mondrian")


def _students(result: Any) -> list[str]:
    return list(dict.fromkeys(o.model for o in result.outcomes if o.model != "teacher"))


def _panels(result: Any, metric: str, methods: Sequence[str], ylabel: str, ylim: tuple[float, float], target: float | None) -> Figure:
    # One row of panels per method, one column per student; in each, one line per group over the exits (mean over
    # seeds, bars +- 1 std when there are several), the teacher's one exit as a hollow marker right of the last exit.
    students, groups, exits = _students(result), result.group_names, len(result.exits)
    offsets = [DODGE * (j / (len(groups) - 1) - 0.5) if len(groups) > 1 else 0.0 for j in range(len(groups))]
    fig, axes = plt.subplots(len(methods), len(students), figsize=(3.6 * len(students), 2.6 * len(methods)), squeeze=False, sharey=True)
    n_seeds = len(result.seeds)
    handles = []
    for row, method in enumerate(methods):
        for col, model in enumerate(students):
            ax = axes[row][col]
            mine = [o for o in result.outcomes if o.model == model]
            for g, (name, offset) in enumerate(zip(groups, offsets)):
                values = np.asarray([getattr(o.by_group[method][g], metric) for o in mine], dtype=float)  # (seeds, exits)
                style = dict(ls=LINESTYLES[g % len(LINESTYLES)], marker=MARKERS[g % len(MARKERS)], ms=5, mfc="none", capsize=2, clip_on=False)
                line = ax.errorbar(np.arange(1, exits + 1) + offset, values.mean(axis=0), yerr=values.std(axis=0, ddof=1) if n_seeds > 1 else None,
                                   label=name + (" (bias-conflicting)" if g in result.conflicting else ""), **style)
                teacher = np.mean([getattr(o.by_group[method][g], metric)[0] for o in result.outcomes if o.model == "teacher"])
                ax.plot([exits + 0.7 + offset], [teacher], marker=MARKERS[g % len(MARKERS)], ms=7, mfc="none", ls="none",
                        color=line.lines[0].get_color(), clip_on=False)
                if row == 0 and col == 0:
                    handles.append(line)
            if target is not None:
                ax.axhline(target, ls="--", color="black", lw=1)
            ax.set_ylim(*ylim)
            ax.set_xlim(0.5, exits + 1.1)
            ax.set_xticks(list(range(1, exits + 1)) + [exits + 0.7], [f"{e + 1}\n{n}" for e, n in enumerate(result.exits)] + ["teacher"], fontsize=7)
            feasible = np.mean([o.avcs_feasible for o in mine])
            note = f"\nrule infeasible on {100 * (1 - feasible):.0f}% of splits (full set)" if method == "AVCS" and feasible < 1 else ""
            ax.set_title(f"{model}: {method}{note}", fontsize=8)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed: no spread to show"
    fig.suptitle(f"{result.dataset}: {metric} per exit and group ({spread}); the teacher's one exit at the right", fontsize=9)
    legend_rows = -(-len(groups) // 2)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.15) / fig.get_figheight(), 1, 0.97))  # room for the legend, in inches
    # The legend sits below every panel, outside the data.
    fig.legend(handles=handles, loc="lower center", ncol=min(len(groups), 2), fontsize=7, frameon=False)
    return fig


def plot_group_coverage(result: Any, *, miscoverage: float, methods: Sequence[str] = METHODS) -> Figure:
    """Coverage per exit, one line per group, one panel per set method (rows) and student (columns); the target
    1 - miscoverage dashed; y from 0 to 1; the legend below the panels.

    Args:
        result: a capstone.DatasetResult.
        miscoverage: the sets' target miscoverage.
        methods: the set methods, one row each.

    Returns:
        The figure.
    """
    return _panels(result, "coverage", methods, f"coverage (target {1 - miscoverage:g}, dashed)", (0.0, 1.0), 1 - miscoverage)


def plot_group_sizes(result: Any, *, methods: Sequence[str] = METHODS) -> Figure:
    """Mean set size per exit (labels; an empty set counts 0), one line per group, one panel per set method and
    student; y from 0 to the number of classes.

    Args:
        result: a capstone.DatasetResult.
        methods: the set methods, one row each.

    Returns:
        The figure.
    """
    return _panels(result, "size", methods, "mean set size (labels)", (0.0, float(len(result.class_names))), None)
