"""Figures of notebook 01: soft targets at several temperatures, learning curves, the temperature sweep."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from kdteach.distill import softmax_t

__all__ = ["plot_soft_targets", "plot_soft_targets_by_temperature", "plot_learning_curves", "plot_temperature_sweep", "plot_dark_knowledge"]


def plot_soft_targets(image: torch.Tensor, logits: torch.Tensor, temperature: float, *, label: int | None = None) -> Figure:
    """One digit and the teacher's probabilities for it at temperature T, on a linear and a log scale.

    The log scale shows the "dark knowledge": at T = 1 the wrong classes get probabilities like 1e-6 that a
    cross-entropy barely feels; raising T lifts them into view, and their ranking says which digits look alike.

    Args:
        image: (1, 28, 28) or (28, 28) image.
        logits: (C,) teacher logits for it.
        temperature: T > 0.
        label: the true class, marked in the title.

    Returns:
        The figure.
    """
    if logits.dim() != 1:
        raise ValueError(f"logits must have shape (classes,), got {tuple(logits.shape)}")
    probs = softmax_t(logits.detach().cpu()[None], temperature)[0].numpy()
    fig, (ax_img, ax_lin, ax_log) = plt.subplots(1, 3, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 2, 2]})
    ax_img.imshow(image.detach().cpu().reshape(28, 28), cmap="gray")
    ax_img.set_axis_off()
    ax_img.set_title(f"label {label}" if label is not None else "input")
    classes = range(len(probs))
    for ax, log in ((ax_lin, False), (ax_log, True)):
        ax.bar(classes, probs, color="tab:blue")
        ax.set_xticks(list(classes))
        ax.set_xlabel("class")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(max(probs.min() * 0.5, 1e-12), 1.5)
        else:
            ax.set_ylim(0, 1)
    ax_lin.set_title(f"softmax(z / T), T = {temperature:g}")
    ax_log.set_title("same, log scale")
    fig.tight_layout()
    return fig


def plot_soft_targets_by_temperature(image: torch.Tensor, logits: torch.Tensor, temperatures: Sequence[float] = (1.0, 4.0, 20.0), *,
                                     label: int | None = None) -> Figure:
    """One digit and the teacher's soft targets for it at several temperatures, side by side on one linear scale.

    The static version of the temperature slider: read left to right, the mass leaves the top class and the wrong
    classes become visible, in the same order at every T (dividing by T keeps the ranking of the logits).

    Args:
        image: (1, 28, 28) or (28, 28) image.
        logits: (C,) teacher logits for it.
        temperatures: the values of T, one panel each.
        label: the true class, marked in the title.

    Returns:
        The figure (the image's axes, then one bar chart per temperature, sharing the y axis).
    """
    if logits.dim() != 1:
        raise ValueError(f"logits must have shape (classes,), got {tuple(logits.shape)}")
    if len(temperatures) == 0:
        raise ValueError("temperatures is empty")
    fig, axes = plt.subplots(1, 1 + len(temperatures), figsize=(2.0 + 2.8 * len(temperatures), 2.8),
                             gridspec_kw={"width_ratios": [1] + [2] * len(temperatures)})
    axes[0].imshow(image.detach().cpu().reshape(28, 28).numpy(), cmap="gray")
    axes[0].set_axis_off()
    axes[0].set_title(f"label {label}" if label is not None else "input")
    for ax, temperature in zip(axes[1:], temperatures):
        probs = softmax_t(logits.detach().cpu()[None], temperature)[0].numpy()
        classes = range(len(probs))
        ax.bar(classes, probs, color="tab:blue")
        ax.set_xticks(list(classes))
        ax.set_ylim(0, 1)
        ax.set_xlabel("class")
        # The title gives the numbers the bars show: the top class's share and what the other classes get.
        ax.set_title(f"T = {temperature:g}: top {probs.max():.2f}, rest {1 - probs.max():.2f}", fontsize=10)
    for ax in axes[2:]:
        ax.tick_params(labelleft=False)
    axes[1].set_ylabel("softmax(z / T)")
    fig.tight_layout()
    return fig


def plot_learning_curves(
    curves: Mapping[str, Sequence[float]], *, title: str = "", ylabel: str = "test accuracy", mark: tuple[float, str] | None = None
) -> Figure:
    """One line per named curve over epochs (numbered from 1).

    Args:
        curves: name -> value per epoch.
        title: figure title.
        ylabel: y-axis label.
        mark: (epoch, label) for a dashed vertical line, e.g. where a schedule changes; 2.5 falls between epochs 2 and 3.

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    if mark is not None:
        ax.axvline(mark[0], color="gray", linestyle="--", linewidth=1, label=mark[1])
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_temperature_sweep(rows: Sequence[Mapping[str, float]]) -> Figure:
    """Test errors against temperature, one line per student width (rows from hinton.temperature_sweep)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in rows:
        temps = [float(k[2:]) for k in row if k.startswith("T=")]
        errors = [row[f"T={t:g}"] for t in temps]
        ax.plot(temps, errors, marker="o", label=f"{row['hidden units']} units per layer")
    ax.set_xscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test errors")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_dark_knowledge(matrix: torch.Tensor, temperature: float) -> Figure:
    """Heat map of mean soft targets per true class (kd.distill.mean_soft_targets), diagonal hidden.

    Hiding the diagonal leaves only the off-target mass, so the colour scale shows which classes look alike.

    Args:
        matrix: (C, C) mean soft targets.
        temperature: the T they were computed at (for the title).

    Returns:
        The figure.
    """
    off = matrix.detach().cpu().clone()
    off.fill_diagonal_(float("nan"))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(off, cmap="viridis")
    ax.set_xticks(range(off.shape[1]))
    ax.set_yticks(range(off.shape[0]))
    ax.set_xlabel("class the teacher gives probability to")
    ax.set_ylabel("true class")
    ax.set_title(f"Off-target soft targets at T = {temperature:g}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig
