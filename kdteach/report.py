"""Presentation, in one place: seed summaries, THE comparison rule, tables, result files, and the words.

Every experiment returns typed results (dataclasses of numbers). This module turns them into what a reader sees,
and it is the only place where sentences about results are chosen, so a finding can never contradict its table.

The one rule for "is this difference real" (`paired_comparison`): runs of the same seed share the initialisation
and the batch order, so compare within seeds. The per-seed differences give a mean and a 95% paired-t interval.
- fewer than 3 seeds: no verdict; the numbers are printed and the sentence says they cannot decide;
- the interval excludes zero: "clearly higher" / "clearly lower";
- otherwise: "no clear difference" (the interval straddles zero), whatever the means say.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from scipy import stats

MIN_SEEDS = 3  # no verdict from fewer seeds
CONFIDENCE = 0.95

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


def _t_half_width(std: float, n: int) -> float:
    # Half the width of the 95% t-interval of a mean of n values with sample standard deviation std (n >= 2).
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1) * std / math.sqrt(n))


def mean_interval(values: Sequence[float], *, scale: float = 1.0, digits: int = 1) -> str:
    """Formats values as "mean [low, high] (n=...)" with the 95% t-interval of the mean (the rule's confidence).

    Args:
        values: one number per seed (NaNs left out).
        scale: multiply before printing (100 for percentages).
        digits: decimals.

    Returns:
        The formatted string; one value: "mean (n=1)"; none: "n/a".
    """
    summary = summarize_seeds(values)
    if summary.n < 2:
        return summary.format(scale=scale, digits=digits)
    half = _t_half_width(summary.std, summary.n)
    low, high = (summary.mean - half) * scale, (summary.mean + half) * scale
    return f"{summary.mean * scale:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={summary.n})"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two methods over the same seeds: `ours - reference`, seed by seed.

    Attributes:
        differences: one difference per shared seed, in seed order.
        mean: mean difference (NaN without seeds).
        low, high: the 95% paired-t interval of the mean difference (NaN below 2 seeds).
        n: number of shared seeds.
        n_higher: seeds where ours is higher (difference > 0).
        verdict: the one rule's decision (see the module docstring).
    """

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    n: int
    n_higher: int
    verdict: Verdict


def paired_comparison(ours: Mapping[Any, float] | Sequence[float], reference: Mapping[Any, float] | Sequence[float]) -> Comparison:
    """THE comparison rule of the course: paired over seeds, a 95% paired-t interval, no verdict below 3 seeds.

    Args:
        ours, reference: one number per seed, as {seed: value} (paired on the shared seeds) or as two sequences
            of equal length in the same seed order. NaN values drop that seed.

    Returns:
        A Comparison.
    """
    if isinstance(ours, Mapping) != isinstance(reference, Mapping):
        raise ValueError("ours and reference must both be {seed: value} mappings or both be sequences")
    if isinstance(ours, Mapping):
        seeds = sorted(set(ours) & set(reference))
        pairs = [(float(ours[s]), float(reference[s])) for s in seeds]
    else:
        if len(ours) != len(reference):
            raise ValueError(f"ours and reference must have one value per seed each, got {len(ours)} and {len(reference)}")
        pairs = [(float(a), float(b)) for a, b in zip(ours, reference)]
    diffs = np.asarray([a - b for a, b in pairs if not (math.isnan(a) or math.isnan(b))], dtype=float)
    n = int(diffs.size)
    mean = float(diffs.mean()) if n else math.nan
    low = high = math.nan
    if n >= 2:
        half = _t_half_width(float(diffs.std(ddof=1)), n)
        low, high = mean - half, mean + half
    verdict: Verdict
    if n < MIN_SEEDS:
        verdict = "too few seeds"
    elif low > 0:
        verdict = "clearly higher"
    elif high < 0:
        verdict = "clearly lower"
    else:
        verdict = "no clear difference"
    return Comparison(tuple(float(d) for d in diffs), mean, low, high, n, int((diffs > 0).sum()), verdict)


def comparison_sentence(c: Comparison, *, what: str, ours: str, reference: str, scale: float = 100.0, unit: str = " points") -> str:
    """The one sentence printed about a paired comparison; its words come from c.verdict only.

    Args:
        c: the Comparison.
        what: the quantity, e.g. "worst-group accuracy".
        ours, reference: names of the two methods.
        scale: multiply differences before printing (100: fractions as percentage points).
        unit: appended to numbers.

    Returns:
        A sentence such as "DeDiER - KD on worst-group accuracy: +12.0 points (95% interval +3.1 to +20.9) over 5
        seeds, higher in 5 of 5: DeDiER is clearly higher."
    """
    per_seed = ", ".join(f"{d * scale:+.1f}" for d in c.differences)
    if c.n == 0:
        return f"{ours} - {reference} on {what}: no seed has both, so nothing can be compared."
    head = f"{ours} - {reference} on {what}, seed by seed: {per_seed}{unit}"
    if c.verdict == "too few seeds":
        return f"{head}. {c.n} seed(s) cannot decide whether the difference is real (the course's rule needs at least {MIN_SEEDS})."
    interval = f"mean {c.mean * scale:+.1f}{unit}, 95% interval {c.low * scale:+.1f} to {c.high * scale:+.1f}"
    tail = {
        "clearly higher": f"{ours} is clearly higher than {reference}",
        "clearly lower": f"{ours} is clearly lower than {reference}",
        "no clear difference": f"the interval includes zero: no clear difference between {ours} and {reference}",
    }[c.verdict]
    return f"{head} ({interval}; higher in {c.n_higher} of {c.n} seeds): {tail}."


def smoke_note(mode: str) -> str:
    """The line printed beside every smoke-mode result: its numbers are not evidence."""
    return "(smoke mode: tiny data and few epochs; these numbers show the code runs, not the effect)" if mode == "smoke" else ""


# Tables and files


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]] | Sequence[Any], columns: Sequence[str] | None = None) -> str:
    """Renders rows (dicts or dataclasses) as a Markdown table; floats get 4 significant digits.

    Args:
        rows: one dict (or dataclass) per row.
        columns: column order; default the keys of the first row, then any new keys in order of appearance.

    Returns:
        The table as a string.
    """
    dict_rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]
    if not dict_rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(key for row in dict_rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in dict_rows]
    return "\n".join(lines)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, mappings, sequences, numpy and torch values as plain JSON types (NaN stays a float)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return value.tolist()
    return value


