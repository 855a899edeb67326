"""Notebook 06's tables and sentences, typed by the results of kdteach.experiments.sets (split from it for size).

Coverage against the target 1 - alpha is read in Monte Carlo standard errors by a stated threshold; methods are
compared over calibration splits of one trained model, which is n=1 for the seed rule (report.paired_comparison): the
sentences give means with their Monte Carlo standard errors and no verdict.

The result types are imported for annotations only: kdteach.experiments.sets imports this module at its top (its
run() writes these tables, and notebook 06 reaches every name here as experiment.*), so this module never imports it
at run time.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from kdteach.report import smoke_note
from kdteach.sets import MethodSummary, SetMetrics

if TYPE_CHECKING:  # for the annotations only: sets imports this module, never the reverse at run time
    from kdteach.experiments.sets import ClassificationResult, ParallelResult, RegressionResult, SplitResult

__all__ = ["set_summary_rows", "per_exit_rows", "monte_carlo_error", "error_summary_rows", "error_per_exit_rows", "target_rows",
           "target_sentences", "parallel_rows", "set_sentences", "regression_rows", "regression_sentences"]


# Tables and sentences: coverage against the target is a plain threshold stated in the sentence; methods are compared
# over calibration splits of one trained model, which is n=1 for the seed rule: means with Monte Carlo standard errors.


def set_summary_rows(summaries: Sequence[MethodSummary]) -> list[dict[str, Any]]:
    """One table row per method from kd.sets.MethodSummary's: coverage at the first and last exit and its minimum,
    the share covered at every exit and the share of splits below the target, mean size (empty sets count 0) and
    empty rate over exits (apart), the smallest N(t), the share with a returning label, the worst class."""
    return [{
        "method": s.method,
        "coverage exit 1": s.coverage[0],
        "coverage last exit": s.coverage[-1],
        "min coverage over exits": min(s.coverage),
        "covered at every exit": s.all_exit_coverage,
        "splits below 1 - alpha": s.share_below_target,
        "mean size (empty = 0)": float(np.mean(s.size)),
        "empty rate": float(np.mean(s.empty_rate)),
        "min N(t)": min(s.nestedness),
        "label returns": s.returning,
        "worst-class coverage (last exit)": s.worst_class_coverage,
    } for s in summaries]


def per_exit_rows(summaries: Sequence[MethodSummary], field: str) -> list[dict[str, Any]]:
    """One row per exit, one column per method, of a per-exit field of MethodSummary ("coverage", "size", ...)."""
    exits = len(getattr(summaries[0], field))
    return [{"exit": t + 1, **{s.method: getattr(s, field)[t] for s in summaries}} for t in range(exits)]


# Monte Carlo standard errors (presentation helpers for notebook 06). Every mean over calibration splits is itself an
# estimate: over S splits with per-split standard deviation sigma, its standard error is sigma / sqrt(S). All splits
# share one trained model and one pool of digits, so the error measures the splitting noise of that pool only.


def monte_carlo_error(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-split values and its Monte Carlo standard error.

    Args:
        values: one value per calibration split (at least one).

    Returns:
        (mean, standard deviation over splits (ddof=1) / sqrt(splits)); the error is 0 for a single split.

    Raises:
        ValueError: naming values when it is empty.
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("values is empty: a mean over splits needs at least one split")
    error = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else 0.0
    return float(array.mean()), error


# The columns of error_summary_rows: (name, value of one split's SetMetrics, scale, decimals).
_ERROR_COLUMNS: tuple[tuple[str, Callable[[SetMetrics], float], float, int], ...] = (
    ("coverage exit 1 (%)", lambda m: m.coverage[0], 100.0, 2),
    ("coverage last exit (%)", lambda m: m.coverage[-1], 100.0, 2),
    ("covered at every exit (%)", lambda m: m.all_exit_coverage[-1], 100.0, 2),
    ("mean size (empty = 0)", lambda m: float(np.mean(m.size)), 1.0, 3),
    ("empty rate (%)", lambda m: float(np.mean(m.empty_rate)), 100.0, 2),
    ("N(t) last exit", lambda m: m.nestedness[-1], 1.0, 3),
    ("label returns (%)", lambda m: m.returning, 100.0, 2),
    ("worst-class coverage, last exit (%)", lambda m: m.worst_class_coverage, 100.0, 2),
)


def _with_error(values: Sequence[float], scale: float, decimals: int) -> str:
    mean, error = monte_carlo_error(values)
    return f"{scale * mean:.{decimals}f} ± {scale * error:.{decimals}f}"


def error_summary_rows(splits: Sequence[SplitResult]) -> list[dict[str, Any]]:
    """One row per method: each mean over the calibration splits as "mean ± Monte Carlo standard error".

    Args:
        splits: the SplitResults (ClassificationResult.splits, or splits_from_reference of the committed result).

    Returns:
        Rows with the method, the number of splits and one "mean ± s.e." string per column of _ERROR_COLUMNS.
    """
    rows = []
    for i, method in enumerate(splits[0].methods):
        row: dict[str, Any] = {"method": method, "splits": len(splits)}
        for name, get, scale, decimals in _ERROR_COLUMNS:
            row[name] = _with_error([get(sp.metrics[i]) for sp in splits], scale, decimals)
        rows.append(row)
    return rows


def error_per_exit_rows(splits: Sequence[SplitResult], field: str, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per exit, one column per method: a per-exit SetMetrics field (in %) as "mean ± Monte Carlo s.e.".

    Args:
        splits: the SplitResults.
        field: a per-exit field of SetMetrics ("coverage", "empty_rate", "all_exit_coverage", ...).
        methods: the methods to show (default: every method of the splits).

    Returns:
        The rows.
    """
    names = list(methods or splits[0].methods)
    index = {m: i for i, m in enumerate(splits[0].methods)}
    exits = len(getattr(splits[0].metrics[0], field))
    return [{"exit": t + 1, **{m: _with_error([getattr(sp.metrics[index[m]], field)[t] for sp in splits], 100.0, 2) for m in names}}
            for t in range(exits)]


