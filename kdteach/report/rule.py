"""THE comparison rule of the course, and the seed summaries it rests on.

Runs of the same seed share the initialisation and the batch order, so two methods are compared within seeds
(`paired_comparison`): the per-seed differences give a mean and a 95% interval, and
- fewer than MIN_SEEDS (3) seeds: no verdict; the numbers are printed and the sentence says they cannot decide;
- the interval excludes zero AND the mean difference exceeds the stated resolution: "clearly higher" / "clearly lower";
- otherwise: "no clear difference" (the interval straddles zero, or the difference is below the resolution),
  whatever the means say.
`comparison_sentence` is the one sentence printed about a comparison; given each side's Competence per seed it says
"degenerate model, no verdict" instead when a model on either side has not learned the task
(kdteach.groups.competence: not clearly above the constant and shortcut rules).

The interval, and why not a percentile bootstrap. Both intervals here (`paired_comparison`'s for a mean difference,
`mean_interval`'s for a mean) are the 95% t-interval intersected with the metric's range (`bounds`: [-1, 1] for a
difference of two fractions, [0, 1] for a mean of one). Intersecting with the range costs no coverage: the true mean
always lies in the range, so it lies in the intersection exactly when it lies in the t-interval; the interval only
stops claiming values the metric cannot take ("57.8 [-48.5, 164.1]" becomes "57.8 [0.0, 100.0]": three seeds that
spread over the whole range say little, and now the interval says so too). A percentile bootstrap also stays in range,
but only because it never leaves [min, max] of the observed values: with 3 seeds the 2.5% and 97.5% quantiles of its
27 equally likely resamples ARE the smallest and largest difference, an interval that misses the median difference
whenever all three seeds fall on one side of it (one time in four), so "clearly" would follow from three differences
of one sign, however spread. With the 3 to 5 seeds the course can afford, the t-interval's width (4.3 standard errors
at 3 seeds) is the honest one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from scipy import stats

from kdteach.groups import Competence

MIN_SEEDS = 3  # no verdict from fewer seeds
CONFIDENCE = 0.95
RESOLUTION = 0.005  # "clearly" needs a mean difference beyond half a percentage point (of a fraction)
UNBOUNDED = (-math.inf, math.inf)
FRACTION = (0.0, 1.0)  # the range of an accuracy, a coverage, a share
FRACTION_DIFFERENCE = (-1.0, 1.0)  # the range of a difference of two of them

Verdict = Literal["too few seeds", "clearly higher", "clearly lower", "no clear difference"]


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count of one number over seeds."""

    mean: float
    std: float
    n: int

    def format(self, *, scale: float = 1.0, digits: int = 1) -> str:
        """e.g. "91.3 ± 1.2 (n=3)"; one value alone: "91.3 (n=1)"."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """The SeedSummary of finite values (NaNs, e.g. a group absent in a seed, are left out).

    Args:
        values: one number per seed.

    Returns:
        SeedSummary(mean, std, n).
    """
    array = np.asarray([v for v in values if not math.isnan(float(v))], dtype=float)
    if array.size == 0:
        return SeedSummary(math.nan, math.nan, 0)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(float(array.mean()), std, int(array.size))


def mean_std(values: Sequence[float], *, scale: float = 1.0, digits: int = 1) -> str:
    """Formats values as "mean ± std (n=...)" (see SeedSummary.format).

    Args:
        values: one number per seed.
        scale: multiply before printing (100 for percentages).
        digits: decimals.

    Returns:
        The formatted string.
    """
    return summarize_seeds(values).format(scale=scale, digits=digits)


def _check_bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    if len(bounds) != 2 or any(math.isnan(float(b)) for b in bounds) or not float(bounds[0]) < float(bounds[1]):
        raise ValueError(f"{name} must be (low, high) with low < high, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _check_values(name: str, values: np.ndarray, labels: Sequence[Any], bounds: tuple[float, float], *, allow_nan: bool) -> None:
    # Every value finite (NaN only where a missing value is allowed) and inside the metric's range; the message names
    # the argument and the seed, so a percentage passed where a fraction belongs is caught here, not in a verdict.
    for value, label in zip(values.tolist(), labels):
        if math.isnan(value) and allow_nan:
            continue
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite (NaN only for a missing value), got {value!r} at seed {label!r}")
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError(f"{name} must lie in the metric's range [{bounds[0]:g}, {bounds[1]:g}] (bounds), got {value!r} at seed "
                             f"{label!r}; are percentages passed where fractions belong?")


def t_interval(values: Sequence[float], *, bounds: tuple[float, float] = UNBOUNDED) -> tuple[float, float]:
    """The 95% t-interval of the mean of values, intersected with the metric's range (see the module docstring).

    Args:
        values: at least two finite numbers (one per seed or per split).
        bounds: (low, high), the range every value, and so the mean, lies in.

    Returns:
        (low, high) with bounds[0] <= low <= mean <= high <= bounds[1].
    """
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        raise ValueError(f"values must hold at least 2 numbers for an interval, got {array.size}")
    low_bound, high_bound = _check_bounds("bounds", bounds)
    mean = float(array.mean())
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return max(mean - half, low_bound), min(mean + half, high_bound)


def mean_interval(values: Sequence[float], *, bounds: tuple[float, float] = UNBOUNDED, scale: float = 1.0, digits: int = 1) -> str:
    """Formats values as "mean [low, high] (n=...)" with the 95% interval of the mean (t_interval, inside bounds).

    Args:
        values: one number per seed (NaNs, e.g. a group absent in a seed, left out; an infinite value is refused).
        bounds: the metric's range, e.g. FRACTION for an accuracy or a coverage (a value outside it is refused).
        scale: multiply before printing (100 for percentages).
        digits: decimals.

    Returns:
        The formatted string; one value: "mean (n=1)"; none: "n/a".
    """
    bounds = _check_bounds("bounds", bounds)
    array = np.asarray(values, dtype=float)
    _check_values("values", array, range(array.size), bounds, allow_nan=True)
    summary = summarize_seeds(array)
    if summary.n < 2:
        return summary.format(scale=scale, digits=digits)
    low, high = t_interval(array[~np.isnan(array)], bounds=bounds)
    return f"{summary.mean * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}] (n={summary.n})"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two methods over the same seeds: `ours - reference`, seed by seed.

    Attributes:
        differences: one difference per shared seed, in seed order.
        mean: mean difference (NaN without seeds).
        low, high: the 95% interval of the mean difference inside bounds (t_interval; NaN below 2 seeds).
        n: number of shared seeds.
        n_higher: seeds where ours is higher (difference > 0).
        verdict: the one rule's decision (see the module docstring).
        resolution: the smallest mean difference called "clearly" (in the values' units).
        seeds: the shared seeds (positions 0, 1, ... for sequences), in the order of differences.
    """

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    n: int
    n_higher: int
    verdict: Verdict
    resolution: float = RESOLUTION
    seeds: tuple[Any, ...] = ()