def provenance(*, config: Any, seeds: Sequence[int], wall_seconds: float, device: str) -> dict[str, Any]:
    """The provenance fields every result file carries: commit, date, device, torch, wall_seconds, seeds, config.

    Args:
        config: the experiment's configuration (a dataclass).
        seeds: the seeds run.
        wall_seconds: how long the run took.
        device: the torch device it ran on ("cpu" becomes "N-core CPU", a CUDA device its card's name).

    Returns:
        A JSON-ready dict.
    """
    import os

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))
    elif device == "cpu":
        device = f"{os.cpu_count()}-core CPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "date": time.strftime("%Y-%m-%d"), "device": device, "torch": torch.__version__,
            "wall_seconds": round(float(wall_seconds), 1), "seeds": list(seeds), "config": to_jsonable(config)}


def write_report(out: str | Path, name: str, *, rows: Sequence[Any], meta: Mapping[str, Any],
                 figures: Mapping[str, Any] | None = None, title: str = "", result: Any = None) -> Path:
    """Writes NAME.json (meta, rows and the typed result), NAME.md (the table) and one PNG per figure into out.

    Args:
        out: folder (created).
        name: file stem.
        rows: the table (dicts or dataclasses).
        meta: what produced it (provenance(), mode, ...).
        figures: name -> matplotlib Figure.
        title: a heading for the Markdown file.
        result: the typed result (a dataclass), stored whole under "result".

    Returns:
        The folder written to.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": to_jsonable(meta), "rows": to_jsonable(list(rows))}
    if result is not None:
        payload["result"] = to_jsonable(result)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    header = f"# {title or name}\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "config")
    (out / f"{name}.md").write_text(header + "\n" + markdown_table(rows) + "\n")
    for fig_name, fig in (figures or {}).items():
        fig.savefig(out / f"{fig_name}.png", dpi=100, bbox_inches="tight")
    return out


def per_seed(rows: Sequence[Mapping[str, Any]], name: str, metric: str, *, key: str = "model") -> dict[Any, float]:
    """{seed: value} of one method's metric from table rows, to feed paired_comparison.

    Args:
        rows: one row per (method, seed), with "seed", key and metric.
        name: the value of rows' key column to pick.
        metric: the column.
        key: the column naming the method.

    Returns:
        {seed: float(metric)} for that method.
    """
    return {row["seed"]: float(row[metric]) for row in rows if row[key] == name}


def paired_differences(rows: Sequence[Mapping[str, Any]], model: str, reference: str, metric: str, *, key: str = "model") -> list[float]:
    """Per-seed differences model - reference in points (x100), over the seeds where both have a finite value."""
    c = paired_comparison(per_seed(rows, model, metric, key=key), per_seed(rows, reference, metric, key=key))
    return [100 * d for d in c.differences]


# Notebook 01 (kdteach.experiments.hinton): tables and sentences. Every result there is one seed: the sentences print
# the numbers, and where two numbers are compared they say one seed cannot decide (paired_comparison's verdict).


def hinton_headline_rows(headline: Any) -> list[dict[str, Any]]:
    """The headline's table: each model's test errors beside the paper's (of 10,000).

    Args:
        headline: a hinton.Headline.

    Returns:
        Three rows: model, architecture, test errors, out of, paper (of 10,000).
    """
    h = headline
    models = (("teacher", "784-1200-1200-10, dropout, max-norm, jitter", h.teacher_errors),
              ("student alone", "784-800-800-10, hard labels", h.alone_errors),
              ("distilled student", f"784-800-800-10, T={h.temperature:g}, soft weight {h.soft_weight}", h.distilled_errors))
    return [{"model": name, "architecture": arch, "test errors": errors, "out of": h.test_size, "paper (of 10,000)": paper}
            for (name, arch, errors), paper in zip(models, h.paper_errors)]


def hinton_sweep_rows(sweep: Any) -> list[dict[str, Any]]:
    """The temperature sweep as one row per width: "hidden units" and a "T=..." column of test errors per T."""
    return [{"hidden units": w, **{f"T={t:g}": e for t, e in zip(sweep.temperatures, row)}} for w, row in zip(sweep.widths, sweep.errors)]


def hinton_omitted_rows(omitted: Any) -> list[dict[str, Any]]:
    """The omitted-class table: test errors, and errors on the omitted class, before and after the bias shift."""
    c = omitted.omitted
    return [{"": when, "test errors": total, f"errors on {c}s": on_class, f"test {c}s": omitted.test_count}
            for when, total, on_class in zip(("before", "after"), omitted.errors, omitted.class_errors)]


def hinton_headline_sentences(headline: Any) -> list[str]:
    """The headline in words: the three error counts, and distilled against alone through paired_comparison."""
    h = headline
    c = paired_comparison([h.distilled_errors], [h.alone_errors])
    return [f"Test errors out of {h.test_size}: teacher {h.teacher_errors}, student alone {h.alone_errors}, distilled student "
            f"{h.distilled_errors} (the paper, out of 10,000: {' / '.join(map(str, h.paper_errors))}).",
            comparison_sentence(c, what="test errors", ours="distilled student", reference="student alone", scale=1.0, unit=" errors")]


def hinton_seed_rows(seeds: Any) -> list[dict[str, Any]]:
    """The headline's students at several seeds: one row per seed, then the mean ± std.

    Args:
        seeds: a hinton.SeedErrors.

    Returns:
        Rows: seed, student alone, distilled student, distilled - alone (test errors).
    """
    rows = [{"seed": s, "student alone": a, "distilled student": d, "distilled - alone": d - a}
            for s, a, d in zip(seeds.seeds, seeds.alone_errors, seeds.distilled_errors)]
    diffs = [d - a for a, d in zip(seeds.alone_errors, seeds.distilled_errors)]
    return rows + [{"seed": "mean ± std", "student alone": mean_std(seeds.alone_errors), "distilled student": mean_std(seeds.distilled_errors),
                    "distilled - alone": mean_std(diffs)}]


def hinton_seed_sentences(seeds: Any) -> list[str]:
    """The headline's students over seeds, in words: distilled against alone by paired_comparison."""
    c = paired_comparison(list(seeds.distilled_errors), list(seeds.alone_errors))
    return [f"Over seeds {list(seeds.seeds)} (one teacher): student alone {mean_std(seeds.alone_errors)}, distilled "
            f"{mean_std(seeds.distilled_errors)} test errors out of {seeds.test_size}.",
            comparison_sentence(c, what="test errors", ours="distilled student", reference="student alone", scale=1.0, unit=" errors")]


