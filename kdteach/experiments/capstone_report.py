"""The capstone's tables, answers and findings, typed by its results (kdteach.experiments.capstone).

Every number a sentence states comes from a DatasetResult, and every "higher / lower / no clear difference" from
kdteach.report's one comparison rule, paired over student seeds with one number per seed (the mean over that
seed's calibration splits). The teacher is one model: its rows give the mean over all its splits with the Monte
Carlo standard error of that mean, never an interval over seeds. Rows of a model at an exit that has not learned
the task (kdteach.groups.competence) or of AVCS where its threshold rule was infeasible are marked, and no verdict is
printed on them.

The three questions, answered by answers() from the numbers:
1. Do the minority (bias-conflicting) groups lose coverage at early exits?
2. Does debiasing (DeDiER, with either readout) change it?
3. What restores it?
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kdteach import checks, report, runtime
from kdteach.groups import COMPETENCE_MARGIN, competence
from kdteach.experiments import capstone, dedier
from kdteach.experiments.capstone import DIGITS, CapstoneResult, DatasetResult
from kdteach.experiments.capstone_sets import METHOD_WORDS, SET_METHODS
from kdteach.report import FRACTION, FRACTION_DIFFERENCE, Comparison, comparison_sentence, smoke_note
from kdteach.report import paired_comparison as _paired
from kdteach.plots.capstone import plot_group_coverage, plot_group_sizes

__all__ = ["per_seed", "competent_seeds", "coverage_rows", "size_rows", "accuracy_rows", "class_rows", "answers", "dataset_findings",
           "capstone_findings", "write"]

KD = "KD"
RESOLUTION = 0.005  # half a point: a coverage within this of the target (beyond its Monte Carlo error) reaches it


# ----------------------------------------------------------------------------------------------------------------
# Numbers per seed


def students(result: DatasetResult) -> list[str]:
    """The student variants of a result, in order."""
    return list(dict.fromkeys(o.model for o in result.outcomes if o.model != "teacher"))


def _outcomes(result: DatasetResult, model: str):
    return [o for o in result.outcomes if o.model == model]


def per_seed(result: DatasetResult, model: str, method: str, metric: str, exit_index: int, groups: Sequence[int] | None = None,
             how: str = "mean") -> dict[int, float]:
    """{seed: value} of one model's set metric at one exit (a teacher's one exit stands for every exit index).

    Args:
        result: a DatasetResult.
        model: "teacher" or a student variant.
        method: one of SET_METHODS.
        metric: a per-exit field of MethodSummary ("coverage", "size", "empty_rate", "nestedness", "coverage_std").
        exit_index: the exit (0-based).
        groups: the groups to reduce over (None: every example, the marginal number).
        how: "mean" or "min" over the groups.

    Returns:
        One number per seed (the mean over that seed's splits).
    """
    values = {}
    for o in _outcomes(result, model):
        summaries = [o.marginal[method]] if groups is None else [o.by_group[method][g] for g in groups]
        numbers = [float(getattr(s, metric)[min(exit_index, len(getattr(s, metric)) - 1)]) for s in summaries]
        values[o.seed] = min(numbers) if how == "min" else float(np.mean(numbers))
    return values


def accuracy_per_seed(result: DatasetResult, model: str, exit_index: int, groups: Sequence[int] | None = None, how: str = "mean") -> dict[int, float]:
    """{seed: accuracy} at one exit, mean (or min) over the given groups (None: every group)."""
    groups = range(len(result.group_names)) if groups is None else groups
    values = {}
    for o in _outcomes(result, model):
        row = o.accuracy[min(exit_index, len(o.accuracy) - 1)]
        numbers = [row[g] for g in groups]
        values[o.seed] = min(numbers) if how == "min" else float(np.mean(numbers))
    return values


def aligned_groups(result: DatasetResult) -> list[int]:
    """The groups whose spurious attribute agrees with the label."""
    return [g for g in range(len(result.group_names)) if g not in result.conflicting]


def competent_seeds(result: DatasetResult, model: str, exit_index: int) -> tuple[list[int], list[int]]:
    """(seeds whose model has learned the task at this exit, seeds whose model has not), by kdteach.groups.competence
    on the exit's test accuracy per group against the dataset's shortcut rules (result.shortcuts)."""
    good, bad = [], []
    for o in _outcomes(result, model):
        row = o.accuracy[min(exit_index, len(o.accuracy) - 1)]
        (good if _competent(row, result) else bad).append(o.seed)
    return good, bad


def _competent(per_group: Sequence[float], result: DatasetResult) -> bool:
    return competence(per_group, result.shortcuts).competent


# ----------------------------------------------------------------------------------------------------------------
# Formatting


def _interval(values: Sequence[float], *, scale: float = 100.0, digits: int = 1, bounds: tuple[float, float] = FRACTION) -> str:
    # mean [95% interval] over seeds, inside the metric's range (report's rule).
    return report.mean_interval(list(values), bounds=bounds, scale=scale, digits=digits)


def _splits_mean(result: DatasetResult, model: str, method: str, metric: str, exit_index: int, group: int | None) -> tuple[float, float, int]:
    # One model's pooled mean over all its splits (every seed's), and the Monte Carlo standard error of that mean.
    means, stds, counts = [], [], []
    for o in _outcomes(result, model):
        s = o.marginal[method] if group is None else o.by_group[method][group]
        e = min(exit_index, len(s.coverage) - 1)
        means.append(getattr(s, metric)[e])
        stds.append({"coverage": s.coverage_std, "size": s.size_std}.get(metric, (math.nan,) * len(s.coverage))[e])
        counts.append(s.splits)
    total = sum(counts)
    mean = float(np.average(means, weights=counts))
    se = float(math.sqrt(sum(c * sd**2 for c, sd in zip(counts, stds)) / total / total)) if total > 1 else math.nan
    return mean, se, total


def _teacher_cell(result: DatasetResult, method: str, metric: str, group: int | None, *, scale: float, digits: int) -> str:
    mean, se, total = _splits_mean(result, "teacher", method, metric, 0, group)
    error = "" if math.isnan(se) else f" ± {se * scale:.{digits}f} s.e."
    return f"{mean * scale:.{digits}f}{error} (one model, {total} splits)"


def _exit_name(result: DatasetResult, model: str, e: int) -> str:
    return "its one exit" if model == "teacher" else f"{e + 1} ({result.exits[e]})"


def _rows_of(result: DatasetResult) -> list[tuple[str, int]]:
    return [("teacher", 0)] + [(m, e) for m in students(result) for e in range(len(result.exits))]


def _avcs_share(result: DatasetResult, model: str) -> float:
    return float(np.mean([o.avcs_feasible for o in _outcomes(result, model)]))


def _note(result: DatasetResult, model: str, e: int, method: str | None) -> str:
    notes = []
    if method == "AVCS":
        share = _avcs_share(result, model)
        if share < 1.0:
            notes.append(f"rule infeasible on {100 * (1 - share):.0f}% of splits (there: the full label set); no verdict")
    _, bad = competent_seeds(result, model, e)
    if bad:
        notes.append(f"has not learned the task in seed(s) {bad}; no verdict")
    return "; ".join(notes)


def _cell(result: DatasetResult, model: str, method: str, metric: str, e: int, group: int | None, *, scale: float, digits: int,
          bounds: tuple[float, float]) -> str:
    if model == "teacher":
        return _teacher_cell(result, method, metric, group, scale=scale, digits=digits)
    values = per_seed(result, model, method, metric, e, None if group is None else [group])
    return _interval(list(values.values()), scale=scale, digits=digits, bounds=bounds)


# ----------------------------------------------------------------------------------------------------------------
# Tables


def coverage_rows(result: DatasetResult, method: str) -> list[dict[str, Any]]:
    """One row per model and exit: one method's coverage (%) per group, of every example and of the worst group,
    as mean [95% interval] over seeds (the teacher: mean ± Monte Carlo standard error over its splits), the Monte
    Carlo standard error of a seed's worst-group number, and a note (rule infeasible, task not learned)."""
    rows = []
    for model, e in _rows_of(result):
        row: dict[str, Any] = {"dataset": result.dataset, "sets": method, "model": model, "exit": _exit_name(result, model, e)}
        for g, name in enumerate(result.group_names):
            row[name] = _cell(result, model, method, "coverage", e, g, scale=100.0, digits=1, bounds=(0.0, 1.0))
        row["every example"] = _cell(result, model, method, "coverage", e, None, scale=100.0, digits=1, bounds=(0.0, 1.0))
        worst = per_seed(result, model, method, "coverage", e, range(len(result.group_names)), "min")
        if model == "teacher":
            pooled = [_splits_mean(result, model, method, "coverage", 0, g) for g in range(len(result.group_names))]
            low = min(range(len(pooled)), key=lambda g: pooled[g][0])
            row["worst group"] = f"{100 * pooled[low][0]:.1f} ({result.group_names[low]})"
        else:
            row["worst group"] = _interval(list(worst.values()))
        ses = [o.by_group[method][g].coverage_std[min(e, len(o.accuracy) - 1)] / math.sqrt(o.by_group[method][g].splits)
               for o in _outcomes(result, model) for g in range(len(result.group_names))]
        row["split s.e. (largest)"] = f"{100 * max(ses):.1f}"
        row["note"] = _note(result, model, e, method)
        rows.append(row)
    return rows


def size_rows(result: DatasetResult, method: str) -> list[dict[str, Any]]:
    """One row per model and exit: one method's mean set size (labels; an empty set counts 0) per group and of every
    example, its empty rate (%) and nestedness N(t) over every example, and the note."""
    rows = []
    classes = len(result.class_names)
    for model, e in _rows_of(result):
        row: dict[str, Any] = {"dataset": result.dataset, "sets": method, "model": model, "exit": _exit_name(result, model, e)}
        for g, name in enumerate(result.group_names):
            row[name] = _cell(result, model, method, "size", e, g, scale=1.0, digits=2, bounds=(0.0, float(classes)))
        row["every example"] = _cell(result, model, method, "size", e, None, scale=1.0, digits=2, bounds=(0.0, float(classes)))
        row["empty (%)"] = _cell(result, model, method, "empty_rate", e, None, scale=100.0, digits=1, bounds=(0.0, 1.0))
        row["nestedness"] = _cell(result, model, method, "nestedness", e, None, scale=1.0, digits=3, bounds=(0.0, 1.0))
        row["note"] = _note(result, model, e, method)
        rows.append(row)
    return rows


def accuracy_rows(result: DatasetResult) -> list[dict[str, Any]]:
    """One row per model and exit: test accuracy (%) per group, mean over groups and worst group, as mean [95%
    interval] over seeds (the teacher once), and in how many seeds the exit has learned the task."""
    rows = []
    groups = range(len(result.group_names))
    for model, e in _rows_of(result):
        mine = _outcomes(result, model)[:1] if model == "teacher" else _outcomes(result, model)
        row: dict[str, Any] = {"dataset": result.dataset, "model": model, "exit": _exit_name(result, model, e)}
        for g, name in zip(groups, result.group_names):
            row[name] = _interval([o.accuracy[min(e, len(o.accuracy) - 1)][g] for o in mine])
        row["mean over groups"] = _interval([float(np.mean(o.accuracy[min(e, len(o.accuracy) - 1)])) for o in mine])
        row["worst group"] = _interval([min(o.accuracy[min(e, len(o.accuracy) - 1)]) for o in mine])
        good, bad = competent_seeds(result, model, e)
        good = [s for s in good if any(o.seed == s for o in mine)]
        row["learned the task"] = f"{len(good)} of {len(mine)} seed(s)" + (f" (not: {bad})" if bad and model != "teacher" else "")
        rows.append(row)
    return rows


def class_rows(result: DatasetResult, method: str = "LAC") -> list[dict[str, Any]]:
    """One row per model and exit: one method's coverage (%) per class and its worst class, mean over seeds (the
    class-conditional view: a set can cover every group and still miss one digit)."""
    rows = []
    for model, e in _rows_of(result):
        mine = _outcomes(result, model)
        row: dict[str, Any] = {"dataset": result.dataset, "sets": method, "model": model, "exit": _exit_name(result, model, e)}
        values = np.asarray([o.class_coverage[method][min(e, len(o.accuracy) - 1)] for o in mine])  # (seeds, C)
        for c, name in enumerate(result.class_names):
            row[name] = f"{100 * np.nanmean(values[:, c]):.1f}"
        row["worst class"] = _interval(list(np.nanmin(values, axis=1)))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Answers and findings


def _target(result: DatasetResult, miscoverage: float) -> float:
    # The target coverage 1 - miscoverage. A miscoverage outside (0, 1) is refused by name (issue 22: a miscoverage of 2
    # printed "target coverage -100%").
    return 1.0 - checks.check_number("miscoverage", miscoverage, low=0.0, high=1.0, low_open=True, high_open=True)


def _reaches(result: DatasetResult, model: str, method: str, e: int, groups: Sequence[int], target: float) -> tuple[bool, float, float]:
    # Does a model's coverage of the given groups (their mean; the mean over seeds and splits) reach the target,
    # allowing two Monte Carlo standard errors of that mean and the stated resolution?
    means, ses = [], []
    for g in groups:
        mean, se, _ = _splits_mean(result, model, method, "coverage", e, g)
        means.append(mean)
        ses.append(se if not math.isnan(se) else 0.0)
    mean, se = float(np.mean(means)), float(math.sqrt(np.mean(np.square(ses))))
    return mean + 2 * se + RESOLUTION >= target, mean, se


def _words(c: Comparison, higher: str, lower: str, same: str = "no clear difference") -> str:
    return {"clearly higher": higher, "clearly lower": lower, "no clear difference": same}.get(c.verdict, "too few seeds to decide")


def _difference(c: Comparison, *, scale: float = 100.0, unit: str = " points") -> str:
    if c.n < 2:
        return f"{c.mean * scale:+.1f}{unit} (n={c.n})"
    return f"{c.mean * scale:+.1f}{unit} (95% interval {c.low * scale:+.1f} to {c.high * scale:+.1f}, {c.n} seeds)"


def paired_comparison(ours: Mapping[int, float], reference: Mapping[int, float], *, bounds: tuple[float, float] = FRACTION_DIFFERENCE) -> Comparison:
    """report's paired rule on {seed: value} of two fractions (or, with bounds, of two other quantities)."""
    return _paired(ours, reference, bounds=bounds)


def _restrict(values: Mapping[int, float], seeds: Sequence[int]) -> dict[int, float]:
    return {s: v for s, v in values.items() if s in seeds}


def _early_exit(result: DatasetResult) -> int | None:
    # The earliest exit at which the KD student has learned the task in at least MIN_SEEDS seeds (None: none has).
    for e in range(len(result.exits)):
        if len(competent_seeds(result, KD, e)[0]) >= report.MIN_SEEDS:
            return e
    return None


def _rule_followed(result: DatasetResult, model: str, e: int) -> str:
    # What an unlearned exit does instead, from kdteach.groups.competence (e.g. "background rule"), for the sentence.
    names = {competence(o.accuracy[min(e, len(o.accuracy) - 1)], result.shortcuts).rule_followed for o in _outcomes(result, model)}
    names.discard(None)
    return f"it follows the {' / '.join(sorted(names))}" if names else "it is not clearly above the shortcut rules"


def answers(result: DatasetResult, *, miscoverage: float, method: str = "LAC") -> list[str]:
    """The three questions answered from the numbers, one paragraph each (see the module docstring), for one dataset.

    The question is asked at the earliest exit where the KD student has learned the task (kdteach.groups.competence
    in at least report.MIN_SEEDS seeds; an earlier exit that has not is named, with the rule it follows), against the
    last exit. Each answer is chosen by the comparison rule: "yes", "no", "no clear difference", or "the premise
    failed" (no exit has learned the task, or the early exit does not lean on the shortcut, so there is no minority
    to lose coverage), with its numbers.

    Args:
        result: a DatasetResult.
        miscoverage: the sets' target miscoverage.
        method: the marginal split-conformal method the answers follow ("LAC" or "RAPS").

    Returns:
        Three sentences, led by "Answer 1", "Answer 2", "Answer 3" and the dataset.
    """
    r, target, last = result, _target(result, miscoverage), len(result.exits) - 1
    conflicting, aligned = list(r.conflicting), aligned_groups(r)
    name = {e: f"exit {e + 1} ({r.exits[e]})" for e in range(len(r.exits))}
    head = f"{r.dataset}: "
    early = _early_exit(r)
    if early is None:
        failed = (f"the premise failed: no exit of the KD student has learned the task in at least {report.MIN_SEEDS} of its "
                  f"{len(r.seeds)} seed(s) (at exit 1 {_rule_followed(r, KD, 0)}), so its sets say nothing about the minority groups "
                  "of a model that works.")
        return [f"Answer 1 ({head}do minority groups lose coverage at early exits?): {failed}",
                f"Answer 2 ({head}does debiasing change it?): not asked: {failed}",
                f"Answer 3 ({head}what restores it?): not asked: {failed}"]
    good, bad = competent_seeds(r, KD, early)
    skipped = "" if early == 0 else (f"exit 1 has not learned the task ({_rule_followed(r, KD, 0)}), so no coverage there is a finding; "
                                     f"{name[early]} is the earliest exit that has. ")
    lean = paired_comparison(_restrict(accuracy_per_seed(r, KD, early, conflicting), good), _restrict(accuracy_per_seed(r, KD, early, aligned), good))
    conf = _restrict(per_seed(r, KD, method, "coverage", early, conflicting), good)
    alig = _restrict(per_seed(r, KD, method, "coverage", early, aligned), good)
    gap = paired_comparison(conf, alig)
    conf_mean, alig_mean = float(np.mean(list(conf.values()))), float(np.mean(list(alig.values())))
    numbers = (f"at {name[early]} {method} covers the bias-conflicting group(s) {100 * conf_mean:.1f}% and the aligned {100 * alig_mean:.1f}% "
               f"(target {100 * target:.0f}%; conflicting - aligned {_difference(gap)})")
    if lean.verdict != "clearly lower":
        one = (f"the premise failed: the KD student's {name[early]} is not clearly less accurate on the bias-conflicting groups "
               f"(conflicting - aligned accuracy {_difference(lean)}), so there is no minority it fails; {numbers}.")
    elif gap.verdict == "clearly lower" and conf_mean < target:
        one = f"yes: {numbers}, clearly lower, {100 * (target - conf_mean):.1f} points below the target."
    elif gap.verdict == "clearly lower":
        one = f"they are covered less but not below the target: {numbers}."
    else:
        one = f"{_words(gap, 'no: they are covered more', 'no', 'no clear difference')}: {numbers}."
    conf_last = _restrict(per_seed(r, KD, method, "coverage", last, conflicting), good)
    if early != last:
        later = paired_comparison(conf, conf_last)
        one += (f" At {name[last]} they get {100 * np.mean(list(conf_last.values())):.1f}%; exit {early + 1} - last exit "
                f"{_difference(later)}: {_words(later, 'the earlier exit covers them more', 'the earlier exit covers them less')}.")
    if bad:
        one += f" (Seeds {bad}, whose {name[early]} has not learned the task, are left out.)"
    lines = [f"Answer 1 ({head}do minority groups lose coverage at early exits?): {skipped}{one[0].upper() + one[1:] if skipped else one}"]

    parts = []
    for variant in students(r)[1:]:
        vgood, _ = competent_seeds(r, variant, early)
        both = [s for s in good if s in vgood]
        if len(both) < report.MIN_SEEDS:
            parts.append(f"{variant}: the premise failed (its {name[early]} has learned the task in {len(vgood)} seed(s)), no verdict")
            continue
        c0 = paired_comparison(_restrict(per_seed(r, variant, method, "coverage", early, conflicting), both), _restrict(conf, both))
        acc = paired_comparison(_restrict(accuracy_per_seed(r, variant, early, conflicting), both), _restrict(accuracy_per_seed(r, KD, early, conflicting), both))
        text = f"{variant} - KD on the conflicting groups' {method} coverage at {name[early]} {_difference(c0)}: {_words(c0, 'raises it', 'lowers it')}"
        if early != last:
            cl = paired_comparison(_restrict(per_seed(r, variant, method, "coverage", last, conflicting), both), _restrict(conf_last, both))
            text += f"; at {name[last]} {_difference(cl)}: {_words(cl, 'raises it', 'lowers it')}"
        parts.append(text + f" (their accuracy at {name[early]} {_difference(acc)}: {_words(acc, 'higher', 'lower')})")
    lines.append(f"Answer 2 ({head}does debiasing change it?): " + "; ".join(parts) + ".")

    restored = []
    ok, mean, se = _reaches(r, KD, "Mondrian", early, conflicting, target)
    classes = float(len(r.class_names))
    sizes = paired_comparison(_restrict(per_seed(r, KD, "Mondrian", "size", early, conflicting), good),
                              _restrict(per_seed(r, KD, method, "size", early, conflicting), good), bounds=(-classes, classes))
    theirs = f"{method}'s"
    size_words = _words(sizes, f"larger than {theirs}", f"smaller than {theirs}", f"not clearly different in size from {theirs}")
    found = [f"calibrating inside each group (Mondrian, with the calibration examples' group labels) gives the conflicting groups "
             f"{100 * mean:.1f}% ± {100 * se:.1f} s.e. at {name[early]} ({'reaching' if ok else 'short of'} the target), their sets "
             f"{size_words} (Mondrian - {method} {_difference(sizes, scale=1.0, unit=' labels')})"]
    restored += ["Mondrian"] if ok else []
    if early != last:
        late_ok, late_mean, _ = _reaches(r, KD, method, last, conflicting, target)
        restored += ["waiting for the last exit"] if late_ok else []
        found.append(f"waiting for {name[last]} gives them {100 * late_mean:.1f}% ({'reaching' if late_ok else 'short of'} the target)")
    share = _avcs_share(r, KD)
    if share < 1.0:
        found.append(f"AVCS's threshold rule was infeasible on {100 * (1 - share):.0f}% of the KD student's splits, where its set is every "
                     "label: no verdict on it")
    else:
        a_ok, a_mean, _ = _reaches(r, KD, "AVCS", early, conflicting, target)
        restored += ["AVCS"] if a_ok else []
        found.append(f"AVCS gives them {100 * a_mean:.1f}% at {name[early]} ({'reaching' if a_ok else 'short of'} the target)")
    lead = f"what reaches the target for the conflicting groups at the KD student's {name[early]}: {', '.join(restored) or 'nothing measured here'}"
    if not one.startswith("yes"):
        lead = "nothing needed restoring (see answer 1); " + lead
    lines.append(f"Answer 3 ({head}what restores it?): {lead}. In numbers: " + "; ".join(found) + ".")
    return lines


def dataset_findings(result: DatasetResult, *, miscoverage: float, splits: int) -> list[str]:
    """Every sentence about one dataset: what was run, the three answers, competence, AVCS's rule, the paired
    comparisons behind the answers, and (two classes) what two classes do to sets."""
    r, target, last = result, _target(result, miscoverage), len(result.exits) - 1
    conflicting = list(r.conflicting)
    where = {0: f"exit 1 ({r.exits[0]})", last: f"the last exit ({r.exits[last]})"}
    best = max(r.shortcuts, key=lambda name: np.mean(r.shortcuts[name]))
    lines = [f"{r.dataset}: {len(r.class_names)} classes, groups {', '.join(repr(n) for n in r.group_names)} (bias-conflicting: "
             f"{', '.join(repr(r.group_names[g]) for g in conflicting)}); sets at miscoverage {miscoverage:g} (target coverage "
             f"{100 * target:.0f}%), calibrated on {splits} random splits of the test set per model; student seeds {list(r.seeds)}; "
             f"DeDiER's weights exp({r.dedier_scale:g} * margin^{r.dedier_exponent:g}) on readout errors. The best shortcut rule's mean over "
             f"groups: {best} {100 * np.mean(r.shortcuts[best]):.0f}% (a model must be {100 * COMPETENCE_MARGIN:.0f} points above it)."]
    lines += answers(r, miscoverage=miscoverage)
    learned = []
    for model in students(r):
        per_exit = []
        for e in range(len(r.exits)):
            good, bad = competent_seeds(r, model, e)
            per_exit.append(f"exit {e + 1} {len(good)}/{len(good) + len(bad)}")
        learned.append(f"{model} ({', '.join(per_exit)})")
    lines.append(f"{r.dataset}: exits that learned the task (mean over groups clearly above every shortcut rule), seeds: " + "; ".join(learned) + ".")
    shares = "; ".join(f"{m} {100 * _avcs_share(r, m):.0f}%" for m in ["teacher", *students(r)])
    lines.append(f"{r.dataset}: AVCS's threshold rule reached its rank on this share of calibration splits: {shares}. Where it did not, "
                 "the set is every label (split conformal's set at an infinite threshold) and the tables say 'rule infeasible'.")
    for method in ("LAC", "RAPS"):
        for model in students(r)[1:]:
            for e in (0, last):
                good_m, _ = competent_seeds(r, model, e)
                good_k, _ = competent_seeds(r, KD, e)
                both = [s for s in good_m if s in good_k]
                c = paired_comparison(_restrict(per_seed(r, model, method, "coverage", e, range(len(r.group_names)), "min"), both),
                                      _restrict(per_seed(r, KD, method, "coverage", e, range(len(r.group_names)), "min"), both))
                lines.append(f"{r.dataset}: " + comparison_sentence(c, what=f"{method} worst-group coverage at {where[e]} (seeds where both learned the task)",
                                                                     ours=model, reference=KD))
        good_k, _ = competent_seeds(r, KD, last)
        c = paired_comparison(_restrict(per_seed(r, KD, method, "coverage", last, range(len(r.group_names)), "min"), good_k),
                              per_seed(r, "teacher", method, "coverage", 0, range(len(r.group_names)), "min"))
        lines.append(f"{r.dataset}: " + comparison_sentence(c, what=f"{method} worst-group coverage ({where[last]} against the teacher's one exit, same splits)",
                                                             ours="KD student", reference="teacher"))
    for model in students(r)[1:]:
        c = paired_comparison(accuracy_per_seed(r, model, last, how="min"), accuracy_per_seed(r, KD, last, how="min"))
        lines.append(f"{r.dataset}: " + comparison_sentence(c, what=f"worst-group accuracy at {where[last]}", ours=model, reference=KD))
    if len(r.class_names) == 2:
        size = np.mean(list(per_seed(r, KD, "LAC", "size", 0).values()))
        empty = np.mean(list(per_seed(r, KD, "LAC", "empty_rate", 0).values()))
        lines.append(f"{r.dataset} has two classes: a set is empty, one label or both, so its size only says how often a model declines "
                     f"to choose. The KD student's LAC sets at {where[0]} average {size:.2f} labels: both labels for about "
                     f"{100 * max(0.0, size - 1 + empty):.0f}% of examples, none for {100 * empty:.0f}%. With ten classes a set can say which "
                     "few labels remain.")
    return lines


def capstone_findings(result: CapstoneResult, *, mode: str = "full") -> list[str]:
    """Every finding of a run, dataset by dataset (answers first), with the smoke note in smoke mode."""
    cfg = result.config
    lines = [line for r in result.datasets for line in dataset_findings(r, miscoverage=cfg.miscoverage, splits=cfg.splits)]
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])