def target_rows(splits: Sequence[SplitResult], alpha: float) -> list[dict[str, Any]]:
    """Per method, its coverage at the last exit and at every exit against 1 - alpha, in Monte Carlo standard errors.

    A mean 0.1 point below the target is a failure when it is many standard errors below, and noise when it is
    less than about two; this table gives the distance in both units.

    Args:
        splits: the SplitResults.
        alpha: the target miscoverage.

    Returns:
        Rows: method; coverage at the last exit (%), its s.e. (points) and its distance from 1 - alpha in s.e.; the
        same for the share covered at every exit.
    """
    target = 1 - alpha
    rows = []
    for i, method in enumerate(splits[0].methods):
        row: dict[str, Any] = {"method": method}
        for name, get in (("last exit", lambda m: m.coverage[-1]), ("every exit", lambda m: m.all_exit_coverage[-1])):
            mean, error = monte_carlo_error([get(sp.metrics[i]) for sp in splits])
            row[f"coverage, {name} (%)"] = 100 * mean
            row[f"s.e. (points), {name}"] = 100 * error
            row[f"distance from {target:.0%} in s.e., {name}"] = (mean - target) / error if error > 0 else math.nan
        rows.append(row)
    return rows


def target_sentences(splits: Sequence[SplitResult], alpha: float, methods: Sequence[str], *, within: float = 3.0) -> list[str]:
    """Per method, its coverage at the last exit and at every exit read against 1 - alpha in Monte Carlo standard
    errors, worded by a stated threshold: within `within` standard errors the splitting noise can explain the gap.

    Args:
        splits: the SplitResults.
        alpha: the target miscoverage.
        methods: the methods to describe.
        within: the threshold in standard errors (3 by default: the tables read a dozen methods at once, so a gap of
            2 standard errors somewhere is expected by chance).

    Returns:
        One sentence per method.
    """
    target, by = 1 - alpha, {row["method"]: row for row in target_rows(splits, alpha)}

    def reading(z: float) -> str:
        if math.isnan(z):
            return "no spread over splits, so no standard error"
        if abs(z) < within:
            return f"{z:+.1f} s.e. from {target:.0%}, within {within:g}: the splitting noise can explain the gap"
        return f"{z:+.1f} s.e. from {target:.0%}: clearly {'below' if z < 0 else 'above'} it on this pool of digits"

    lines = []
    for method in methods:
        row = by[method]
        parts = [f"{'at the last exit' if name == 'last exit' else 'covered at every exit'} {row[f'coverage, {name} (%)']:.2f}% "
                 f"± {row[f's.e. (points), {name}']:.3f} points ({reading(row[f'distance from {target:.0%} in s.e., {name}'])})"
                 for name in ("last exit", "every exit")]
        lines.append(f"{method}, over {len(splits)} splits: coverage " + "; ".join(parts) + ".")
    return lines


def parallel_rows(parallel: Sequence[ParallelResult]) -> list[dict[str, Any]]:
    """The parallel AVCS variant per number of copies: the share covered at every exit and the set size at the first
    and last exit, each as "mean ± Monte Carlo s.e." over its splits (from the summaries' standard deviations), and
    the time it takes per split.

    Args:
        parallel: ClassificationResult.parallel.

    Returns:
        One row per number of copies.
    """
    rows = []
    for p in parallel:
        s, root = p.summary, math.sqrt(p.summary.splits)
        rows.append({"copies": p.copies, "splits": s.splits,
                     "covered at every exit (%)": f"{100 * s.all_exit_coverage:.2f} ± {100 * s.all_exit_coverage_std / root:.2f}",
                     "size exit 1": f"{s.size[0]:.3f} ± {s.size_std[0] / root:.3f}",
                     "size last exit": f"{s.size[-1]:.3f} ± {s.size_std[-1] / root:.3f}",
                     "ms to fit tau": 1e3 * p.fit_seconds, "ms to make the sets": 1e3 * p.eval_seconds})
    return rows