def hinton_sweep_sentences(sweep: Any) -> list[str]:
    """Per width, the temperature with the fewest test errors; one seed, so it says the ranking is not decided."""
    lines = []
    for width, row in zip(sweep.widths, sweep.errors):
        best = min(range(len(row)), key=row.__getitem__)
        lines.append(f"{width} units per layer: fewest test errors at T={sweep.temperatures[best]:g} ({row[best]} of {sweep.test_size}); "
                     f"errors from {min(row)} to {max(row)} across T. One seed cannot decide which temperature is best.")
    return lines


def hinton_omitted_sentences(omitted: Any) -> list[str]:
    """The omitted-class experiment in numbers: the transfer set, the shift, errors before and after it."""
    o, c = omitted, omitted.omitted
    return [f"Transfer set: {o.transfer_size} digits without a {c}; bias shift chosen on {o.val_size} validation digits: {o.shift:+g}.",
            f"Before the shift: {o.errors[0]} test errors, {o.class_errors[0]} of them on the {o.test_count} test {c}s.",
            f"After the shift: {o.errors[1]} test errors, {o.class_errors[1]} of them on {c}s."]


def hinton_regularizer_sentences(curves: Any) -> list[str]:
    """Hard and soft targets on a few digits: each curve's best test accuracy (and its epoch) and its last."""
    lines = []
    for name, values in (("hard", curves.hard), ("soft", curves.soft)):
        best = max(range(len(values)), key=values.__getitem__)
        lines.append(f"{name} targets on {curves.n_train} digits: best test accuracy {values[best]:.4f} (epoch {best + 1}), "
                     f"final {values[-1]:.4f}.")
    return lines


def hinton_sentences(result: Any) -> list[str]:
    """Every sentence about a hinton.HintonResult, in the notebook's order."""
    return (hinton_headline_sentences(result.headline) + hinton_seed_sentences(result.seeds) + hinton_sweep_sentences(result.sweep)
            + hinton_omitted_sentences(result.omitted) + hinton_regularizer_sentences(result.regularizer))


# Early exits (notebook 05) and prediction sets (notebook 06): the sentences, chosen by paired_comparison's verdict
# or by a plain threshold stated in the sentence.


def exit_sentences(result: Any, *, mode: str = "full", match_points: float = 0.5) -> list[str]:
    """The findings of notebook 05, from an ExitsResult (kdteach.experiments.exits).

    Exit-vs-exit and distilled-vs-plain differences go through paired_comparison over the training seeds; the
    threshold policy is compared with the last exit by a stated margin; the early-exit path's spent MACs are set
    beside the ideal count.

    Args:
        result: the ExitsResult (models: per model and seed, exits with accuracy, ece, macs; policy; early_exit).
        mode: "smoke" adds the smoke-mode note.
        match_points: how close (in accuracy points) the policy must come to the last exit to count as matching it.

    Returns:
        The sentences.
    """
    names = list(dict.fromkeys(m.model for m in result.models))
    by_name = {name: [m for m in result.models if m.model == name] for name in names}
    ref = by_name[names[0]]
    first, exits = ref[0], len(ref[0].exits)
    acc0, acc_last, macs = first.exits[0].accuracy, first.exits[-1].accuracy, [e.macs for e in first.exits]
    lines = [f"{names[0]} (seed {first.seed}): exit 1 costs {macs[0] / macs[-1]:.1%} of the last exit's multiply-accumulates "
             f"and is right on {acc0:.1%} of the test digits; the last exit on {acc_last:.1%}."]
    mean_accuracy = [float(np.mean([m.exits[t].accuracy for m in ref])) for t in range(exits)]
    best = int(np.argmax(mean_accuracy))
    if best == exits - 1:
        lines.append(f"The last exit has the highest accuracy ({mean_accuracy[-1]:.1%}, mean over {len(ref)} seed(s)).")
    else:
        c = paired_comparison({m.seed: m.exits[best].accuracy for m in ref}, {m.seed: m.exits[-1].accuracy for m in ref})
        lines.append(comparison_sentence(c, what="test accuracy", ours=f"exit {best + 1}", reference="the last exit"))
    from kdteach.exits import ECE_BINS

    ece = [e.ece for e in first.exits]
    lines.append(f"ECE ({ECE_BINS} equal-width bins) ranges from {min(ece):.1%} to {max(ece):.1%} "
                 f"over exits (worst: exit {int(np.argmax(ece)) + 1}).")
    matching = [p for p in first.policy if p.accuracy >= acc_last - match_points / 100]
    if matching:
        cheapest = min(matching, key=lambda p: p.mean_macs)
        lines.append(f"The confidence-threshold policy at {cheapest.threshold:.2f} is within {match_points:g} points of the last exit "
                     f"({cheapest.accuracy:.1%}) at {cheapest.mean_macs / macs[-1]:.0%} of its compute per example on average.")
    for name in names[1:]:
        other = {m.seed: m for m in by_name[name]}
        for t in range(exits):
            c = paired_comparison({s: m.exits[t].accuracy for s, m in other.items()}, {m.seed: m.exits[t].accuracy for m in ref})
            lines.append(comparison_sentence(c, what=f"exit {t + 1} accuracy", ours=name, reference=names[0]))
    run = result.early_exit
    shares = ", ".join(f"{s:.0%}" for s in run.exit_shares)
    same = math.isclose(run.spent_macs, run.ideal_macs, rel_tol=1e-9)
    lines.append(f"Really stopping at confidence {run.threshold:g} (exits taken: {shares}): {run.spent_macs / 1e3:.1f}k MACs spent per "
                 f"example, {run.spent_macs / run.full_macs:.0%} of the full network; the ideal count for these exits is "
                 f"{run.ideal_macs / 1e3:.1f}k" + (", the same: no stage ran twice." if same else f", so {run.spent_macs - run.ideal_macs:.0f} MACs were spent beyond it.")
                 + (" Its exits and predictions are the simulated policy's." if run.matches_simulated else " Its exits or predictions DIFFER from the simulated policy's."))
    lines.append(f"Wall time here (median of {run.repeats} runs after a warm-up): {run.early_seconds * 1e3:.1f} ms stopping early, "
                 f"{run.full_seconds * 1e3:.1f} ms for one full pass with every exit.")
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])


