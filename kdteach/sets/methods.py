"""Every set method of notebook 06 on one random calibration/evaluation split: split conformal (CONFORMAL_METHODS),
Bayes credible sets, their running intersections and AVCS, every threshold fitted on the calibration part."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kdteach.checks import check_number
from kdteach.sets.anytime import AvcsFit, avcs_sets, fit_avcs_thresholds
from kdteach.sets.conformal import conformal_sets, credible_sets, fit_conformal_thresholds, running_intersection

__all__ = ["calibration_split", "CONFORMAL_METHODS", "MethodSets", "method_sets"]


def calibration_split(n: int, fraction: float = 0.2, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of n examples into calibration and evaluation indices.

    Args:
        n: number of examples.
        fraction: share of calibration examples, in (0, 1).
        seed: seed of the permutation.

    Returns:
        calibration indices and evaluation indices (disjoint, together 0..n-1).
    """
    fraction = check_number("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n_calib = int(round(fraction * n))
    if not 0 < n_calib < n:
        raise ValueError(f"n = {n} is too small to split with fraction {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_calib], order[n_calib:]


# The per-exit split-conformal methods: the score and its options (RAPS: lambda 0.01, k_reg 5, as in the paper).
CONFORMAL_METHODS: dict[str, dict] = {
    "LAC": {"score": "lac"},
    "APS": {"score": "aps"},
    "RAPS": {"score": "raps", "lam": 0.01, "k_reg": 5},
    "RAPS shared u": {"score": "raps", "lam": 0.01, "k_reg": 5, "shared_u": True},
    "RAPS no u": {"score": "raps", "lam": 0.01, "k_reg": 5, "randomized": False},
}


@dataclass(frozen=True)
class MethodSets:
    """Every method's sets on one evaluation split, and what was fitted on its calibration split.

    Attributes:
        sets: method -> (exits, N, C) bool sets, in table order: each per-exit method, then its running
            intersection "<method> ∩", then "AVCS".
        quantiles: conformal method -> (exits,) score thresholds (in that score's units).
        avcs: AVCS's fitted threshold (in logit units: a different quantity from the score quantiles).
    """

    sets: dict[str, torch.Tensor]
    quantiles: dict[str, torch.Tensor]
    avcs: AvcsFit


def method_sets(cal_logits: torch.Tensor, cal_labels: torch.Tensor, eval_logits: torch.Tensor, alpha: float, *,
                seed: int = 0, avcs_draws: int = 10, avcs_start: float = 1.0, num_parallel: int = 1) -> MethodSets:
    """Split conformal (CONFORMAL_METHODS), Bayes credible sets, their running intersections and AVCS on one split.

    Args:
        cal_logits, cal_labels: the calibration split ((exits, n, C), (n,)); every threshold is fitted on it.
        eval_logits: (exits, N, C) the evaluation split.
        alpha: miscoverage level.
        seed: seed of every random draw (APS/RAPS's u, AVCS's calibration and evaluation draws).
        avcs_draws: Dirichlet draws per calibration example in fit_avcs_thresholds.
        avcs_start: the smallest threshold fit_avcs_thresholds may choose.
        num_parallel: AVCS's parallel copies.

    Returns:
        MethodSets.
    """
    generator = torch.Generator().manual_seed(seed)
    sets, quantiles = {}, {}
    per_exit = {}
    for name, options in CONFORMAL_METHODS.items():
        quantiles[name] = fit_conformal_thresholds(cal_logits, cal_labels, alpha, generator=generator, **options)
        per_exit[name] = conformal_sets(eval_logits, quantiles[name], generator=generator, **options)
    per_exit["Bayes"] = credible_sets(eval_logits, alpha)
    for name, s in per_exit.items():
        sets[name], sets[f"{name} ∩"] = s, running_intersection(s)
    fit = fit_avcs_thresholds(cal_logits, cal_labels, alpha, start=avcs_start, num_parallel=num_parallel, seed=seed, draws=avcs_draws)
    # Other draws than the calibration ones: the evaluation sets must not reuse the draws the threshold saw.
    sets["AVCS"] = avcs_sets(eval_logits, fit.thresholds, alpha, generator=torch.Generator().manual_seed(seed + 10_000), num_parallel=num_parallel)
    return MethodSets(sets, quantiles, fit)