def write(out: str | Path, result: CapstoneResult, meta: Mapping[str, Any]) -> Path:
    """Writes the capstone's files into out: capstone (coverage of every method), capstone_sizes, capstone_accuracy,
    capstone_classes (colored_digits_10, per class) with their Markdown tables, the typed result, and the figures
    (coverage and size per exit and group, per dataset)."""
    cfg = result.config
    figures = {}
    for r in result.datasets:
        figures[f"coverage_{r.dataset}"] = plot_group_coverage(r, miscoverage=cfg.miscoverage)
        figures[f"sizes_{r.dataset}"] = plot_group_sizes(r)
    words = "; ".join(f"{m}: {w}" for m, w in METHOD_WORDS.items())
    rows = [row for r in result.datasets for m in SET_METHODS for row in coverage_rows(r, m)]
    report.write_report(out, "capstone", rows=rows, meta=meta, figures=figures, result=result,
                        title=f"Coverage per exit and group (%): students mean [95% interval] over seeds, the teacher mean ± Monte Carlo s.e. over its splits ({words})")
    report.write_report(out, "capstone_sizes", rows=[row for r in result.datasets for m in SET_METHODS for row in size_rows(r, m)], meta=meta,
                        title="Mean set size per exit and group (labels; an empty set counts 0), empty rate and nestedness")
    report.write_report(out, "capstone_accuracy", rows=[row for r in result.datasets for row in accuracy_rows(r)], meta=meta,
                        title="Test accuracy per exit and group (%), and whether each exit learned the task")
    digits = [r for r in result.datasets if r.dataset == DIGITS]
    if digits:
        report.write_report(out, "capstone_classes", rows=[row for r in digits for m in ("LAC", "Mondrian") for row in class_rows(r, m)], meta=meta,
                            title=f"Coverage per class (%) on {DIGITS}, mean over seeds")
    return Path(out)


def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> CapstoneResult:
    """`python -m kdteach capstone`: notebook 07 headless (here, beside the words it writes, so capstone.py needs no
    import of this module), its tables, answers, findings and figures written to out
    (None: nothing written); `seed` is added to every student seed."""
    base = capstone.config(mode)
    cfg = replace(base, seeds=tuple(s + seed for s in base.seeds), few_seeds=tuple(s + seed for s in base.few_seeds))
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started, results, seconds = time.perf_counter(), [], []
    for name in cfg.datasets:
        begun = time.perf_counter()
        results.append(capstone.run_dataset(name, cfg, device, progress=progress))
        seconds.append(time.perf_counter() - begun)
    result = CapstoneResult(cfg, tuple(results), tuple(seconds), time.perf_counter() - started)
    lines = capstone_findings(result, mode=mode)
    print("\n".join(lines))
    if out is not None:
        meta = {"mode": mode, **report.provenance(experiment="capstone", config=cfg, seeds=cfg.seeds, wall_seconds=result.seconds, device=str(device)),
                "recipe": report.to_jsonable(dedier.config(mode)), "findings": lines}
        write(out, result, meta)
    return result
