"""Early readouts and DeDiER (Tiwari et al., WACV 2024): find the examples an early layer gets confidently wrong,
and weight their distillation loss up.

A readout is a small head trained on an early stage of the student. Early layers see simple cues (a background,
a colour) better than the object itself, so where such a cue contradicts the label, the readout tends to be wrong
and sure of it. DeDiER turns that into per-example weights for the distillation loss:

    margin_i = p_(1) - p_(2)          top-1 minus top-2 softmax probability of the readout (binary: |p0 - p1|)
    w_i      = exp(beta * margin_i ** alpha)   if the readout is wrong on example i
             = 1                                otherwise

alpha is an exponent on the margin (with the paper's small alpha, margin**alpha is close to 1 for most margins,
so the weight is close to a constant e^beta on readout errors); beta sets how large the upweight is.
"""
from __future__ import annotations

import math

import torch

__all__ = ["confidence_margin", "dedier_weights"]


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, classes), got {shape}")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got {logits.shape[1]}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape ({n},), got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got {labels.dtype}")
    if n > 0 and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]")


def confidence_margin(logits: torch.Tensor) -> torch.Tensor:
    """The readout's confidence margin: top-1 minus top-2 softmax probability of each row.

    Args:
        logits: (N, C) logits, C >= 2.

    Returns:
        (N,) float32 margins in [0, 1]; for two classes this is |p0 - p1|.
    """
    _check_logits("logits", logits)
    top2 = torch.softmax(logits.detach().float(), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def dedier_weights(readout_logits: torch.Tensor, labels: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """DeDiER's per-example weights: exp(beta * margin**alpha) where the readout is wrong, 1 where it is right.

    Args:
        readout_logits: (N, C) logits of the early readout on the training set.
        labels: (N,) true class indices.
        alpha: exponent on the margin, >= 0 (the official defaults are 0.05 to 0.2: margin**alpha is near 1).
        beta: scale in the exponent, >= 0 (official defaults 3 to 4, so wrong examples get up to e^beta).

    Returns:
        (N,) float32 weights, >= 1, on the logits' device.
    """
    _check_logits("readout_logits", readout_logits)
    _check_labels(labels, readout_logits.shape[0], readout_logits.shape[1])
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    margin = confidence_margin(readout_logits)
    wrong = readout_logits.argmax(dim=1) != labels.to(readout_logits.device)
    upweight = torch.exp(beta * margin.pow(alpha))
    return torch.where(wrong, upweight, torch.ones_like(margin))
