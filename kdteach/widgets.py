"""ipywidgets explorers. Each wraps a plain plotting function that tests (and CI) call directly."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from kdteach.plots.soft_targets import plot_soft_targets

__all__ = ["show_soft_targets", "temperature_explorer"]


def show_soft_targets(index: int, temperature: float, *, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """The explorer's callback: draws digit `index` and its soft targets at `temperature`, then shows the figure."""
    if not 0 <= index < len(logits):
        raise ValueError(f"index must be in [0, {len(logits)}), got {index}")
    fig = plot_soft_targets(images[index], logits[index], temperature, label=int(labels[index]))
    plt.show()
    plt.close(fig)


def temperature_explorer(images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> widgets.interactive:
    """A slider over temperature (log scale, 0.5 to 50) and one over examples, redrawing the soft targets.

    Args:
        images: (N, 1, 28, 28) images.
        logits: (N, C) teacher logits for them.
        labels: (N,) labels.

    Returns:
        The interactive widget (display it, or let it be a cell's last expression).
    """
    if not len(images) == len(logits) == len(labels):
        raise ValueError(f"images, logits and labels must have the same length, got {len(images)}, {len(logits)}, {len(labels)}")
    images, logits, labels = images.detach().cpu(), logits.detach().cpu(), labels.detach().cpu()

    def callback(index: int, temperature: float) -> None:
        show_soft_targets(index, temperature, images=images, logits=logits, labels=labels)

    return widgets.interactive(
        callback,
        index=widgets.IntSlider(value=0, min=0, max=len(logits) - 1, description="example"),
        temperature=widgets.FloatLogSlider(value=1.0, base=10, min=-0.3, max=1.7, step=0.05, description="T"),
    )