def set_summary_rows(summaries: Sequence[Any]) -> list[dict[str, Any]]:
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


def per_exit_rows(summaries: Sequence[Any], field: str) -> list[dict[str, Any]]:
    """One row per exit, one column per method, of a per-exit field of MethodSummary ("coverage", "size", ...)."""
    exits = len(getattr(summaries[0], field))
    return [{"exit": t + 1, **{s.method: getattr(s, field)[t] for s in summaries}} for t in range(exits)]


def _splits_sentence(c: Comparison, *, what: str, ours: str, reference: str, scale: float = 100.0, unit: str = " points") -> str:
    # paired_comparison over random calibration splits of ONE trained model: its words come from c.verdict only, and
    # the sentence says what the splits can and cannot show (they share the data, so the interval is optimistic).
    if c.verdict == "too few seeds":
        return f"{ours} - {reference} on {what}: {c.n} split(s) cannot decide whether there is a difference."
    outcome = {"clearly higher": f"{ours} is clearly above {reference}", "clearly lower": f"{ours} is clearly below {reference}",
               "no clear difference": "zero lies inside the interval: no clear difference"}[c.verdict]
    return (f"{ours} - {reference} on {what}: {c.mean * scale:+.2f}{unit} on average over {c.n} random calibration splits of one "
            f"trained model (95% interval {c.low * scale:+.2f} to {c.high * scale:+.2f}, above zero in {c.n_higher}): {outcome}.")


def set_sentences(result: Any, *, mode: str = "full") -> list[str]:
    """The findings of notebook 06's classification comparison, from a ClassificationResult (experiments.sets).

    Coverage against the target 1 - alpha is a plain threshold on the mean over splits (stated in the sentence);
    differences between methods go through paired_comparison over the splits.

    Args:
        result: the ClassificationResult (alpha, splits with per-method SetMetrics and AvcsFit, summaries, parallel).
        mode: "smoke" adds the smoke-mode note.

    Returns:
        The sentences.
    """
    target, n = 1 - result.alpha, len(result.splits)
    by = {s.method: s for s in result.summaries}
    index = {m: i for i, m in enumerate(result.splits[0].methods)}

    def per_split(method: str, get: Any) -> dict[int, float]:
        return {sp.seed: float(get(sp.metrics[index[method]])) for sp in result.splits}

    per_exit = [m for m in by if not m.endswith(" ∩") and m != "AVCS"]
    listed = "; ".join(f"{m} {min(by[m].nestedness):.3f} / {by[m].returning:.1%}" for m in per_exit)
    lines = [f"Per-exit sets, smallest N(t) / share of digits with a label that comes back (means over {n} splits): {listed}. "
             "N(t) < 1 means not nested."]
    returning = {m: per_split(m, lambda s: s.returning) for m in ("RAPS", "RAPS shared u", "RAPS no u")}
    lines.append(_splits_sentence(paired_comparison(returning["RAPS"], returning["RAPS shared u"]), what="share of digits with a returning label",
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
    lines.append(_splits_sentence(paired_comparison(sizes["AVCS"], sizes["RAPS"]), what="mean set size over exits (labels; empty sets count 0)",
                                  ours="AVCS", reference="per-exit RAPS", scale=1.0, unit=" labels")
                 + f" Means: AVCS {np.mean(avcs.size):.2f}, RAPS {np.mean(by['RAPS'].size):.2f}, RAPS ∩ {np.mean(by['RAPS ∩'].size):.2f}.")
    empties = ", ".join(f"{m} {np.mean(by[m].empty_rate):.1%}" for m in ("AVCS", "RAPS", "RAPS shared u", "APS", "LAC", "RAPS ∩"))
    lines.append(f"Empty sets (abstentions), mean over exits and splits: {empties}.")
    lines.append("Parallel AVCS (copies intersected, threshold fitted for the intersection): " + "; ".join(
        f"{p.copies} cop{'y' if p.copies == 1 else 'ies'}: covered at every exit {p.summary.all_exit_coverage:.1%}, mean size "
        f"{np.mean(p.summary.size):.2f}, empty {np.mean(p.summary.empty_rate):.1%}, {1e3 * p.fit_seconds:.0f} ms to fit and "
        f"{1e3 * p.eval_seconds:.0f} ms to make the sets per split" for p in result.parallel) + f" (over {result.parallel[0].summary.splits} splits).")
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])


def regression_rows(result: Any) -> list[dict[str, Any]]:
    """One table row per regression method from a RegressionResult (experiments.sets)."""
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


def regression_sentences(result: Any, *, alpha: float, mode: str = "full") -> list[str]:
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


# Notebook 04 (kdteach.experiments.text): tables and sentences. DeDiER against KD, and KD against the teacher, are
# decided by paired_comparison over the student seeds; everything else states numbers.

_TEXT_NAMES = {"teacher": "teacher", "KD": "KD student", "DeDiER": "DeDiER student"}


def _text_models(result: Any) -> list[str]:
    return list(dict.fromkeys(m.model for m in result.models))


def text_summary_rows(result: Any) -> list[dict[str, Any]]:
    """One row per model of a text.TextResult: seeds, and worst-group and average (test) accuracy as mean ± std (%)."""
    rows = []
    for name in _text_models(result):
        scores = list(result.scores(name).values())
        rows.append({"model": _TEXT_NAMES[name], "seeds": len(scores),
                     "worst-group": mean_std([s.worst_group for s in scores], scale=100),
                     "average (test)": mean_std([s.average_test for s in scores], scale=100)})
    return rows