def _splits_sentence(ours_values: Mapping[int, float], reference_values: Mapping[int, float], *, what: str, ours: str, reference: str,
                     scale: float = 100.0, unit: str = " points") -> str:
    # Random calibration splits of ONE trained model are not seeds: they redraw which of the same digits calibrate,
    # with the same logits, so for anything about training they are one sample (n=1). The sentence gives the mean
    # difference over the splits with its Monte Carlo standard error (how precisely the splits pin down this model's
    # mean) and no verdict: the seed rule (paired_comparison) is not applied to them.
    shared = sorted(set(ours_values) & set(reference_values))
    if not shared:
        return f"{ours} - {reference} on {what}: no split has both."
    diffs = [ours_values[s] - reference_values[s] for s in shared]
    mean, error = monte_carlo_error(diffs)
    n = len(diffs)
    spread = f"Monte Carlo standard error {error * scale:.2f}{unit}" if n > 1 else "one split, so no standard error"
    return (f"{ours} - {reference} on {what}: {mean * scale:+.2f}{unit} on average over {n} random calibration split(s) of one trained "
            f"model ({spread}; above zero in {sum(d > 0 for d in diffs)} of {n}). One trained model is one sample (n=1): the splits show "
            "how the two methods differ on this model's outputs, not whether another training run would agree, so no verdict is given.")


def set_sentences(result: ClassificationResult, *, mode: str = "full") -> list[str]:
    """The findings of notebook 06's classification comparison, from a ClassificationResult.

    Coverage against the target 1 - alpha is a plain threshold on the mean over splits (stated in the sentence);
    differences between methods are means over the splits with their Monte Carlo standard error and no verdict: every
    split uses the same trained model, one sample for the seed rule (n=1, not n=splits).

    Args:
        result: the ClassificationResult (alpha, splits with per-method SetMetrics and AvcsFit, summaries, parallel).
        mode: "smoke" adds the smoke-mode note.

    Returns:
        The sentences.
    """
    target, n = 1 - result.alpha, len(result.splits)
    by = {s.method: s for s in result.summaries}
    index = {m: i for i, m in enumerate(result.splits[0].methods)}

    def per_split(method: str, get: Callable[[SetMetrics], float]) -> dict[int, float]:
        return {sp.seed: float(get(sp.metrics[index[method]])) for sp in result.splits}

    per_exit = [m for m in by if not m.endswith(" ∩") and m != "AVCS"]
    listed = "; ".join(f"{m} {min(by[m].nestedness):.3f} / {by[m].returning:.1%}" for m in per_exit)
    lines = [f"Per-exit sets, smallest N(t) / share of digits with a label that comes back (means over {n} splits): {listed}. "
             "N(t) < 1 means not nested."]
    returning = {m: per_split(m, lambda s: s.returning) for m in ("RAPS", "RAPS shared u", "RAPS no u")}
    lines.append(_splits_sentence(returning["RAPS"], returning["RAPS shared u"], what="share of digits with a returning label",
                                  ours="RAPS with a fresh u per exit", reference="RAPS with one u shared"))
    lines.append(f"With one u shared, randomised RAPS changes across exits only through the exits' probabilities and thresholds: "
                 f"its {by['RAPS shared u'].returning:.1%} of digits with a returning label is what the exits' disagreement does; "
                 f"drawing u afresh at every exit adds {100 * (by['RAPS'].returning - by['RAPS shared u'].returning):+.1f} points. "
                 f"Non-randomised RAPS (u = 1: larger sets, {np.mean(by['RAPS no u'].size):.2f} labels) has {by['RAPS no u'].returning:.1%}.")
    inter = "; ".join(f"{m} ∩ {by[m + ' ∩'].all_exit_coverage:.1%} ({by[m + ' ∩'].share_below_target:.0%} of splits below)" for m in per_exit)
    lines.append(f"Running intersections are nested by construction; their coverage at the last exit (= at every exit), against the "
                 f"target {target:.0%}: {inter}.")
    avcs = by["AVCS"]
    taus = [sp.avcs.tau for sp in result.splits]
    word = "reaching" if avcs.all_exit_coverage >= target else "short of"
    lines.append(f"AVCS, threshold chosen by the conformal-rank rule: {avcs.all_exit_coverage:.1%} of evaluation digits covered at every exit "
                 f"on average over {n} splits (standard deviation {avcs.all_exit_coverage_std:.1%}), {word} the target {target:.0%}; "
                 f"{avcs.share_below_target:.0%} of single splits fall below it (the rule's guarantee is an average over splits). "
                 f"tau {np.mean(taus):.2f} on average ({min(taus):g} to {max(taus):g}); smallest N(t) {min(avcs.nestedness):.3f}.")
    infeasible = [sp.avcs for sp in result.splits if not sp.avcs.feasible]
    if infeasible:
        lines.append(f"In {len(infeasible)} of {n} splits not even the smallest candidate tau ({min(taus):g}) kept enough calibration labels "
                     f"at every exit (at most {max(f.floor_coverage for f in infeasible):.2%} against {infeasible[0].required_coverage:.2%} "
                     "needed): there tau stays at it without a guarantee, because the network's logits, not the threshold, cap AVCS's coverage.")
    sizes = {m: per_split(m, lambda s: np.mean(s.size)) for m in ("AVCS", "RAPS")}
    lines.append(_splits_sentence(sizes["AVCS"], sizes["RAPS"], what="mean set size over exits (labels; empty sets count 0)",
                                  ours="AVCS", reference="per-exit RAPS", scale=1.0, unit=" labels")
                 + f" Means: AVCS {np.mean(avcs.size):.2f}, RAPS {np.mean(by['RAPS'].size):.2f}, RAPS ∩ {np.mean(by['RAPS ∩'].size):.2f}.")
    empties = ", ".join(f"{m} {np.mean(by[m].empty_rate):.1%}" for m in ("AVCS", "RAPS", "RAPS shared u", "APS", "LAC", "RAPS ∩"))
    lines.append(f"Empty sets (abstentions), mean over exits and splits: {empties}.")
    lines.append("Parallel AVCS (copies intersected, threshold fitted for the intersection): " + "; ".join(
        f"{p.copies} cop{'y' if p.copies == 1 else 'ies'}: covered at every exit {p.summary.all_exit_coverage:.1%}, mean size "
        f"{np.mean(p.summary.size):.2f}, empty {np.mean(p.summary.empty_rate):.1%}, {1e3 * p.fit_seconds:.0f} ms to fit and "
        f"{1e3 * p.eval_seconds:.0f} ms to make the sets per split" for p in result.parallel) + f" (over {result.parallel[0].summary.splits} splits).")
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])


