"""What every notebook shares in presenting results: seed summaries, THE comparison rule, tables, provenance, files.

Every experiment returns typed results (dataclasses of numbers), and each experiment module
(kdteach.experiments.<name>) holds the tables and sentences about its own results, typed by them. They all choose
their words through this module's one rule, so a finding can never contradict its numbers, and they write their
files through write_report.

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
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from kdteach.groups import GroupMetrics

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
                 figures: Mapping[str, Any] | None = None, title: str = "", result: object | None = None) -> Path:
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


# Shared by notebooks 02, 03 and the capstone: a table of group metrics, and paired sentences over named methods.


def group_metrics_rows(named: Mapping[str, GroupMetrics], *, digits: int = 1) -> list[dict[str, Any]]:
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
