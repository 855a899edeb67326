"""Metrics of prediction sets per exit: coverage (marginal, per class, per group), size, empty rate, nestedness
and returning labels; SetMetrics for one split and MethodSummary over many.

Conventions: an empty set is an abstention: it counts as size 0 in mean_size (and is counted apart by empty_rate),
and N(t) = |C_1 ∩ ... ∩ C_t| / |C_t| is taken as 1 when C_t is empty (nothing came back). Sets of no example are
refused with a ValueError naming the argument (or the group, in set_metrics): a metric over zero examples is
undefined, and a NaN would pass for a measurement. Within group_conditional_coverage, a group without examples among
others is NaN, as documented there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdteach.checks import check_alpha, check_int, check_labels
from kdteach.sets.conformal import running_intersection
from kdteach.sets.inputs import as_floats, check_set_examples, check_sets

__all__ = [
    "coverage",
    "mean_size",
    "empty_rate",
    "class_conditional_coverage",
    "group_conditional_coverage",
    "nestedness",
    "non_nested_examples",
    "SetMetrics",
    "set_metrics",
    "MethodSummary",
    "summarize_splits",
]


def coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose label is in the set.

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        A scalar, or (exits,): float64.
    """
    check_set_examples("sets", sets)
    check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    index = labels.to(sets.device).expand(sets.shape[:-1]).unsqueeze(-1)
    return sets.gather(-1, index).squeeze(-1).double().mean(dim=-1)


def mean_size(sets: torch.Tensor) -> torch.Tensor:
    """Mean number of labels per set; an empty set counts 0 (so report empty_rate beside it).

    Args:
        sets: (N, C) or (exits, N, C) bool.

    Returns:
        A scalar, or (exits,).
    """
    check_set_examples("sets", sets)
    return sets.double().sum(dim=-1).mean(dim=-1)


def empty_rate(sets: torch.Tensor) -> torch.Tensor:
    """Fraction of empty sets (abstentions).

    Args:
        sets: (N, C) or (exits, N, C) bool.

    Returns:
        A scalar, or (exits,).
    """
    check_set_examples("sets", sets)
    return (~sets.any(dim=-1)).double().mean(dim=-1)


def class_conditional_coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coverage among the examples of each class (NaN for a class with no examples).

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        (C,) or (exits, C) float64.
    """
    check_sets("sets", sets)
    return group_conditional_coverage(sets, labels, labels, sets.shape[-1])  # the classes as the groups


def group_conditional_coverage(sets: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Coverage among the examples of each group (e.g. label x spurious attribute; NaN for an empty group).

    Marginal coverage of 1 - alpha says nothing about a group: a set can cover the majority groups always and a
    minority group far less. Split conformal promises coverage per group only when calibrated per group.

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.
        groups: (N,) group ids in [0, num_groups).
        num_groups: how many groups.

    Returns:
        (num_groups,) or (exits, num_groups) float64.
    """
    check_set_examples("sets", sets)
    check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    num_groups = check_int("num_groups", num_groups, minimum=1)
    check_labels("groups", groups, sets.shape[-2], num_groups)
    labels, groups = labels.to(sets.device), groups.to(sets.device)
    hit = sets.gather(-1, labels.expand(sets.shape[:-1]).unsqueeze(-1)).squeeze(-1).double()  # (..., N)
    one_hot = torch.nn.functional.one_hot(groups, num_groups).double()  # (N, G)
    counts = one_hot.sum(dim=0)
    return (hit @ one_hot) / counts.where(counts > 0, torch.full_like(counts, math.nan))