def text_model_rows(result: Any) -> list[dict[str, Any]]:
    """One row per model and seed (accuracies as fractions): worst-group, the averages, each test group, best epoch."""
    return [{"model": _TEXT_NAMES[m.model], "seed": m.seed, "worst-group": m.test.worst_group, "average (test)": m.test.average_test,
             "average (uniform)": m.test.mean_over_groups, **dict(zip(m.test.group_names, m.test.per_group)), "best epoch": m.best_epoch}
            for m in result.models]


def text_dedier_vs_kd(result: Any, metric: str = "worst_group") -> Comparison:
    """DeDiER - KD on a GroupMetrics field (default worst-group accuracy), paired over the student seeds."""
    ours, reference = ({seed: getattr(s, metric) for seed, s in result.scores(name).items()} for name in ("DeDiER", "KD"))
    return paired_comparison(ours, reference)


def text_kd_vs_teacher(result: Any) -> Comparison:
    """KD student - teacher on worst-group accuracy, seed by seed against the one teacher every student learns from."""
    teacher = next(iter(result.scores("teacher").values())).worst_group
    kd = result.scores("KD")
    return paired_comparison({seed: s.worst_group for seed, s in kd.items()}, {seed: teacher for seed in kd})


def text_sentences(result: Any, *, mode: str = "full") -> list[str]:
    """Every sentence printed about a text.TextResult: each model's numbers, the paired comparisons, the readout.

    Args:
        result: the TextResult.
        mode: "smoke" adds the smoke-mode note.

    Returns:
        The sentences.
    """
    lines = [smoke_note(mode)] if mode == "smoke" else []
    for name in _text_models(result):
        scores = list(result.scores(name).values())
        worst, average = (summarize_seeds([getattr(s, f) for s in scores]).mean for f in ("worst_group", "average_test"))
        lines.append(f"{_TEXT_NAMES[name]}: worst-group {100 * worst:.1f}% against {100 * average:.1f}% average (test), "
                     f"mean over {len(scores)} seed(s).")
    if {"KD", "DeDiER"} <= set(_text_models(result)):
        lines.append(comparison_sentence(text_dedier_vs_kd(result), what="worst-group accuracy", ours="DeDiER", reference="KD"))
        lines.append(comparison_sentence(text_dedier_vs_kd(result, "average_test"), what="average (test) accuracy", ours="DeDiER", reference="KD"))
    if {"KD", "teacher"} <= set(_text_models(result)):
        lines.append(comparison_sentence(text_kd_vs_teacher(result), what="worst-group accuracy", ours="KD student", reference="teacher"))
    groups = [g for g in result.readout if not math.isnan(g.upweighted)]
    if groups:
        top, bottom = max(groups, key=lambda g: g.upweighted), min(reversed(groups), key=lambda g: g.upweighted)
        lines.append(f"The readout at {result.readout_stage} of the first KD student upweights {top.upweighted:.0%} of '{top.group}' "
                     f"(n={top.n}), the most of any training group; the least: '{bottom.group}', {bottom.upweighted:.0%}.")
    return lines


def text_conflicting_sentences(result: Any, *, mostly_right: float = 0.9) -> list[str]:
    """What the readout of a text.TextResult does on each group counted as conflicting (the cue points to the wrong
    label there: kdteach.data.text.conflicting_groups, a definition by the cue alone), and which of those groups it
    is right on at least `mostly_right` of: those count in the conflicting weight sums, yet the readout does not pick
    them out (DeDiER can upweight at most 1 - mostly_right of each). One readout of one seed: a description, not a
    comparison."""
    groups = [result.readout[g] for g in result.conflicting]
    lines = [f"'{g.group}' (n={g.n}) counts as conflicting: the readout at {result.readout_stage} is right on {g.accuracy:.0%} "
             f"of it and upweights {g.upweighted:.0%}." for g in groups]
    missed = [g for g in groups if g.accuracy >= mostly_right]
    if missed:
        names = ", ".join(f"'{g.group}'" for g in missed)
        lines.append(f"{names}: counted as conflicting by the cue, yet the readout is right on at least {mostly_right:.0%} of each, "
                     f"so at most {1 - mostly_right:.0%} of each can be upweighted; the conflicting groups' share of the weight "
                     "counts them all the same.")
    return lines


def text_weight_share_rows(shares: Any) -> list[dict[str, Any]]:
    """One row per training group of a text.WeightShares: its share of the examples and of the weight per alpha."""
    return [{"group": name, "share of examples": share, **{f"weight share (alpha={a:g})": by_alpha[g] for a, by_alpha in zip(shares.alphas, shares.weight_share)}}
            for g, (name, share) in enumerate(zip(shares.groups, shares.share_of_examples))]


def text_weight_share_sentences(shares: Any) -> list[str]:
    """Per alpha: how much of the weight the groups where the cue points to the wrong label carry, against their size."""
    examples = sum(shares.share_of_examples[g] for g in shares.conflicting)
    return [f"alpha={a:g}: the groups where the cue points to the wrong label carry {sum(by_alpha[g] for g in shares.conflicting):.0%} "
            f"of the weight; they are {examples:.0%} of the examples." for a, by_alpha in zip(shares.alphas, shares.weight_share)]


# Notebooks 02 and 03 (kdteach.experiments.spurious, .dedier): tables and sentences. A difference between two models
# or settings is decided by paired_comparison over seeds; a single number against a fixed target names the target.


def group_metrics_rows(named: Mapping[str, Any], *, digits: int = 1) -> list[dict[str, Any]]:
    """One table row per name of a {name: GroupMetrics} mapping, in percent: the three averages under their
    conventions' names, the worst group, and each group."""
    return [{"model": name, "average (train-weighted)": f"{100 * m.average_train_weighted:.{digits}f}",
             "average (test)": f"{100 * m.average_test:.{digits}f}", "mean over groups": f"{100 * m.mean_over_groups:.{digits}f}",
             "worst-group": f"{100 * m.worst_group:.{digits}f}", **{g: f"{100 * a:.{digits}f}" for g, a in zip(m.group_names, m.per_group)}}
            for name, m in named.items()]


