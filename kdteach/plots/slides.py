"""Slide-ready figures, one per paper's argument (issue 23): large type, a title that states the point, labelled axes,
readable without a live kernel. kdteach.experiments.slides computes what they draw and writes them to results/.

- plot_soft_targets_slide: one digit's soft targets at several temperatures (Hinton et al. 2015);
- plot_dedier_pipeline: training images, the early readout's verdict, margin and DeDiER's weight (Tiwari et al. 2024);
- plot_nested_sets: one digit's sets per exit, RAPS beside AVCS, re-admitted labels marked (Jazbec et al. 2024).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

if TYPE_CHECKING:  # for the annotation only: experiments import plots, never the reverse
    from kdteach.experiments.slides import PipelineExample

__all__ = ["plot_soft_targets_slide", "plot_dedier_pipeline", "plot_nested_sets", "set_grid", "a_digit"]

# Slide type sizes (points): a title read from the back of a room, axis labels and ticks a step smaller.
TITLE, SUBTITLE, LABEL, TICK = 24, 16, 17, 14
WIDE = (16, 8)  # inches: 16:8 fits a 16:9 slide with room for its own heading; saved at 100 dpi, 1600 px wide
IN_SET, READMITTED = "tab:blue", "tab:orange"
HEADLINE_BOTTOM = 0.88  # share of the figure's height below the title and subtitle


def _headline(fig: Figure, title: str, subtitle: str) -> None:
    # The title states the point; the subtitle says how to read the figure. Laid out by hand above the panels
    # (tight_layout(rect=...) below HEADLINE_BOTTOM), so the two lines never collide with a panel's title.
    fig.text(0.5, 0.985, title, ha="center", va="top", fontsize=TITLE, fontweight="bold")
    fig.text(0.5, 0.925, subtitle, ha="center", va="top", fontsize=SUBTITLE, color="0.25")


def a_digit(label: int) -> str:
    """A class of digits with its article, for titles and captions: "a 2", "an 8".

    Args:
        label: the digit.

    Returns:
        The words.
    """
    return f"{'an' if str(label).startswith('8') else 'a'} {label}"


def _as_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    # (H, W) or (C, H, W) tensors/arrays, uint8 or float in [0, 1], as something imshow draws: (H, W) or (H, W, C).
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    if array.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (C, H, W), got {array.shape}")
    return array


def plot_soft_targets_slide(image: torch.Tensor | np.ndarray, probabilities: Sequence[Sequence[float]], temperatures: Sequence[float], *,
                            label: int) -> Figure:
    """One digit and a teacher's probabilities for it at each temperature, as bars on one linear scale.

    At T = 1 one bar holds almost all the mass; as T grows the other classes rise into view, in the same order at
    every T (dividing the logits by T keeps their ranking): the teacher's "dark knowledge" of which digits look alike.

    Args:
        image: the digit, (28, 28) or (1, 28, 28).
        probabilities: per temperature, the class probabilities softmax(z / T).
        temperatures: the T of each panel.
        label: the digit's class (its bar is drawn dark, the runner-up's value written over its bar).

    Returns:
        The figure: the image, then one panel per temperature.
    """
    if len(probabilities) != len(temperatures) or not temperatures:
        raise ValueError(f"probabilities and temperatures must have the same non-zero length, got {len(probabilities)} and {len(temperatures)}")
    classes = len(probabilities[0])
    if not 0 <= label < classes:
        raise ValueError(f"label must be a class in 0..{classes - 1}, got {label}")
    fig, axes = plt.subplots(1, 1 + len(temperatures), figsize=WIDE, gridspec_kw={"width_ratios": [1.3] + [2] * len(temperatures)})
    axes[0].imshow(_as_image(image).reshape(28, 28), cmap="gray_r")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title(f"the digit ({a_digit(label)})", fontsize=LABEL)
    for ax, t, probs in zip(axes[1:], temperatures, probabilities):
        probs = np.asarray(probs, dtype=float)
        colors = ["0.2" if c == label else "tab:orange" for c in range(classes)]
        ax.bar(range(classes), probs, color=colors)
        runner_up = max((c for c in range(classes) if c != label), key=lambda c: probs[c])
        ax.annotate(f"{probs[runner_up]:.2g}", (runner_up, probs[runner_up]), xytext=(0, 4), textcoords="offset points", ha="center",
                    fontsize=TICK, color="tab:orange")
        ax.set_title(f"T = {t:g}", fontsize=LABEL + 3)
        ax.set_ylim(0, 1.05)
        ax.set_xticks(range(classes))
        ax.set_xlabel("class", fontsize=LABEL)
        ax.tick_params(labelsize=TICK)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylabel("teacher's probability, softmax(z / T)", fontsize=LABEL)
    for ax in axes[2:]:
        ax.set_yticklabels([])
    _headline(fig, "A higher temperature reveals the teacher's dark knowledge",
              "Dark bar: the label. Orange: the other classes; their shares say which digits the teacher finds alike.")
    fig.tight_layout(rect=(0, 0, 1, HEADLINE_BOTTOM))
    return fig


def plot_dedier_pipeline(images: Sequence[torch.Tensor | np.ndarray], examples: Sequence[PipelineExample], *, alpha: float,
                         beta: float) -> Figure:
    """Training images in DeDiER's pipeline: one column per group, under each image the early readout's prediction,
    its confidence margin and the weight DeDiER gives the image.

    Args:
        images: one (C, H, W) image per example (uint8, or float in [0, 1]).
        examples: kdteach.experiments.slides.PipelineExample per image (group, bias-conflicting, label, prediction,
            margin, weight), grouped by group.
        alpha, beta: DeDiER's exponent and scale (in the subtitle's formula).

    Returns:
        The figure: rows of images, one column per group in order of appearance; the readout's errors in red.
    """
    if len(images) != len(examples) or not examples:
        raise ValueError(f"images and examples must have the same non-zero length, got {len(images)} and {len(examples)}")
    groups = list(dict.fromkeys(e.group for e in examples))
    columns = {g: [i for i, e in enumerate(examples) if e.group == g] for g in groups}
    rows = max(len(c) for c in columns.values())
    fig, axes = plt.subplots(rows, len(groups), figsize=(WIDE[0], 1.4 + 5.2 * rows), squeeze=False)
    for col, group in enumerate(groups):
        for row in range(rows):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if row >= len(columns[group]):
                ax.set_axis_off()
                continue
            e = examples[columns[group][row]]
            ax.imshow(_as_image(images[columns[group][row]]), interpolation="nearest")
            verdict = "wrong" if e.readout_wrong else "right"
            ax.set_xlabel(f"readout: {e.prediction} ({verdict})\nmargin {e.margin:.2f}\nweight {e.weight:.2f}", fontsize=LABEL,
                          color="tab:red" if e.readout_wrong else "0.25", fontweight="bold" if e.readout_wrong else "normal")
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red" if e.readout_wrong else "0.6")
                spine.set_linewidth(4 if e.readout_wrong else 1)
        conflicting = any(examples[i].conflicting for i in columns[group])
        axes[0][col].set_title(group + ("\n(bias-conflicting)" if conflicting else "\n(bias-aligned)"), fontsize=LABEL,
                               fontweight="bold" if conflicting else "normal")
    _headline(fig, "DeDiER upweights what an early readout gets confidently wrong",
              f"early readout → confidence margin (top-1 − top-2 probability) → weight exp(β · margin^α) if wrong, 1 if right; α = {alpha:g}, β = {beta:g}")
    fig.tight_layout(rect=(0, 0, 1, HEADLINE_BOTTOM))
    return fig


def set_grid(sets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """A method's sets per exit as a (classes, exits) grid: 0 out of the set, 1 in it, 2 in it although an earlier
    exit's set left it out (re-admitted: the sets are not nested there).

    Args:
        sets: per exit, the labels in the set.
        num_classes: the number of classes.

    Returns:
        The grid (int array).
    """
    grid = np.zeros((num_classes, len(sets)), dtype=int)
    kept = set(range(num_classes))  # the running intersection of the sets so far
    for t, labels in enumerate(sets):
        if any(not 0 <= y < num_classes for y in labels):
            raise ValueError(f"sets[{t}] holds a label outside 0..{num_classes - 1}: {list(labels)}")
        for y in labels:
            grid[y, t] = 2 if t > 0 and y not in kept else 1
        kept &= set(labels)
    return grid


def plot_nested_sets(image: torch.Tensor | np.ndarray, raps: Sequence[Sequence[int]], avcs: Sequence[Sequence[int]], *, label: int,
                     num_classes: int = 10, alpha: float | None = None) -> Figure:
    """One digit's prediction sets at every exit, RAPS beside AVCS, as label-by-exit grids.

    A filled cell: the label is in that exit's set; orange: it is back although an earlier exit had ruled it out.
    The true label's row is framed.

    Args:
        image: the digit, (28, 28) or (1, 28, 28).
        raps, avcs: per exit, the labels in each method's set.
        label: the digit's class.
        num_classes: rows of the grids.
        alpha: the miscoverage level, named in the subtitle when given.

    Returns:
        The figure: the image, the RAPS grid, the AVCS grid.
    """
    if len(raps) != len(avcs) or not raps:
        raise ValueError(f"raps and avcs must have sets for the same non-zero number of exits, got {len(raps)} and {len(avcs)}")
    if not 0 <= label < num_classes:
        raise ValueError(f"label must be a class in 0..{num_classes - 1}, got {label}")
    exits = len(raps)
    fig, axes = plt.subplots(1, 3, figsize=WIDE, gridspec_kw={"width_ratios": [1.6, 1, 1]})
    axes[0].imshow(_as_image(image).reshape(28, 28), cmap="gray_r")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title(f"the digit ({a_digit(label)})", fontsize=LABEL)
    colours = ListedColormap(["white", IN_SET, READMITTED])
    for ax, name, sets in ((axes[1], "RAPS (split conformal per exit)", raps), (axes[2], "AVCS (anytime-valid)", avcs)):
        ax.imshow(set_grid(sets, num_classes), cmap=colours, vmin=0, vmax=2, aspect="auto")
        ax.set_xticks(range(exits), [str(t + 1) for t in range(exits)])
        ax.set_yticks(range(num_classes), [str(y) for y in range(num_classes)])
        ax.set_xticks(np.arange(exits + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(num_classes + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="0.7", linewidth=1)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(labelsize=TICK)
        ax.add_patch(Rectangle((-0.5, label - 0.5), exits, 1, fill=False, edgecolor="black", linewidth=3))
        ax.set_xlabel("exit", fontsize=LABEL)
        ax.set_ylabel("label", fontsize=LABEL)
        ax.set_title(name, fontsize=LABEL)
    fig.legend(handles=[Patch(color=IN_SET, label="in the set"), Patch(color=READMITTED, label="back after an earlier exit ruled it out"),
                        Patch(facecolor="white", edgecolor="black", linewidth=3, label="true label")],
               loc="lower center", ncol=3, fontsize=TICK + 1, frameon=False)
    level = f" at miscoverage {alpha:g}" if alpha is not None else ""
    _headline(fig, "Anytime-valid sets only shrink; RAPS brings labels back",
              f"One test digit's prediction sets at each exit{level}: a label ruled out early should stay out")
    fig.tight_layout(rect=(0, 0.07, 1, HEADLINE_BOTTOM))
    return fig