def regression_rows(result: RegressionResult) -> list[dict[str, Any]]:
    """One table row per regression method from a RegressionResult."""
    return [{
        "method": method,
        "coverage exit 1": m.coverage[0],
        "coverage last exit": m.coverage[-1],
        "min coverage over exits": min(m.coverage),
        "covered at every exit": m.all_exit_coverage[-1],
        "mean width (empty = 0)": float(np.mean(m.size)),
        "empty rate": float(np.mean(m.empty_rate)),
        "min N(t)": min(m.nestedness),
        "empty, last exit, outside training range": outside,
        "empty, last exit, inside": inside,
    } for method, m, inside, outside in zip(result.methods, result.metrics, result.empty_inside, result.empty_outside)]


def regression_sentences(result: RegressionResult, *, alpha: float, mode: str = "full") -> list[str]:
    """The findings of notebook 06's regression comparison (one seed: plain thresholds, stated, on its numbers)."""
    target = 1 - alpha
    m = dict(zip(result.methods, result.metrics))
    outside = dict(zip(result.methods, result.empty_outside))
    inside = dict(zip(result.methods, result.empty_inside))
    bayes, inter, avcs = m["Bayes"], m["Bayes ∩"].all_exit_coverage[-1], m["AVCS"]
    lines = [
        f"Per-exit credible intervals: smallest N(t) {min(bayes.nestedness):.3f} (exit {int(np.argmin(bayes.nestedness)) + 1}); coverage "
        f"from {min(bayes.coverage):.1%} to {max(bayes.coverage):.1%} over exits.",
        f"Their running intersection keeps {inter:.1%} of test targets to the last exit ({'below' if inter < target else 'not below'} {target:.0%}).",
        f"AVCS intervals: smallest N(t) {min(avcs.nestedness):.3f}; coverage from {min(avcs.coverage):.1%} to {max(avcs.coverage):.1%}, "
        f"{avcs.all_exit_coverage[-1]:.1%} at every exit ({'below' if avcs.all_exit_coverage[-1] < target else 'not below'} {target:.0%}); "
        f"mean width {np.mean(avcs.size):.2f} against {np.mean(bayes.size):.2f} for the credible intervals.",
        f"Outside the training inputs the last AVCS interval is empty for {outside['AVCS']:.0%} of grid points, inside for "
        f"{inside['AVCS']:.0%}; credible intervals are never empty ({outside['Bayes']:.0%} outside).",
    ]
    return lines + ([smoke_note(mode) + " One seed and 180 test points: coverages move by a couple of points."] if mode == "smoke" else [])