def paired_comparison(ours: Mapping[Any, float] | Sequence[float], reference: Mapping[Any, float] | Sequence[float], *,
                      bounds: tuple[float, float] = UNBOUNDED, resolution: float = RESOLUTION) -> Comparison:
    """THE comparison rule of the course: paired over seeds, a 95% interval inside the metric's range, no verdict
    below 3 seeds, "clearly" only beyond the resolution (see the module docstring).

    Args:
        ours, reference: one number per seed, as {seed: value} (paired on the shared seeds) or as two sequences
            of equal length in the same seed order. NaN marks a missing value and drops that seed; an infinite
            value is refused, naming the argument and the seed.
        bounds: the range of a difference ours - reference, e.g. FRACTION_DIFFERENCE ([-1, 1]) for two accuracies;
            the interval never leaves it, and a difference outside it is refused.
        resolution: the mean difference (in the values' units, >= 0) that "clearly" must exceed; default 0.005,
            half a percentage point of a fraction.

    Returns:
        A Comparison.
    """
    if isinstance(ours, Mapping) != isinstance(reference, Mapping):
        raise ValueError("ours and reference must both be {seed: value} mappings or both be sequences")
    bounds = _check_bounds("bounds", bounds)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not 0 <= resolution < math.inf:
        raise ValueError(f"resolution must be a finite number >= 0, got {resolution!r}")
    if isinstance(ours, Mapping):
        seeds: list[Any] = sorted(set(ours) & set(reference))
        a, b = (np.asarray([float(side[s]) for s in seeds], dtype=float) for side in (ours, reference))
    else:
        if len(ours) != len(reference):
            raise ValueError(f"ours and reference must have one value per seed each, got {len(ours)} and {len(reference)}")
        seeds = list(range(len(ours)))
        a, b = np.asarray(ours, dtype=float).reshape(-1), np.asarray(reference, dtype=float).reshape(-1)
    _check_values("ours", a, seeds, UNBOUNDED, allow_nan=True)
    _check_values("reference", b, seeds, UNBOUNDED, allow_nan=True)
    kept = ~(np.isnan(a) | np.isnan(b))  # NaN marks a seed without a value (e.g. a group absent there): left out
    seeds = [s for s, keep in zip(seeds, kept) if keep]
    diffs = a[kept] - b[kept]
    _check_values("ours - reference", diffs, seeds, bounds, allow_nan=False)
    n = int(diffs.size)
    mean = float(diffs.mean()) if n else math.nan
    low, high = t_interval(diffs, bounds=bounds) if n >= 2 else (math.nan, math.nan)
    # Beyond the resolution, not at it: a difference of exactly one example in 200 (0.505 - 0.5) is 0.005 in real
    # arithmetic and 0.0050000000000000044 in floating point, and must not become "clearly" by rounding.
    beyond = n > 0 and abs(mean) > resolution and not math.isclose(abs(mean), resolution, rel_tol=1e-9, abs_tol=1e-12)
    verdict: Verdict
    if n < MIN_SEEDS:
        verdict = "too few seeds"
    elif low > 0 and beyond:
        verdict = "clearly higher"
    elif high < 0 and beyond:
        verdict = "clearly lower"
    else:
        verdict = "no clear difference"
    return Comparison(tuple(float(d) for d in diffs), mean, low, high, n, int((diffs > 0).sum()), verdict, float(resolution), tuple(seeds))