def nestedness(sets: torch.Tensor) -> torch.Tensor:
    """Jazbec et al.'s N(t): mean over examples of |C_1 ∩ ... ∩ C_t| / |C_t|; 1 iff nested.

    Convention: an empty C_t counts as 1 (no label came back), so abstentions do not lower N(t).

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (exits,) float64.
    """
    check_set_examples("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    size = sets.double().sum(dim=-1)
    kept = running_intersection(sets).double().sum(dim=-1)
    return torch.where(size > 0, kept / size.clamp(min=1), torch.ones_like(size)).mean(dim=-1)


def non_nested_examples(sets: torch.Tensor) -> torch.Tensor:
    """Which examples see a label come back: in C_t although an earlier exit had ruled it out.

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (N,) bool.
    """
    check_sets("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    ruled_out_before = ~running_intersection(sets)[:-1]
    return (sets[1:] & ruled_out_before).any(dim=-1).any(dim=0)


@dataclass(frozen=True)
class SetMetrics:
    """Per-exit metrics of one family of sets (or intervals) on one evaluation split.

    Attributes:
        coverage: share of labels in C_t, per exit.
        size: mean |C_t| (or interval width) per exit; empty sets count 0.
        empty_rate: share of empty C_t per exit.
        nestedness: N(t) per exit (1 for an empty C_t).
        all_exit_coverage: share of labels in C_1, ..., C_t all, per exit (coverage of the running intersection).
        returning: share of examples for which a label (a value) ruled out at an earlier exit comes back.
        worst_class_coverage: the lowest per-class coverage at the last exit (NaN for regression).
    """

    coverage: tuple[float, ...]
    size: tuple[float, ...]
    empty_rate: tuple[float, ...]
    nestedness: tuple[float, ...]
    all_exit_coverage: tuple[float, ...]
    returning: float
    worst_class_coverage: float = math.nan


def set_metrics(sets: torch.Tensor, labels: torch.Tensor, *, group: str | None = None) -> SetMetrics:
    """Every metric of a family of classification sets.

    Args:
        sets: (exits, N, C) bool, N >= 1.
        labels: (N,) labels.
        group: the group these examples are (when the sets are one group's rows), named in the error if it has no
            example.

    Returns:
        SetMetrics.
    """
    check_set_examples("sets" if group is None else f"sets of group {group!r}", sets)
    per_class = class_conditional_coverage(sets[-1], labels)
    return SetMetrics(
        as_floats(coverage(sets, labels)), as_floats(mean_size(sets)), as_floats(empty_rate(sets)), as_floats(nestedness(sets)),
        as_floats(coverage(running_intersection(sets), labels)), float(non_nested_examples(sets).double().mean()),
        float(per_class[~per_class.isnan()].min()),
    )


@dataclass(frozen=True)
class MethodSummary:
    """One method over many calibration/evaluation splits.

    Attributes:
        method: its name.
        splits: how many splits.
        coverage, coverage_std, size, size_std, empty_rate, nestedness: per exit, mean (and std) over splits.
        all_exit_coverage, all_exit_coverage_std: the share covered at every exit (last exit of the running
            intersection), mean and std over splits.
        share_below_target: share of splits whose all-exit coverage is below 1 - alpha.
        returning: mean share of examples with a label that comes back.
        worst_class_coverage: mean over splits of the worst class's coverage at the last exit.
    """

    method: str
    splits: int
    coverage: tuple[float, ...]
    coverage_std: tuple[float, ...]
    size: tuple[float, ...]
    size_std: tuple[float, ...]
    empty_rate: tuple[float, ...]
    nestedness: tuple[float, ...]
    all_exit_coverage: float
    all_exit_coverage_std: float
    share_below_target: float
    returning: float
    worst_class_coverage: float


def summarize_splits(method: str, metrics: Sequence[SetMetrics], alpha: float) -> MethodSummary:
    """Means and standard deviations over splits of one method's SetMetrics.

    Args:
        method: the method's name.
        metrics: one SetMetrics per split.
        alpha: the target miscoverage (share_below_target counts splits below 1 - alpha).

    Returns:
        MethodSummary (std is 0 for one split).
    """
    alpha = check_alpha(alpha)
    if not metrics:
        raise ValueError("metrics is empty: nothing to summarise")

    def stat(field: str) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray([getattr(m, field) for m in metrics], dtype=float)
        return values.mean(axis=0), (values.std(axis=0, ddof=1) if len(metrics) > 1 else np.zeros_like(values[0]))

    (cov, cov_std), (size, size_std) = stat("coverage"), stat("size")
    all_exit = np.asarray([m.all_exit_coverage[-1] for m in metrics])
    return MethodSummary(
        method, len(metrics), as_floats(cov), as_floats(cov_std), as_floats(size), as_floats(size_std), as_floats(stat("empty_rate")[0]),
        as_floats(stat("nestedness")[0]), float(all_exit.mean()), float(all_exit.std(ddof=1)) if len(metrics) > 1 else 0.0,
        float((all_exit < 1 - alpha).mean()), float(stat("returning")[0]), float(stat("worst_class_coverage")[0]),
    )
