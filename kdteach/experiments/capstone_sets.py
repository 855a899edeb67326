"""The capstone's sets: every exit of one model, four kinds of prediction sets, measured per group and per class over
random calibration splits of the test set.

- LAC and RAPS: split conformal at each exit (kdteach.sets; RAPS with lambda 0.01, k_reg 5, randomised, as in the
  paper). They promise coverage 1 - miscoverage over all examples together, nothing per group.
- AVCS: Jazbec et al.'s anytime-valid sets, with the input its model assumes: the exit's logits as Dirichlet
  concentrations, thresholded at tau (labels below it get concentration 0 and leave the set), tau chosen on the
  calibration split by kdteach.sets.fit_avcs_thresholds. Where that rule cannot reach its rank (even the smallest
  tau rules out too many calibration labels: a softmax-trained exit gives the true label a negative logit), no
  threshold carries a guarantee; the set is then the full label set, what split conformal returns at an infinite
  threshold, and the split counts as "rule infeasible" (ModelOutcome.avcs_feasible). Its coverage there is 100% by
  construction and says nothing about the model.
- Mondrian ("group-conditional") split conformal: LAC calibrated inside each group, so that every group, not only
  their mixture, gets coverage >= 1 - miscoverage (Vovk et al.'s Mondrian conformal; Romano et al. 2020). It needs
  the calibration examples' group labels, and the test example's spurious attribute (its colour or background): a
  group is (label, attribute), and a candidate label y of a test example belongs to the group (y, its attribute),
  so each candidate is compared with its own group's threshold. The label itself is never needed at test time.

Every split's thresholds come from its calibration part only; the metrics are measured on the rest. One number per
model and seed is the mean over that seed's splits (a single model on several splits is one model, n = 1, for the
comparison rule); the standard deviation over splits gives the Monte Carlo standard error of that mean.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from kdteach import checks, runtime
from kdteach.groups import group_metrics
from kdteach.sets import (CONFORMAL_METHODS, MethodSummary, avcs_sets, calibration_split, class_conditional_coverage, conformal_sets,
                          conformal_threshold, fit_avcs_thresholds, fit_conformal_thresholds, label_scores, set_metrics, summarize_splits)

SET_METHODS = ("LAC", "RAPS", "AVCS", "Mondrian")
# What each method is, in the words tables and figures use.
METHOD_WORDS = {"LAC": "split conformal, LAC score", "RAPS": "split conformal, RAPS score",
                "AVCS": "anytime-valid (Jazbec et al.)", "Mondrian": "LAC calibrated inside each group (needs group labels)"}

__all__ = ["SET_METHODS", "METHOD_WORDS", "mondrian_thresholds", "mondrian_sets", "split_sets", "ModelOutcome", "measure"]


def mondrian_thresholds(cal_logits: torch.Tensor, cal_labels: torch.Tensor, cal_groups: torch.Tensor, num_groups: int,
                        miscoverage: float) -> torch.Tensor:
    """LAC's split-conformal threshold per exit and group, each from that group's calibration examples only.

    Args:
        cal_logits: (exits, n, C) calibration logits.
        cal_labels: (n,) their labels.
        cal_groups: (n,) their groups (of the example with its true label).
        num_groups: how many groups.
        miscoverage: the target miscoverage in (0, 1).

    Returns:
        (exits, num_groups) float64 thresholds; +inf for a group too small for the rank (or absent): its candidates
        are then always in the set.
    """
    miscoverage = checks.check_number("miscoverage", miscoverage, low=0.0, high=1.0, low_open=True, high_open=True)
    checks.check_labels("cal_groups", cal_groups, cal_logits.shape[1], num_groups)
    scores = label_scores(cal_logits, "lac")
    true = scores.gather(-1, cal_labels.view(1, -1, 1).expand(scores.shape[0], -1, 1)).squeeze(-1)  # (exits, n)
    thresholds = torch.full((scores.shape[0], num_groups), float("inf"), dtype=torch.float64)
    for g in range(num_groups):
        mine = cal_groups == g
        if bool(mine.any()):
            thresholds[:, g] = conformal_threshold(true[:, mine], miscoverage)
    return thresholds


def mondrian_sets(logits: torch.Tensor, candidate_groups: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Group-conditional LAC sets: label y of example i is in the set at exit t iff its LAC score is at most the
    threshold of y's group for that example, thresholds[t, candidate_groups[i, y]].

    Args:
        logits: (exits, N, C).
        candidate_groups: (N, C) the group each candidate label would put the example in.
        thresholds: (exits, G) from mondrian_thresholds.

    Returns:
        (exits, N, C) bool sets.
    """
    if candidate_groups.shape != logits.shape[1:]:
        raise ValueError(f"candidate_groups must have shape {tuple(logits.shape[1:])} (N, C), got {tuple(candidate_groups.shape)}")
    return label_scores(logits, "lac") <= thresholds[:, candidate_groups]