def paired_findings(values: Mapping[str, Mapping[Any, float]], pairs: Sequence[tuple[str, str]], *, what: str,
                    names: Mapping[str, str] | None = None) -> list[str]:
    """One comparison_sentence per (ours, reference) pair whose two members are in values, paired over seeds.

    Args:
        values: name -> {seed: value}.
        pairs: (ours, reference) names, in the order to print.
        what: the quantity, e.g. "test worst-group accuracy".
        names: display names (default: the names themselves).

    Returns:
        The sentences.
    """
    names = names or {}
    return [comparison_sentence(paired_comparison(values[a], values[b]), what=what, ours=names.get(a, a), reference=names.get(b, b))
            for a, b in pairs if a in values and b in values]


def spurious_findings(result: Any) -> list[str]:
    """Notebook 02's findings from a spurious.SpuriousResult: each distilled student against its teacher and against
    the student trained alone (spurious.PAIRS), on test worst-group accuracy."""
    from kdteach.experiments.spurious import MODEL_NAMES, PAIRS

    values = {key: result.per_seed(key) for key in MODEL_NAMES}
    lines = [smoke_note(result.config.mode)] if result.config.mode == "smoke" else []
    return lines + paired_findings(values, PAIRS, what="test worst-group accuracy", names=MODEL_NAMES)


def probe_findings(probes: Mapping[str, Sequence[Any]], *, threshold: float = 0.9) -> list[str]:
    """Per model, the first stage whose linear probe reaches `threshold` balanced accuracy, for the spurious attribute
    and for the label (StageProbe rows of one seed: a description of that seed, not a comparison)."""
    lines = []
    for name, rows in probes.items():
        parts = []
        for target, words in (("spurious", "the spurious attribute"), ("label", "the label")):
            first = next((r.stage for r in rows if getattr(r, target) >= threshold), None)
            best = max(rows, key=lambda r: getattr(r, target))
            where = f"from {first} on" if first else f"at no stage (best {getattr(best, target):.1%} at {best.stage})"
            parts.append(f"{words} reaches {threshold:.0%} balanced accuracy {where}")
        lines.append(f"{name} (one seed): " + "; ".join(parts) + ".")
    return lines


def dedier_label(result: Any, by: str = "method") -> str:
    """What names a dedier.StudentResult in a table: its method, or its DeDiER setting's "alpha, beta", stage or variant."""
    if by == "method":
        return result.method
    setting = result.setting
    labels = {"alpha, beta": lambda: f"{setting.alpha:g}, {setting.beta:g}", "stage": lambda: setting.stage, "variant": lambda: setting.variant}
    if by not in labels:
        raise ValueError(f"by must be 'method' or one of {tuple(labels)}, got {by!r}")
    return labels[by]()


def dedier_per_seed(results: Sequence[Any], by: str = "method", metric: str = "worst_group") -> dict[str, dict[int, float]]:
    """label -> {seed: a GroupMetrics field} of dedier.StudentResults (students without a test score are left out)."""
    values: dict[str, dict[int, float]] = {}
    for r in results:
        if r.test is not None:
            values.setdefault(dedier_label(r, by), {})[r.seed] = float(getattr(r.test, metric))
    return values


# Where notebook 03's methods read group labels: Group DRO in training; every method, Group DRO included, on validation,
# where the labelled groups pick the epoch kept (common.selection_metrics). "Needs no group labels" means in training.
GROUP_LABELS_IN_TRAINING = ("Group DRO",)


def dedier_group_labels(method: str) -> str:
    """Which group labels a method of notebook 03 uses: "train + val" (Group DRO) or "val (epoch choice)"."""
    return "train + val" if method in GROUP_LABELS_IN_TRAINING else "val (epoch choice)"


def dedier_summary_rows(results: Sequence[Any], *, by: str = "method") -> list[dict[str, Any]]:
    """One row per label (method or setting) of dedier.StudentResults: seeds, the group labels it uses, worst-group,
    mean over groups (the selection metric's convention) and train-weighted average as mean ± std (%), the epochs
    kept, and notes."""
    labels = list(dict.fromkeys(dedier_label(r, by) for r in results))
    rows = []
    for label in labels:
        mine = [r for r in results if dedier_label(r, by) == label]
        scored = [r.test for r in mine if r.test is not None]
        rows.append({"dataset": mine[0].dataset, by: label, "seeds": len(scored), "group labels": dedier_group_labels(mine[0].method),
                     "worst-group": mean_std([t.worst_group for t in scored], scale=100),
                     "mean over groups": mean_std([t.mean_over_groups for t in scored], scale=100),
                     "average (train-weighted)": mean_std([t.average_train_weighted for t in scored], scale=100),
                     "epochs kept": ", ".join(str(r.epoch_kept) if r.epoch_kept else "-" for r in mine),
                     "note": "; ".join(sorted({r.note.split(". ")[0] for r in mine if r.note}))})
    return rows


def dedier_findings(results: Sequence[Any], *, mode: str = "full") -> list[str]:
    """The findings of one dataset's comparison (dedier.compare): DeDiER against KD on worst-group and average accuracy,
    then against every other method on worst-group accuracy, all paired over seeds; seeds where DeDiER and KD score
    exactly alike are named; the methods' notes."""
    lines = [smoke_note(mode)] if mode == "smoke" else []
    worst, average = dedier_per_seed(results), dedier_per_seed(results, metric="average_train_weighted")
    if "DeDiER" in worst and "KD" in worst:
        lines.append(comparison_sentence(paired_comparison(worst["DeDiER"], worst["KD"]), what="test worst-group accuracy", ours="DeDiER", reference="KD"))
        lines.append(comparison_sentence(paired_comparison(average["DeDiER"], average["KD"]), what="test average accuracy (train-weighted)",
                                         ours="DeDiER", reference="KD"))
        by_seed = {(r.method, r.seed): r for r in results if r.method in ("DeDiER", "KD") and r.test is not None}
        same = [s for s in worst["DeDiER"] if ("KD", s) in by_seed and by_seed["DeDiER", s].test == by_seed["KD", s].test]
        if same:
            kept = ", ".join(f"seed {s}: epochs {by_seed['DeDiER', s].epoch_kept} and {by_seed['KD', s].epoch_kept}" for s in same)
            lines.append(f"DeDiER and KD score exactly alike on every test group in {len(same)} seed(s) ({kept} kept): in those seeds "
                         "the comparison cannot tell the two methods apart.")
    lines += paired_findings(worst, [("DeDiER", m) for m in worst if m not in ("DeDiER", "KD")], what="test worst-group accuracy")
    if "Group DRO" in worst:
        lines.append("Group DRO uses the group label of every training example; the other methods use none in training. Every "
                     "method, Group DRO included, uses the validation examples' group labels to choose the epoch it keeps.")
    return lines + [f"{r.method} (seed {r.seed}): {r.note}" for r in results if r.note]