def _degenerate_words(name: str, competences: Mapping[Any, Competence] | None) -> str:
    # "KD (seed 1: follows the spurious-attribute rule, mean over groups 50.0% against its 50.0%)", or "" when every
    # model of that side is competent (or nothing was checked).
    bad = [(seed, c) for seed, c in (competences or {}).items() if not c.competent]
    if not bad:
        return ""
    parts = [f"seed {seed}: {'follows the ' + c.rule_followed if c.rule_followed else 'not clearly above the ' + c.best_rule}, "
             f"mean over groups {c.mean_over_groups:.1%} against its {c.best_rule_mean:.1%}" for seed, c in bad]
    return f"{name} ({'; '.join(parts)})"


def comparison_sentence(c: Comparison, *, what: str, ours: str, reference: str, scale: float = 100.0, unit: str = " points",
                        ours_competence: Mapping[Any, Competence] | None = None,
                        reference_competence: Mapping[Any, Competence] | None = None) -> str:
    """The one sentence printed about a paired comparison; its words come from c.verdict only, unless a model on
    either side is degenerate (then "degenerate model, no verdict", whatever the verdict).

    Args:
        c: the Comparison.
        what: the quantity, e.g. "worst-group accuracy".
        ours, reference: names of the two methods.
        scale: multiply differences before printing (100: fractions as percentage points).
        unit: appended to numbers.
        ours_competence, reference_competence: {seed: kdteach.groups.Competence} of each side's models; None: not
            checked. A model that is not competent in any of its seeds withholds the verdict.

    Returns:
        A sentence such as "DeDiER - KD on worst-group accuracy, seed by seed: +12.0, +9.5, +14.1 points (mean +11.9
        points, 95% interval +6.8 to +17.0, resolution 0.5 points; higher in 3 of 3 seeds): DeDiER is clearly higher
        than KD."
    """
    per_seed = ", ".join(f"{d * scale:+.1f}" for d in c.differences)
    if c.n == 0:
        return f"{ours} - {reference} on {what}: no seed has both, so nothing can be compared."
    head = f"{ours} - {reference} on {what}, seed by seed: {per_seed}{unit}"
    degenerate = [w for w in (_degenerate_words(ours, ours_competence), _degenerate_words(reference, reference_competence)) if w]
    if degenerate:
        return (f"{head}: degenerate model, no verdict: " + " and ".join(degenerate) + " has not learned the task (the competence "
                "gate, kdteach.groups.competence), so the difference says nothing about the methods.")
    if c.verdict == "too few seeds":
        return f"{head}. {c.n} seed(s) cannot decide whether the difference is real (the course's rule needs at least {MIN_SEEDS})."
    resolution = f"{c.resolution * scale:g}{unit}"
    interval = f"mean {c.mean * scale:+.1f}{unit}, 95% interval {c.low * scale:+.1f} to {c.high * scale:+.1f}, resolution {resolution}"
    if c.verdict == "no clear difference" and (c.low > 0 or c.high < 0):
        why = f"the mean difference is within the resolution ({resolution})"
    else:
        why = "the interval includes zero"
    tail = {
        "clearly higher": f"{ours} is clearly higher than {reference}",
        "clearly lower": f"{ours} is clearly lower than {reference}",
        "no clear difference": f"{why}: no clear difference between {ours} and {reference}",
    }[c.verdict]
    return f"{head} ({interval}; higher in {c.n_higher} of {c.n} seeds): {tail}."