def split_sets(cal_logits: torch.Tensor, cal_labels: torch.Tensor, cal_groups: torch.Tensor, eval_logits: torch.Tensor,
               eval_candidate_groups: torch.Tensor, num_groups: int, miscoverage: float, *, seed: int, avcs_draws: int,
               avcs_start: float) -> tuple[dict[str, torch.Tensor], bool, float]:
    """Every method of SET_METHODS on one calibration/evaluation split, every threshold fitted on the calibration part.

    Args:
        cal_logits, cal_labels, cal_groups: the calibration part ((exits, n, C), (n,), (n,)).
        eval_logits: (exits, N, C) the evaluation part.
        eval_candidate_groups: (N, C) the group of each (evaluation example, candidate label).
        num_groups, miscoverage: the groups' count; the target miscoverage.
        seed: seed of RAPS's uniform draws and AVCS's Dirichlet draws.
        avcs_draws, avcs_start: AVCS's threshold rule.

    Returns:
        (method -> (exits, N, C) bool sets, whether AVCS's rule reached its rank, AVCS's tau).
    """
    generator = torch.Generator().manual_seed(seed)
    sets = {}
    for name in ("LAC", "RAPS"):
        thresholds = fit_conformal_thresholds(cal_logits, cal_labels, miscoverage, generator=generator, **CONFORMAL_METHODS[name])
        sets[name] = conformal_sets(eval_logits, thresholds, generator=generator, **CONFORMAL_METHODS[name])
    with warnings.catch_warnings():  # an infeasible rule is recorded (feasible), not warned about per split
        warnings.simplefilter("ignore", UserWarning)
        fit = fit_avcs_thresholds(cal_logits, cal_labels, miscoverage, start=avcs_start, seed=seed, draws=avcs_draws)
    if fit.feasible:
        sets["AVCS"] = avcs_sets(eval_logits, fit.thresholds, miscoverage, generator=torch.Generator().manual_seed(seed + 10_000))
    else:
        sets["AVCS"] = torch.ones(eval_logits.shape, dtype=torch.bool)  # split conformal's answer at an infinite threshold
    sets["Mondrian"] = mondrian_sets(eval_logits, eval_candidate_groups,
                                     mondrian_thresholds(cal_logits, cal_labels, cal_groups, num_groups, miscoverage))
    return sets, fit.feasible, fit.tau


@dataclass(frozen=True)
class ModelOutcome:
    """One model of one seed on the test split.

    Attributes:
        dataset, model, seed: what was measured ("teacher" for the teacher, measured on the seed's splits).
        accuracy: [exit][group] test accuracy (a teacher has one exit).
        class_accuracy: [exit][class] test accuracy.
        marginal: method -> MethodSummary over the splits (coverage, size, empty rate, nestedness per exit, their
            standard deviations over splits) on every evaluation example.
        by_group: method -> one MethodSummary per group.
        class_coverage, class_size: method -> [exit][class] coverage and mean set size, means over splits.
        avcs_feasible: share of the splits on which AVCS's threshold rule reached its rank (on the others its sets
            are the full label set).
        avcs_tau: AVCS's threshold, mean over the feasible splits (NaN if none).
    """

    dataset: str
    model: str
    seed: int
    accuracy: tuple[tuple[float, ...], ...]
    class_accuracy: tuple[tuple[float, ...], ...]
    marginal: dict[str, MethodSummary]
    by_group: dict[str, tuple[MethodSummary, ...]]
    class_coverage: dict[str, tuple[tuple[float, ...], ...]]
    class_size: dict[str, tuple[tuple[float, ...], ...]]
    avcs_feasible: float
    avcs_tau: float