def dedier_ablation_findings(results: Sequence[Any], by: str, *, reference: str) -> list[str]:
    """Every setting of an ablation (dedier.ablation) against the reference setting, on test worst-group accuracy, paired."""
    values = dedier_per_seed(results, by)
    return paired_findings(values, [(label, reference) for label in values if label != reference], what="test worst-group accuracy",
                           names={label: f"DeDiER ({by} {label})" for label in values})


def dedier_readout_findings(diag: Any, *, strong: float = 5.0, some: float = 1.5) -> list[str]:
    """What one readout diagnosis (debias.ReadoutDiagnosis) shows: its accuracy on bias-conflicting against
    bias-aligned examples, and how enriched in the minority groups its most confident errors are (lift over the base
    rate against the stated thresholds). One readout of one seed: a description, not a comparison."""
    lines = []
    for name, (n, accuracy, margin) in (("bias-conflicting", diag.conflicting), ("bias-aligned", diag.aligned)):
        margin_words = "n/a (no errors)" if math.isnan(margin) else f"{margin:.2f}"
        lines.append(f"On the {n} {name} training examples, the readout at {diag.stage} is right on {accuracy:.1%}; "
                     f"the mean margin of its errors there is {margin_words}.")
    flagged = [r for r in diag.retrieval if r["flagged"] > 0]
    if not flagged:
        return lines + ["The readout makes no error at any margin threshold, so there is nothing to upweight."]
    top = max(flagged, key=lambda r: r["margin"])
    words = f"over {strong:g}x: strongly enriched" if top["lift"] > strong else f"over {some:g}x: enriched" if top["lift"] > some else f"at most {some:g}x: hardly enriched"
    return lines + [f"Errors with margin >= {top['margin']:.2f}: precision {top['precision']:.1%} for the minority groups against a base "
                    f"rate of {top['base_rate']:.1%} (lift {top['lift']:.1f}x, {words}), recall {top['recall']:.1%}."]


def dedier_sentences(result: Any, *, mode: str = "full") -> list[str]:
    """Every sentence about a dedier.DeDiERResult, each led by its dataset (and ablation): per dataset the teacher, the
    readout and the comparison; then the ablations (on waterbirds_like)."""
    lines, cfg = [], result.config
    for dataset, results in result.comparisons.items():
        teacher = result.teachers[dataset]
        lines.append(f"{dataset}: the teacher's test worst-group accuracy is {teacher.worst_group:.1%}, its average (train-weighted) "
                     f"{teacher.average_train_weighted:.1%}.")
        lines += [f"{dataset}: {line}" for line in dedier_readout_findings(result.readouts[dataset]) + dedier_findings(results, mode=mode)]
    references = {"alpha, beta": f"{cfg.alpha:g}, {cfg.beta:g}", "stage": cfg.readout_stage, "variant": "as in the paper"}
    for by, results in result.ablations.items():
        lines += [f"waterbirds_like, by {by}: {line}" for line in dedier_ablation_findings(results, by, reference=references[by])]
    return lines



# The capstone (notebook 07): coverage per exit and group, in tables and in sentences chosen by paired_comparison.


def _capstone_value(result: Any, model: str, method: str, metric: str, exit_index: int, group: int | None) -> dict[int, float]:
    # {seed: value} of one model's set metric at one exit, for one group (None: every example). A teacher has one
    # exit, which stands for every exit index.
    values = {}
    for o in result.outcomes:
        if o.model == model:
            sets = o.marginal[method] if group is None else o.by_group[method][group]
            series = getattr(sets, metric)
            values[o.seed] = float(series[min(exit_index, len(series) - 1)])
    return values


def _capstone_reduce(result: Any, model: str, method: str, metric: str, exit_index: int, groups: Sequence[int], how: str) -> dict[int, float]:
    per_group = [_capstone_value(result, model, method, metric, exit_index, g) for g in groups]
    pick = min if how == "min" else (lambda v: sum(v) / len(v))
    return {seed: pick([values[seed] for values in per_group]) for seed in per_group[0]}


def _capstone_models(result: Any) -> list[tuple[str, int]]:
    # (model, exit index) rows: the teacher's one exit, then every exit of each student variant.
    students = list(dict.fromkeys(o.model for o in result.outcomes if o.model != "teacher"))
    return [("teacher", 0)] + [(m, e) for m in students for e in range(len(result.exits))]


def capstone_rows(result: Any, *, method: str, metric: str = "coverage") -> list[dict[str, Any]]:
    """One row per model and exit: a set metric of one method per group, marginal and worst group, as mean [95%
    interval] over seeds (coverage and empty rate in %).

    Args:
        result: a capstone.DatasetResult.
        method: "LAC", "RAPS" or "AVCS".
        metric: "coverage", "size", "empty_rate" or "nestedness".

    Returns:
        Rows: dataset, sets, model, exit, one column per group, "every example", "worst group".
    """
    scale = 100.0 if metric in ("coverage", "empty_rate") else 1.0
    digits = 1 if scale == 100.0 else 3
    rows = []
    for model, e in _capstone_models(result):
        row: dict[str, Any] = {"dataset": result.dataset, "sets": method, "model": model,
                               "exit": "its one exit" if model == "teacher" else f"{e + 1} ({result.exits[e]})"}
        for g, name in enumerate(result.group_names):
            row[name] = mean_interval(list(_capstone_value(result, model, method, metric, e, g).values()), scale=scale, digits=digits)
        row["every example"] = mean_interval(list(_capstone_value(result, model, method, metric, e, None).values()), scale=scale, digits=digits)
        if metric == "coverage":
            worst = _capstone_reduce(result, model, method, metric, e, range(len(result.group_names)), "min")
            row["worst group"] = mean_interval(list(worst.values()), scale=scale, digits=digits)
        rows.append(row)
    return rows