def paired_findings(values: Mapping[str, Mapping[Any, float]], pairs: Sequence[tuple[str, str]], *, what: str,
                    names: Mapping[str, str] | None = None, bounds: tuple[float, float] = UNBOUNDED, resolution: float = RESOLUTION,
                    competences: Mapping[str, Mapping[Any, Competence]] | None = None) -> list[str]:
    """One comparison_sentence per (ours, reference) pair whose two members are in values, paired over seeds.

    Args:
        values: name -> {seed: value}.
        pairs: (ours, reference) names, in the order to print.
        what: the quantity, e.g. "test worst-group accuracy".
        names: display names (default: the names themselves).
        bounds, resolution: paired_comparison's (the range of a difference; the smallest "clear" one).
        competences: name -> {seed: Competence}, to withhold verdicts on degenerate models (None: not checked).

    Returns:
        The sentences.
    """
    names, competences = names or {}, competences or {}
    return [comparison_sentence(paired_comparison(values[a], values[b], bounds=bounds, resolution=resolution), what=what,
                                ours=names.get(a, a), reference=names.get(b, b), ours_competence=competences.get(a),
                                reference_competence=competences.get(b))
            for a, b in pairs if a in values and b in values]


def per_seed(rows: Sequence[Mapping[str, Any]], name: str, metric: str, *, key: str = "model") -> dict[Any, float]:
    """{seed: value} of one method's metric from table rows, to feed paired_comparison (a NaN value, a seed without
    the metric, is left out).

    Args:
        rows: one row per (method, seed), with "seed", key and metric.
        name: the value of rows' key column to pick.
        metric: the column.
        key: the column naming the method.

    Returns:
        {seed: float(metric)} for that method.
    """
    return {row["seed"]: float(row[metric]) for row in rows if row[key] == name and not math.isnan(float(row[metric]))}


def paired_differences(rows: Sequence[Mapping[str, Any]], model: str, reference: str, metric: str, *, key: str = "model") -> list[float]:
    """Per-seed differences model - reference in points (x100), over the seeds where both have a finite value."""
    c = paired_comparison(per_seed(rows, model, metric, key=key), per_seed(rows, reference, metric, key=key))
    return [100 * d for d in c.differences]


def smoke_note(mode: str) -> str:
    """The line printed beside every smoke-mode result: its numbers are not evidence."""
    return "(smoke mode: tiny data and few epochs; these numbers show the code runs, not the effect)" if mode == "smoke" else ""
