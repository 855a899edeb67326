"""What is read from the logits of every exit, (exits, N, C): accuracy, calibration, and the exit policy on them.

kdteach.exits builds and trains multi-exit networks and re-exports every name here; this module holds the functions
that need only the logits (and the labels): exit_accuracy, reliability_bins and calibration_error (ECE over
ECE_BINS equal-width confidence bins), and the confidence-threshold policy applied to full-pass logits
(confidence_exit, threshold_curve). Exits there are simulated: the compute threshold_curve reports is what an
incremental implementation would spend (exits.exit_costs); exits.early_exit_predict really stops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from kdteach import checks
from kdteach.checks import check_int

__all__ = ["ECE_BINS", "exit_accuracy", "reliability_bins", "calibration_error", "confidence_exit", "PolicyPoint", "threshold_curve"]

ECE_BINS = 15  # equal-width confidence bins of the ECE and of the reliability diagram: one binning for both


def _check_exit_logits(exit_logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(exit_logits, torch.Tensor) or exit_logits.dim() != 3:
        raise ValueError(f"exit_logits must have shape (exits, N, C), got {getattr(exit_logits, 'shape', type(exit_logits).__name__)}")
    if labels is not None:  # analysis, not a training step: the range is read on any device
        checks.check_labels("labels", labels, exit_logits.shape[1], exit_logits.shape[2], check_values=True)


def exit_accuracy(exit_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of every exit.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).

    Returns:
        (exits,) float64.
    """
    _check_exit_logits(exit_logits, labels)
    return (exit_logits.argmax(dim=-1) == labels.to(exit_logits.device)).double().mean(dim=1)


@torch.no_grad()
def reliability_bins(exit_logits: torch.Tensor, labels: torch.Tensor, *, bins: int = ECE_BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per exit and equal-width confidence bin on [0, 1]: how many examples, their mean confidence, their accuracy.

    Confidence is the top softmax probability. The ECE and the reliability diagram both read these bins.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).
        bins: number of bins (>= 1).

    Returns:
        count, mean confidence, accuracy: (exits, bins) float64; the last two are NaN in empty bins.
    """
    _check_exit_logits(exit_logits, labels)
    bins = check_int("bins", bins, minimum=1)
    confidence, prediction = torch.softmax(exit_logits.double(), dim=-1).max(dim=-1)
    correct = (prediction == labels.to(exit_logits.device)).double()
    which = (confidence * bins).long().clamp(max=bins - 1)  # (exits, N)
    rows = [(torch.bincount(w, minlength=bins).double(), torch.bincount(w, weights=c, minlength=bins), torch.bincount(w, weights=k, minlength=bins))
            for w, c, k in zip(which, confidence, correct)]
    count, conf_sum, correct_sum = (torch.stack(parts) for parts in zip(*rows))
    empty = torch.where(count > 0, count, torch.full_like(count, torch.nan))
    return count, conf_sum / empty, correct_sum / empty


def calibration_error(exit_logits: torch.Tensor, labels: torch.Tensor, *, bins: int = ECE_BINS) -> torch.Tensor:
    """Expected calibration error of every exit: sum over confidence bins of |accuracy - confidence| * bin share.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).
        bins: number of equal-width confidence bins (reliability_bins).

    Returns:
        (exits,) float64.
    """
    count, confidence, accuracy = reliability_bins(exit_logits, labels, bins=bins)
    return ((accuracy - confidence).abs().nan_to_num(0.0) * count).sum(dim=1) / exit_logits.shape[1]


def _confidence_thresholds(threshold: float | Sequence[float] | torch.Tensor, exits: int, device: torch.device) -> torch.Tensor:
    try:
        t = torch.as_tensor(threshold, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"threshold must be a confidence in [0, 1] or one per exit ({exits}), got {threshold!r}") from error
    if t.dim() == 0:
        t = t.expand(exits)
    if t.shape != (exits,):
        raise ValueError(f"threshold must be a number or one value per exit ({exits}), got shape {tuple(t.shape)}")
    checks.check_values_in("threshold", t, 0.0, 1.0, meaning="a softmax confidence")
    return t


def confidence_exit(exit_logits: torch.Tensor, threshold: float | Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The confidence-threshold policy on full-pass logits: stop at the first exit whose top softmax probability
    reaches the threshold; the last exit answers for everything that never does.

    Args:
        exit_logits: (exits, N, C).
        threshold: a confidence in [0, 1], or one per exit.

    Returns:
        exit_index (N,) long and predictions (N,) long.
    """
    _check_exit_logits(exit_logits)
    exits = exit_logits.shape[0]
    t = _confidence_thresholds(threshold, exits, exit_logits.device)
    confidence, prediction = torch.softmax(exit_logits.double(), dim=-1).max(dim=-1)  # (exits, N)
    confident = confidence >= t[:, None]
    confident[-1] = True
    exit_index = confident.double().argmax(dim=0)  # the first True
    return exit_index, prediction.gather(0, exit_index[None]).squeeze(0)


@dataclass(frozen=True)
class PolicyPoint:
    """The confidence-threshold policy at one threshold: accuracy, mean MACs per example, share leaving at each exit."""

    threshold: float
    accuracy: float
    mean_macs: float
    exit_shares: tuple[float, ...]


def threshold_curve(
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    exit_macs: Sequence[float],
    thresholds: Sequence[float] | None = None,
) -> list[PolicyPoint]:
    """Accuracy against mean compute of the confidence-threshold policy, one point per threshold.

    Args:
        exit_logits: (exits, N, C) full-pass logits.
        labels: (N,).
        exit_macs: cost of reaching each exit (ExitCost.macs).
        thresholds: confidences to try; None uses 0.0, 0.05, ..., 1.0 (0 stops everyone at exit 0, 1 almost no one).

    Returns:
        One PolicyPoint per threshold.
    """
    _check_exit_logits(exit_logits, labels)
    exits = exit_logits.shape[0]
    if len(exit_macs) != exits:
        raise ValueError(f"exit_macs must hold one cost per exit ({exits}), got {len(exit_macs)}")
    macs = torch.as_tensor(list(exit_macs), dtype=torch.float64, device=exit_logits.device)
    grid = [round(0.05 * i, 2) for i in range(21)] if thresholds is None else list(thresholds)
    points = []
    for threshold in grid:
        index, prediction = confidence_exit(exit_logits, threshold)
        shares = torch.bincount(index, minlength=exits).double() / len(index)
        points.append(PolicyPoint(float(threshold), float((prediction == labels.to(prediction.device)).double().mean()),
                                  float(macs[index].mean()), tuple(float(v) for v in shares)))
    return points