def capstone_accuracy_rows(result: Any) -> list[dict[str, Any]]:
    """One row per model and exit: test accuracy per group and worst group, mean [95% interval] over seeds (%)."""
    rows = []
    for model, e in _capstone_models(result):
        mine = [o for o in result.outcomes if o.model == model]
        if model == "teacher":
            mine = mine[:1]  # the same teacher at every seed: one value
        row: dict[str, Any] = {"dataset": result.dataset, "model": model, "exit": "its one exit" if model == "teacher" else f"{e + 1} ({result.exits[e]})"}
        for g, name in enumerate(result.group_names):
            row[name] = mean_interval([o.accuracy[min(e, len(o.accuracy) - 1)][g] for o in mine], scale=100.0)
        row["worst group"] = mean_interval([min(o.accuracy[min(e, len(o.accuracy) - 1)]) for o in mine], scale=100.0)
        rows.append(row)
    return rows


def capstone_sentences(result: Any, *, alpha: float, mode: str = "full", methods: Sequence[str] = ("AVCS", "LAC")) -> list[str]:
    """The capstone's findings on one dataset, each from paired_comparison over the student seeds.

    Per set method: the KD student's marginal and worst-group coverage at the first and last exit against the target;
    for every student, bias-conflicting against bias-aligned groups at exit 1; the KD student (last exit) against its teacher;
    each DeDiER variant against KD on worst-group coverage (exit 1 and the last) and on the conflicting groups' set
    size at exit 1; then DeDiER against KD on worst-group accuracy at the last exit.

    Args:
        result: a capstone.DatasetResult.
        alpha: the sets' miscoverage (the target is 1 - alpha).
        mode: "smoke" adds the smoke note.
        methods: the set methods to word.

    Returns:
        The sentences.
    """
    r, groups, last = result, range(len(result.group_names)), len(result.exits) - 1
    conflicting = list(r.conflicting)
    aligned = [g for g in groups if g not in r.conflicting]
    students = list(dict.fromkeys(o.model for o in r.outcomes if o.model != "teacher"))
    kd, dedier_variants = students[0], students[1:]
    where = {0: f"exit 1 ({r.exits[0]})", last: f"the last exit ({r.exits[last]})"}
    lines = [f"{r.dataset}: sets at miscoverage {alpha:g} (target coverage {100 * (1 - alpha):.0f}%), calibrated on random splits of "
             f"the test set; bias-conflicting groups: {', '.join(repr(r.group_names[g]) for g in conflicting)}; seeds {list(r.seeds)}."]
    for method in methods:
        for e in (0, last):
            marginal = list(_capstone_value(r, kd, method, "coverage", e, None).values())
            worst = list(_capstone_reduce(r, kd, method, "coverage", e, groups, "min").values())
            lines.append(f"{method}, {kd} student, {where[e]}: coverage (%) of every example {mean_interval(marginal, scale=100.0)}, "
                         f"of its worst group {mean_interval(worst, scale=100.0)}.")
        if method == "AVCS":
            size = [mean_interval(list(_capstone_value(r, kd, method, "size", e, None).values()), digits=2) for e in range(last + 1)]
            accuracy = mean_interval([sum(o.accuracy[0][g] * n for g, n in enumerate(r.test_counts)) / sum(r.test_counts)
                                      for o in r.outcomes if o.model == kd], scale=100.0)
            lines.append(f"AVCS, {kd} student: mean set size per exit {', '.join(size)} labels; its test accuracy at {where[0]} "
                         f"{accuracy}% (a set of at most one label covers only where the prediction is right).")
            share = {m: mean_std([o.avcs_feasible for o in r.outcomes if o.model == m], scale=100.0, digits=0) for m in ["teacher", *students]}
            lines.append("AVCS's threshold rule reached its rank (coverage guaranteed) on this % of calibration splits: "
                         + "; ".join(f"{m} {v}" for m, v in share.items()) + ". Where it does not, no candidate threshold can: the "
                         "sets keep only labels whose logit reaches tau > 0, so a label the model is confidently wrong about (a negative "
                         "logit) is never in them.")
        for model in students:
            c = paired_comparison(_capstone_reduce(r, model, method, "coverage", 0, conflicting, "mean"),
                                  _capstone_reduce(r, model, method, "coverage", 0, aligned, "mean"))
            lines.append(comparison_sentence(c, what=f"{method} coverage at {where[0]} ({model} student)",
                                             ours="the bias-conflicting groups' mean", reference="the bias-aligned groups' mean"))
        c = paired_comparison(_capstone_reduce(r, kd, method, "coverage", last, groups, "min"),
                              _capstone_reduce(r, "teacher", method, "coverage", 0, groups, "min"))
        lines.append(comparison_sentence(c, what=f"{method} worst-group coverage ({where[last]} against the teacher's one exit, same splits)",
                                         ours=f"{kd} student", reference="teacher"))
        for model in dedier_variants:
            for e in (0, last):
                c = paired_comparison(_capstone_reduce(r, model, method, "coverage", e, groups, "min"),
                                      _capstone_reduce(r, kd, method, "coverage", e, groups, "min"))
                lines.append(comparison_sentence(c, what=f"{method} worst-group coverage at {where[e]}", ours=model, reference=kd))
            c = paired_comparison(_capstone_reduce(r, model, method, "size", 0, conflicting, "mean"),
                                  _capstone_reduce(r, kd, method, "size", 0, conflicting, "mean"))
            lines.append(comparison_sentence(c, what=f"{method} set size of the bias-conflicting groups at {where[0]}", ours=model,
                                             reference=kd, scale=1.0, unit=" labels"))
    for model in dedier_variants:
        worst = {m: {o.seed: min(o.accuracy[last]) for o in r.outcomes if o.model == m} for m in (model, kd)}
        lines.append(comparison_sentence(paired_comparison(worst[model], worst[kd]), what=f"worst-group accuracy at {where[last]}",
                                         ours=model, reference=kd))
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])
