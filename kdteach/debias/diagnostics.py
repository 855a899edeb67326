"""Diagnostics of an early readout: does "confidently wrong early" find the minority groups? Readout accuracy and
margins per group, precision and recall of "readout wrong with margin >= m" for minority membership, and the
DeDiER weights each group receives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdteach import checks
from kdteach.debias.dedier import check_readout, confidence_margin, dedier_weights

__all__ = [
    "readout_by_group",
    "confident_error_retrieval",
    "weights_by_group",
    "ReadoutDiagnosis",
    "diagnose_readout",
]


def readout_by_group(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> list[dict[str, float]]:
    """The readout's accuracy and confidence margins in each group.

    Args:
        readout_logits: (N, C) readout logits.
        labels: (N,) true classes.
        groups: (N,) group ids in [0, num_groups).
        num_groups: number of groups.

    Returns:
        One dict per group: group, n, accuracy, mean_margin, mean_margin_wrong (margin where the readout is wrong;
        NaN if it never is).
    """
    check_readout(readout_logits, labels)
    checks.check_int("num_groups", num_groups, minimum=1)
    checks.check_labels("groups", groups, readout_logits.shape[0], num_groups, check_values=True)
    margin = confidence_margin(readout_logits).cpu()
    wrong = (readout_logits.argmax(dim=1) != labels.to(readout_logits.device)).cpu()
    groups = groups.cpu()
    rows = []
    for g in range(num_groups):
        member = groups == g
        n = int(member.sum())
        wrong_g = wrong & member
        rows.append(
            {
                "group": g,
                "n": n,
                "accuracy": 1.0 - float(wrong_g.sum()) / n if n else math.nan,
                "mean_margin": float(margin[member].mean()) if n else math.nan,
                "mean_margin_wrong": float(margin[wrong_g].mean()) if bool(wrong_g.any()) else math.nan,
            }
        )
    return rows


def confident_error_retrieval(readout_logits: torch.Tensor, labels: torch.Tensor, minority: torch.Tensor, *, margin: float) -> dict[str, float]:
    """How well "readout wrong with margin >= m" picks out minority-group examples.

    Args:
        readout_logits: (N, C) readout logits.
        labels: (N,) true classes.
        minority: (N,) bool, True for examples of the minority (bias-conflicting) groups.
        margin: the margin threshold m in [0, 1].

    Returns:
        {"margin", "flagged" (count), "precision" (share of flagged that are minority; NaN if none flagged),
        "recall" (share of minority that are flagged), "base_rate" (share of minority overall: the precision of
        flagging at random), "lift" (precision / base_rate)}.
    """
    check_readout(readout_logits, labels)
    if not isinstance(minority, torch.Tensor) or minority.dtype != torch.bool or minority.shape != labels.shape:
        raise ValueError(f"minority must be a bool tensor of shape {tuple(labels.shape)}")
    margin = checks.check_number("margin", margin, low=0.0, high=1.0)
    wrong = (readout_logits.argmax(dim=1) != labels.to(readout_logits.device)).cpu()
    flagged = wrong & (confidence_margin(readout_logits).cpu() >= margin)
    minority = minority.cpu()
    hits = int((flagged & minority).sum())
    n_flagged, n_minority = int(flagged.sum()), int(minority.sum())
    base_rate = n_minority / len(minority) if len(minority) else math.nan
    precision = hits / n_flagged if n_flagged else math.nan
    return {
        "margin": float(margin),
        "flagged": float(n_flagged),
        "precision": precision,
        "recall": hits / n_minority if n_minority else math.nan,
        "base_rate": base_rate,
        "lift": precision / base_rate if n_flagged and base_rate > 0 else math.nan,
    }


def weights_by_group(weights: torch.Tensor, groups: torch.Tensor, num_groups: int) -> list[dict[str, float]]:
    """The instance weights each group receives: mean weight, share upweighted, and share of the total weight.

    Args:
        weights: (N,) instance weights.
        groups: (N,) group ids.
        num_groups: number of groups.

    Returns:
        One dict per group: group, n, mean_weight, upweighted (share with weight > 1), weight_share (the group's
        share of the summed weight: how much of the loss it carries).
    """
    checks.check_tensor("weights", weights, dims=(1,), what="(N,)")
    checks.check_int("num_groups", num_groups, minimum=1)
    checks.check_labels("groups", groups, len(weights), num_groups, check_values=True)
    weights, groups = weights.float().cpu(), groups.cpu()
    total = float(weights.sum())
    rows = []
    for g in range(num_groups):
        w = weights[groups == g]
        rows.append(
            {
                "group": g,
                "n": len(w),
                "mean_weight": float(w.mean()) if len(w) else math.nan,
                "upweighted": float((w > 1).float().mean()) if len(w) else math.nan,
                "weight_share": float(w.sum()) / total if total > 0 else math.nan,
            }
        )
    return rows


@dataclass(frozen=True)
class ReadoutDiagnosis:
    """What DeDiER relies on, measured on one readout's outputs over the training set.

    Attributes:
        stage: the student's stage the readout sat on.
        by_group: per group (named): n, accuracy, mean_margin, mean_margin_wrong (readout_by_group).
        retrieval: per margin m: flagged, precision, recall, base_rate, lift of "wrong with margin >= m" for
            minority membership (confident_error_retrieval).
        weights: per group (named): the DeDiER weights it would get (weights_by_group).
        conflicting, aligned: (examples, readout accuracy, mean margin of its errors or NaN without errors) on the
            bias-conflicting and on the bias-aligned examples.
    """

    stage: str
    by_group: tuple[dict, ...]
    retrieval: tuple[dict, ...]
    weights: tuple[dict, ...]
    conflicting: tuple[int, float, float]
    aligned: tuple[int, float, float]


def diagnose_readout(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, group_names: list[str],
                     minority: torch.Tensor, *, alpha: float, beta: float, margins: tuple[float, ...], stage: str) -> ReadoutDiagnosis:
    """Every diagnostic of one readout at once: accuracy and margins per group, how well its confident errors find
    the minority groups at each margin threshold, and the DeDiER weights each group would get.

    Args:
        readout_logits: (N, C) readout logits on the training set.
        labels, groups: (N,) classes and group ids; group_names: one name per group.
        minority: (N,) bool, True for bias-conflicting examples.
        alpha, beta: DeDiER's weight settings.
        margins: the thresholds m of the retrieval table.
        stage: where the readout sat (carried into the result).

    Returns:
        ReadoutDiagnosis.
    """
    logits, labels, groups, minority = readout_logits.cpu(), labels.cpu(), groups.cpu(), minority.cpu()
    right, margin = logits.argmax(1) == labels, confidence_margin(logits)

    def part(mask: torch.Tensor) -> tuple[int, float, float]:
        wrong = mask & ~right
        accuracy = float(right[mask].float().mean()) if bool(mask.any()) else math.nan
        return int(mask.sum()), accuracy, float(margin[wrong].mean()) if bool(wrong.any()) else math.nan

    def named(rows: list[dict]) -> tuple[dict, ...]:
        return tuple({**row, "group": group_names[row["group"]]} for row in rows)

    weights = dedier_weights(logits, labels, alpha=alpha, beta=beta)
    return ReadoutDiagnosis(
        stage=stage,
        by_group=named(readout_by_group(logits, labels, groups, len(group_names))),
        retrieval=tuple(confident_error_retrieval(logits, labels, minority, margin=m) for m in margins),
        weights=named(weights_by_group(weights, groups, len(group_names))),
        conflicting=part(minority),
        aligned=part(~minority),
    )