def _class_means(values: list[torch.Tensor]) -> tuple[tuple[float, ...], ...]:
    mean = torch.stack(values).mean(dim=0)  # (exits, C); NaN stays NaN for a class with no example in a split
    return tuple(tuple(float(v) for v in row) for row in mean)


def measure(logits: torch.Tensor, labels: torch.Tensor, attribute: torch.Tensor, groups: torch.Tensor, num_groups: int,
            group_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cfg: Any, *, dataset: str, model: str, seed: int) -> ModelOutcome:
    """Accuracy per exit, group and class, and SET_METHODS' sets per exit, group and class over cfg.splits splits.

    Args:
        logits: (exits, N, C) test logits ((1, N, C) for a one-exit teacher); labels, attribute, groups: (N,).
        num_groups: the groups' count.
        group_of: (labels, attribute) -> groups, elementwise (Mondrian's group of every candidate label).
        cfg: the capstone's configuration (miscoverage, calib_fraction, splits, avcs_draws, avcs_start).
        dataset, model, seed: what is measured. The splits are seeded by `seed`, so a teacher measured with a
            student's seed sees the student's splits (a paired comparison).

    Returns:
        ModelOutcome.
    """
    logits, labels, attribute, groups = logits.cpu().double(), labels.cpu(), attribute.cpu(), groups.cpu()
    num_classes = logits.shape[-1]
    candidates = group_of(torch.arange(num_classes).expand(len(labels), num_classes), attribute[:, None].expand(-1, num_classes))
    accuracy = tuple(group_metrics(z, labels, groups, num_groups).per_group for z in logits)
    class_accuracy = tuple(group_metrics(z, labels, labels, num_classes).per_group for z in logits)
    marginal = {m: [] for m in SET_METHODS}
    by_group = {m: [[] for _ in range(num_groups)] for m in SET_METHODS}
    class_cov, class_size = {m: [] for m in SET_METHODS}, {m: [] for m in SET_METHODS}
    feasible, taus = [], []
    with runtime.cpu_threads(1):  # small tensors: a second thread costs more than it saves
        for split in range(cfg.splits):
            split_seed = seed * 1000 + split
            calib, evaluation = calibration_split(len(labels), cfg.calib_fraction, seed=split_seed)
            sets, ok, tau = split_sets(logits[:, calib], labels[calib], groups[calib], logits[:, evaluation], candidates[evaluation],
                                       num_groups, cfg.miscoverage, seed=split_seed, avcs_draws=cfg.avcs_draws, avcs_start=cfg.avcs_start)
            feasible.append(ok)
            taus += [tau] if ok else []
            eval_labels, eval_groups = labels[evaluation], groups[evaluation]
            one_hot = torch.nn.functional.one_hot(eval_labels, num_classes).double()
            counts = one_hot.sum(0)
            for method, s in sets.items():
                marginal[method].append(set_metrics(s, eval_labels))
                for g in range(num_groups):
                    mine = eval_groups == g
                    if bool(mine.any()):
                        by_group[method][g].append(set_metrics(s[:, mine], eval_labels[mine], group=str(g)))
                class_cov[method].append(class_conditional_coverage(s, eval_labels))
                class_size[method].append((s.double().sum(-1) @ one_hot) / counts.where(counts > 0, torch.full_like(counts, float("nan"))))
    summary = lambda method, metrics: summarize_splits(method, metrics, cfg.miscoverage)
    return ModelOutcome(dataset, model, seed, accuracy, class_accuracy, {m: summary(m, v) for m, v in marginal.items()},
                        {m: tuple(summary(m, v) for v in per) for m, per in by_group.items()},
                        {m: _class_means(v) for m, v in class_cov.items()}, {m: _class_means(v) for m, v in class_size.items()},
                        sum(feasible) / len(feasible), sum(taus) / len(taus) if taus else float("nan"))
