"""Scorecards: each paper's claim beside the course's measurement, with the protocol difference and a verdict.

The papers' claims and numbers live once, in kdteach/paper_claims.json, each number with the paper and the table,
figure or section it was read from. The course's side is read from the committed reference results (results/<name>/
through kdteach.results), and every verdict is decided from those numbers by a rule written here, one per claim:

- a difference between two trained models (or a model against a fixed target) goes through THE comparison rule of
  the course, kdteach.report.paired_comparison: paired over seeds (or over calibration splits of one model, where
  the claim is about calibration), a 95% interval, no verdict below 3 seeds;
- two methods on the calibration splits of ONE trained model (AVCS against RAPS in size): one sample for the seed
  rule, so the mean difference is read in its Monte Carlo standard error, "clearly" only beyond 3 of them;
- a property of one trained model (a curve's drop from its best, a bias shift applied to it, a readout's lift)
  is compared with a threshold stated in the rule's docstring and in the measurement text.

About 800 lines, over the package's ~600: one short rule per claim of paper_claims.json, kept in one module so
every verdict's rule is read in one place beside the helpers the rules share (need, _words, the verdict mapping);
split by notebook, each part would be a few rules importing those helpers.

Verdicts: "reproduced" (the course's numbers show the claim), "not reproduced" (they do not, or show the opposite),
"not testable here" (too few seeds, or the course has no run that measures it; the measurement says which). A
result file that lacks a field a rule needs gives "not testable here" naming the field, so a regenerated result
with a new shape never crashes a notebook's scorecard cell.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from kdteach import report, results
from kdteach.experiments.sets_report import monte_carlo_error

Verdict = Literal["reproduced", "not reproduced", "not testable here"]
VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "not testable here")
NOTEBOOKS: tuple[str, ...] = ("01", "02", "03", "04", "05", "06", "07")
CLAIMS_FILE = Path(__file__).resolve().parent / "paper_claims.json"


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as the course tests it.

    Attributes:
        key: the claim's name in paper_claims.json (each has one rule in this module).
        notebook: the notebook whose scorecard shows it ("01" ... "07").
        paper: the citation, e.g. "Hinton, Vinyals & Dean (2015), arXiv:1503.02531".
        claim: the claim in words (no numbers: those are in paper_value).
        paper_value: the paper's numbers as (what, value) pairs, or None when the claim states none.
        source: where in the paper the claim and its numbers are.
        protocol: how the course's setting differs from the paper's.
        tolerance: a threshold the claim's rule uses, stated in the protocol (None: the rule needs none).
    """

    key: str
    notebook: str
    paper: str
    claim: str
    paper_value: tuple[tuple[str, float], ...] | None
    source: str
    protocol: str
    tolerance: float | None = None


@dataclass(frozen=True)
class ScorecardRow:
    """A claim beside the course's measurement (in words, with its numbers and how the verdict was reached)."""

    claim: Claim
    measurement: str
    verdict: Verdict

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def load_claims(path: Path | None = None) -> list[Claim]:
    """Every claim of the data file, with its numbers and sources resolved.

    Args:
        path: the JSON file (default: kdteach/paper_claims.json).

    Returns:
        The claims, in the file's order.
    """
    path = path or CLAIMS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"paper claims file {path} cannot be read ({error})") from None
    papers, numbers = data["papers"], data["numbers"]
    claims = []
    for entry in data["claims"]:
        info = papers[entry["paper"]]
        cite = info["cite"] + (f", arXiv:{info['arxiv']}" if info.get("arxiv") else "")
        values = tuple((numbers[n]["what"], float(numbers[n]["value"])) for n in entry["numbers"])
        # Each number names its own source; those that differ from the claim's are appended to it.
        extra = sorted({f"{papers[numbers[n]['paper']]['cite']}: {numbers[n]['source']}" for n in entry["numbers"]
                        if numbers[n]["paper"] != entry["paper"] or numbers[n]["source"] != entry["source"]})
        claims.append(Claim(entry["key"], entry["notebook"], cite, entry["claim"], values or None,
                            "; ".join([entry["source"], *extra]), entry["protocol"], entry.get("tolerance")))
    return claims


def claims_for(notebook: str, path: Path | None = None) -> list[Claim]:
    """The claims one notebook's scorecard shows.

    Args:
        notebook: "01" ... "07".
        path: the claims file (default: kdteach/paper_claims.json).

    Returns:
        Its claims, in the file's order.
    """
    if notebook not in NOTEBOOKS:
        raise ValueError(f"notebook must be one of {NOTEBOOKS}, got {notebook!r}")
    return [c for c in load_claims(path) if c.notebook == notebook]


# ----------------------------------------------------------------------------------------------------------------
# Reading the results, and the words of a comparison.


class MissingResult(Exception):
    """A rule needs a result (or a field of one) that is not committed: the claim is not testable here."""


class _Results:
    # The committed results a scorecard reads, loaded once per scorecard() call.
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def payload(self, name: str, file: str | None = None) -> dict[str, Any]:
        key = (name, file or name)
        if key not in self._cache:
            if file is None:
                ref = results.load_reference(name, folder=self.folder)
                if ref is None:
                    raise MissingResult(f"no committed result in results/{name}/")
                self._cache[key] = {"meta": ref.meta, "rows": ref.rows, "result": ref.result}
            else:
                path = (self.folder or results.results_dir()) / name / f"{file}.json"
                if not path.exists():
                    raise MissingResult(f"no committed result results/{name}/{file}.json")
                self._cache[key] = json.loads(path.read_text())
        return self._cache[key]

    def result(self, name: str, file: str | None = None) -> Any:
        return need(self.payload(name, file), "result", where=f"results/{name}/{file or name}.json")


def need(value: Any, *path: str | int, where: str) -> Any:
    """value[path[0]][path[1]]..., or MissingResult naming the missing field.

    Args:
        value: a JSON value (dicts and lists).
        path: keys and indices.
        where: the file, for the message.

    Returns:
        The value at the path.
    """
    for i, key in enumerate(path):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            value = None
        if value is None:
            field = ".".join(str(k) for k in path[: i + 1])
            raise MissingResult(f"{where} has no field {field}")
    return value


def _from_comparison(c: report.Comparison, want: str) -> Verdict:
    # THE rule's verdict turned into a scorecard verdict: the claim predicts `want` ("clearly higher", ...).
    if c.verdict == "too few seeds":
        return "not testable here"
    return "reproduced" if c.verdict == want else "not reproduced"


def _words(c: report.Comparison, *, what: str, scale: float = 100.0, unit: str = " points", over: str = "seeds", digits: int = 1) -> str:
    # The comparison in one clause: mean difference, interval, count, and the rule's verdict.
    if c.verdict == "too few seeds":
        return f"{what}: {c.n} {over}; the course's rule gives no verdict below {report.MIN_SEEDS}"
    return (f"{what}: {c.mean * scale:+.{digits}f}{unit} (95% interval {c.low * scale:+.{digits}f} to {c.high * scale:+.{digits}f}, "
            f"{c.n} {over}): {c.verdict}")


def _non_inferior(c: report.Comparison, margin_points: float) -> Verdict:
    # "Without losing": the whole 95% interval of the difference lies above -margin (in points).
    if c.verdict == "too few seeds":
        return "not testable here"
    return "reproduced" if c.low * 100 > -margin_points else "not reproduced"


Rule = Callable[[Claim, _Results], list[tuple[str, Verdict]]]
RULES: dict[str, Rule] = {}


def _rule(key: str) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        RULES[key] = function
        return function
    return register


# ----------------------------------------------------------------------------------------------------------------
# Notebook 01: results/hinton.


def _hinton(data: _Results) -> tuple[dict[str, Any], int]:
    result = data.result("hinton")
    size = need(result, "headline", "test_size", where="results/hinton/hinton.json")
    if size != 10000:
        raise MissingResult(f"results/hinton counts errors of {size} test digits, the paper of 10,000")
    return result, size


@_rule("hinton-distillation-helps")
def _hinton_helps(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Distilled - alone test errors, paired over the student seeds; the claim predicts "clearly lower"."""
    result, _ = _hinton(data)
    seeds = need(result, "seeds", where="results/hinton/hinton.json")
    alone, distilled = need(seeds, "alone_errors", where="results/hinton"), need(seeds, "distilled_errors", where="results/hinton")
    c = report.paired_comparison(list(distilled), list(alone))
    return [(f"Alone {report.mean_std(alone)}, distilled {report.mean_std(distilled)} test errors; "
             + _words(c, what="distilled - alone", scale=1.0, unit=" errors"), _from_comparison(c, "clearly lower"))]


@_rule("hinton-teacher-errors")
def _hinton_teacher(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The teacher's count against the paper's, by the rule (teacher - paper over teacher seeds: "no clear difference")."""
    result, _ = _hinton(data)
    teachers = need(result, "headline", "teacher_errors", where="results/hinton/hinton.json")
    teachers = teachers if isinstance(teachers, list) else [teachers]
    paper = claim.paper_value[0][1] if claim.paper_value else math.nan
    c = report.paired_comparison([float(t) for t in teachers], [paper] * len(teachers))
    return [(f"Teacher {report.mean_std(teachers)} test errors; " + _words(c, what="course - paper", scale=1.0, unit=" errors",
                                                                         over="teacher(s)"), _from_comparison(c, "no clear difference"))]


@_rule("hinton-student-errors")
def _hinton_students(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Each student's count against the paper's over seeds: reproduced only if both show "no clear difference"."""
    result, _ = _hinton(data)
    seeds = need(result, "seeds", where="results/hinton/hinton.json")
    papers = dict(claim.paper_value or ())
    parts, verdicts = [], []
    for field, (what, paper) in zip(("alone_errors", "distilled_errors"), papers.items()):
        values = [float(v) for v in need(seeds, field, where="results/hinton/hinton.json")]
        c = report.paired_comparison(values, [paper] * len(values))
        parts.append(_words(c, what=f"{field.split('_')[0]} {report.mean_std(values)} - paper {paper:g}", scale=1.0, unit=" errors"))
        verdicts.append(_from_comparison(c, "no clear difference"))
    verdict: Verdict = ("not testable here" if "not testable here" in verdicts
                        else "reproduced" if all(v == "reproduced" for v in verdicts) else "not reproduced")
    return [("; ".join(parts), verdict)]


def _sweep_rule(width_test: Callable[[float], bool]) -> Rule:
    def rule(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
        result, _ = _hinton(data)
        sweep = need(result, "sweep", where="results/hinton/hinton.json")
        temperatures = need(sweep, "temperatures", where="results/hinton sweep")
        seeds = len(sweep.get("seeds") or [0])
        rows = []
        for width, errors in zip(need(sweep, "widths", where="results/hinton sweep"), need(sweep, "errors", where="results/hinton sweep")):
            if width_test(width):
                listed = ", ".join(f"T={t:g}: {e}" for t, e in zip(temperatures, errors))
                text = f"{width} units, {seeds} seed(s) per temperature: {listed} test errors"
                # Temperatures are compared between trained students: the rule needs >= 3 seeds per temperature.
                rows.append((text + (f"; the course's rule gives no verdict below {report.MIN_SEEDS} seeds" if seeds < report.MIN_SEEDS else ""),
                             "not testable here"))
        if not rows:
            raise MissingResult("results/hinton's sweep has no student of the claim's width")
        return rows
    return rule


RULES["hinton-large-student-temperature"] = _sweep_rule(lambda width: width >= 300)
RULES["hinton-small-student-temperature"] = _sweep_rule(lambda width: width <= 30)


@_rule("hinton-omitted-three")
def _hinton_omitted(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """One model and a shift applied to it: "most 3s right" = the shift removes more than half the errors on 3s."""
    result, _ = _hinton(data)
    o = need(result, "omitted", where="results/hinton/hinton.json")
    before, after = need(o, "class_errors", where="results/hinton omitted")[:2]
    total = need(o, "errors", where="results/hinton omitted")
    removed = 1 - after / before if before else math.nan
    text = (f"One model, shift {need(o, 'shift', where='results/hinton omitted'):+g} chosen on {o.get('val_size', '?')} validation "
            f"digits: errors on the {o.get('test_count', '?')} test 3s {before} -> {after} ({removed:.0%} removed; the rule: more "
            f"than half), all test errors {total[0]} -> {total[1]}")
    return [(text, "reproduced" if removed > 0.5 else "not reproduced")]


@_rule("hinton-regularizer-soft-beats-hard")
def _hinton_regularizer(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Soft against hard targets is a comparison of two trained models: the rule needs >= 3 seeds of each."""
    result, _ = _hinton(data)
    r = need(result, "regularizer", where="results/hinton/hinton.json")
    hard, soft = need(r, "hard", where="results/hinton regularizer"), need(r, "soft", where="results/hinton regularizer")
    if hard and isinstance(hard[0], list):  # one curve per seed: compare the final accuracies, paired
        c = report.paired_comparison([s[-1] for s in soft], [h[-1] for h in hard])
        return [(f"{r.get('n_train', '?')} training digits; " + _words(c, what="soft - hard, final test accuracy"), _from_comparison(c, "clearly higher"))]
    return [(f"{r.get('n_train', '?')} training digits, one seed: final test accuracy hard {100 * hard[-1]:.1f}%, soft {100 * soft[-1]:.1f}%; "
             f"the course's rule gives no verdict below {report.MIN_SEEDS} seeds", "not testable here")]


@_rule("hinton-regularizer-early-stopping")
def _hinton_early_stopping(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """A property of each curve: overfitting = the last test accuracy at least `tolerance` points below the best.
    Reproduced when the hard-target curve overfits and the soft-target curve does not."""
    result, _ = _hinton(data)
    r = need(result, "regularizer", where="results/hinton/hinton.json")
    margin = claim.tolerance if claim.tolerance is not None else 1.0
    drops = {}
    for name in ("hard", "soft"):
        curve = need(r, name, where="results/hinton regularizer")
        curve = curve[0] if curve and isinstance(curve[0], list) else curve  # the first seed's curve
        drops[name] = 100 * (max(curve) - curve[-1])
    overfits = {name: drop >= margin for name, drop in drops.items()}
    text = (f"Best minus last test accuracy (one curve each): hard targets {drops['hard']:.2f} points, soft {drops['soft']:.2f} "
            f"(overfitting: at least {margin:g} point)")
    return [(text, "reproduced" if overfits["hard"] and not overfits["soft"] else "not reproduced")]


# ----------------------------------------------------------------------------------------------------------------
# Notebook 02: results/spurious.


def _spurious_per_seed(data: _Results, model: str, metric: str) -> dict[int, float]:
    runs = need(data.result("spurious"), "runs", where="results/spurious/spurious.json")
    values = {r["seed"]: float(need(r, "test", metric, where="results/spurious runs")) for r in runs if r.get("model") == model}
    if not values:
        raise MissingResult(f"results/spurious has no runs of {model!r}")
    return values


@_rule("tiwari-student-vs-debiased-teacher")
def _spurious_student(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Student (from the group-balanced teacher) - that teacher, worst-group accuracy, paired: "clearly lower"."""
    c = report.paired_comparison(_spurious_per_seed(data, "student_kd_balanced", "worst_group"),
                                 _spurious_per_seed(data, "teacher_balanced", "worst_group"))
    return [(_words(c, what="student - group-balanced teacher, test worst-group accuracy"), _from_comparison(c, "clearly lower"))]


@_rule("erm-worst-below-average")
def _spurious_erm_gap(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The ERM teacher's worst-group - average (train-weighted) accuracy, paired within seeds: "clearly lower"."""
    c = report.paired_comparison(_spurious_per_seed(data, "teacher_erm", "worst_group"),
                                 _spurious_per_seed(data, "teacher_erm", "average_train_weighted"))
    return [(_words(c, what="ERM teacher, worst-group - average (train-weighted)"), _from_comparison(c, "clearly lower"))]


# ----------------------------------------------------------------------------------------------------------------
# Notebook 03: results/dedier (one row per dataset).


def _dedier_per_seed(runs: Sequence[dict[str, Any]], method: str, metric: str) -> dict[int, float]:
    return {r["seed"]: float(need(r, "test", metric, where="results/dedier comparisons")) for r in runs
            if r.get("method") == method and r.get("test") is not None}


def _dedier_rows(data: _Results, compare: Callable[[str, Sequence[dict[str, Any]]], tuple[str, Verdict]]) -> list[tuple[str, Verdict]]:
    comparisons = need(data.result("dedier"), "comparisons", where="results/dedier/dedier.json")
    rows = []
    for dataset, runs in comparisons.items():
        text, verdict = compare(dataset, runs)
        rows.append((f"{dataset}: {text}", verdict))
    return rows


def _method_rule(ours: str, reference: str, metric: str, want: str) -> Rule:
    def rule(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
        def compare(dataset: str, runs: Sequence[dict[str, Any]]) -> tuple[str, Verdict]:
            c = report.paired_comparison(_dedier_per_seed(runs, ours, metric), _dedier_per_seed(runs, reference, metric))
            return _words(c, what=f"{ours} - {reference}, test {metric.replace('_', '-')} accuracy"), _from_comparison(c, want)
        return _dedier_rows(data, compare)
    rule.__doc__ = f"{ours} - {reference} on test {metric}, paired over seeds per dataset: the claim predicts {want!r}."
    return rule


RULES["dedier-worst-group"] = _method_rule("DeDiER", "KD", "worst_group", "clearly higher")
RULES["jtt-beats-erm"] = _method_rule("JTT", "ERM", "worst_group", "clearly higher")
RULES["groupdro-beats-erm"] = _method_rule("Group DRO", "ERM", "worst_group", "clearly higher")


@_rule("dedier-average")
def _dedier_average(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """DeDiER - KD on average (train-weighted) accuracy, paired: reproduced when the interval lies above -tolerance."""
    margin = claim.tolerance if claim.tolerance is not None else 1.0

    def compare(dataset: str, runs: Sequence[dict[str, Any]]) -> tuple[str, Verdict]:
        c = report.paired_comparison(_dedier_per_seed(runs, "DeDiER", "average_train_weighted"),
                                     _dedier_per_seed(runs, "KD", "average_train_weighted"))
        return _words(c, what="DeDiER - KD, test average (train-weighted) accuracy") + f"; no loss: interval above -{margin:g}", _non_inferior(c, margin)
    return _dedier_rows(data, compare)


def _retrieval(data: _Results, dataset: str) -> list[dict[str, Any]]:
    readouts = need(data.result("dedier"), "readouts", where="results/dedier/dedier.json")
    rows = [r for r in need(readouts, dataset, "retrieval", where="results/dedier readouts") if r.get("flagged", 0) > 0]
    if not rows:
        raise MissingResult(f"results/dedier's readout on {dataset} makes no error at any margin")
    return rows


def _readout_datasets(data: _Results) -> list[str]:
    return list(need(data.result("dedier"), "readouts", where="results/dedier/dedier.json"))


@_rule("dedier-readout-finds-minority")
def _dedier_readout(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """One readout (one seed): the lift of its errors at the highest margin threshold over the minority base rate;
    reproduced above `tolerance` (5x: "strongly enriched" in kdteach.report)."""
    strong = claim.tolerance if claim.tolerance is not None else 5.0
    rows = []
    for dataset in _readout_datasets(data):
        top = max(_retrieval(data, dataset), key=lambda r: r["margin"])
        rows.append((f"{dataset}, one readout: errors with margin >= {top['margin']:.2f} are {100 * top['precision']:.0f}% minority "
                     f"against a base rate of {100 * top['base_rate']:.1f}% (lift {top['lift']:.1f}x; the rule: above {strong:g}x)",
                     "reproduced" if top["lift"] > strong else "not reproduced"))
    return rows


@_rule("dedier-real-readout-is-noisy")
def _dedier_noisy(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """One readout (one seed): the share of all its errors (margin >= 0) that fall in the minority groups; the claim
    (errors far from minority-only) is reproduced when that share is below `tolerance` (one half)."""
    share = claim.tolerance if claim.tolerance is not None else 0.5
    rows = []
    for dataset in _readout_datasets(data):
        first = min(_retrieval(data, dataset), key=lambda r: r["margin"])
        rows.append((f"{dataset}, one readout: {100 * first['precision']:.0f}% of its {first['flagged']:.0f} training errors fall in "
                     f"the minority groups (the rule: noisy below {100 * share:.0f}%)", "reproduced" if first["precision"] < share else "not reproduced"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Notebook 04: results/text.


def _text_per_seed(data: _Results, model: str, metric: str) -> dict[int, float]:
    models = need(data.result("text"), "models", where="results/text/text.json")
    values = {m["seed"]: float(need(m, "test", metric, where="results/text models")) for m in models if m.get("model") == model}
    if not values:
        raise MissingResult(f"results/text has no {model!r} model")
    return values


def _text_dataset(data: _Results) -> str:
    return str(data.payload("text")["meta"].get("dataset", "?"))


@_rule("tiwari-text-student-vs-teacher")
def _text_student(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """KD student - its one teacher on test worst-group accuracy, seed by seed: "clearly lower"."""
    kd = _text_per_seed(data, "KD", "worst_group")
    teacher = next(iter(_text_per_seed(data, "teacher", "worst_group").values()))
    c = report.paired_comparison(kd, {seed: teacher for seed in kd})
    return [(f"{_text_dataset(data)}: " + _words(c, what="KD student - teacher, test worst-group accuracy"), _from_comparison(c, "clearly lower"))]


@_rule("dedier-text-worst-group")
def _text_dedier(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """DeDiER - KD on test worst-group accuracy, paired over seeds: "clearly higher"."""
    c = report.paired_comparison(_text_per_seed(data, "DeDiER", "worst_group"), _text_per_seed(data, "KD", "worst_group"))
    return [(f"{_text_dataset(data)}: " + _words(c, what="DeDiER - KD, test worst-group accuracy"), _from_comparison(c, "clearly higher"))]


@_rule("dedier-text-average")
def _text_average(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """DeDiER - KD on average test accuracy, paired: reproduced when the interval lies above -tolerance points."""
    margin = claim.tolerance if claim.tolerance is not None else 1.0
    c = report.paired_comparison(_text_per_seed(data, "DeDiER", "average_test"), _text_per_seed(data, "KD", "average_test"))
    return [(f"{_text_dataset(data)}: " + _words(c, what="DeDiER - KD, average test accuracy") + f"; no loss: interval above -{margin:g}",
             _non_inferior(c, margin))]


# ----------------------------------------------------------------------------------------------------------------
# Notebook 05: results/exits.


def _exit_accuracy(data: _Results) -> dict[str, dict[int, list[float]]]:
    # model name -> seed -> accuracy per exit
    models = need(data.result("exits"), "models", where="results/exits/exits.json")
    table: dict[str, dict[int, list[float]]] = {}
    for m in models:
        exits = need(m, "exits", where="results/exits models")
        table.setdefault(m["model"], {})[m["seed"]] = [float(need(e, "accuracy", where="results/exits models")) for e in exits]
    return table


def _plain_and_distilled(table: dict[str, dict[int, list[float]]]) -> tuple[str, str | None]:
    distilled = [name for name in table if "distill" in name]
    plain = [name for name in table if name not in distilled]
    if not plain:
        raise MissingResult("results/exits has no model trained without exit distillation")
    return plain[0], (distilled[0] if distilled else None)


@_rule("phuong-exit-distillation")
def _exits_distillation(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Per exit, distilled - plain accuracy paired over seeds. Reproduced when some exit before the last is clearly
    higher and no exit is clearly lower."""
    table = _exit_accuracy(data)
    plain, distilled = _plain_and_distilled(table)
    if distilled is None:
        raise MissingResult("results/exits has no model trained with exit distillation")
    exits = len(next(iter(table[plain].values())))
    comparisons = [report.paired_comparison({s: a[t] for s, a in table[distilled].items()}, {s: a[t] for s, a in table[plain].items()})
                   for t in range(exits)]
    if any(c.verdict == "too few seeds" for c in comparisons):
        return [(_words(comparisons[0], what="exit 1"), "not testable here")]
    text = "; ".join(_words(c, what=f"exit {t + 1}") for t, c in enumerate(comparisons))
    early_up = any(c.verdict == "clearly higher" for c in comparisons[:-1])
    any_down = any(c.verdict == "clearly lower" for c in comparisons)
    return [(f"{distilled} - {plain}, test accuracy: {text}", "reproduced" if early_up and not any_down else "not reproduced")]


@_rule("kaya-overthinking")
def _exits_overthinking(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The plain model's most accurate earlier exit against its last exit, paired over seeds: an earlier exit clearly
    more accurate shows that some digits right early turn wrong by the end (reproduced). Otherwise accuracies per exit
    cannot decide: overthinking on single digits needs per-digit predictions (not testable here)."""
    table = _exit_accuracy(data)
    plain, _ = _plain_and_distilled(table)
    runs = table[plain]
    exits = len(next(iter(runs.values())))
    means = [float(np.mean([a[t] for a in runs.values()])) for t in range(exits - 1)]
    best = int(np.argmax(means)) if means else 0
    c = report.paired_comparison({s: a[best] for s, a in runs.items()}, {s: a[-1] for s, a in runs.items()})
    text = _words(c, what=f"{plain}, exit {best + 1} - last exit, test accuracy") + "; the share of errors it explains is not measured"
    return [(text, "reproduced" if c.verdict == "clearly higher" else "not testable here")]


# ----------------------------------------------------------------------------------------------------------------
# Notebook 06: results/sets (calibration splits of one trained model: paired over splits).


def _split_metric(data: _Results, method: str, get: Callable[[dict[str, Any]], float]) -> dict[int, float]:
    result = data.result("sets")
    values = {}
    for split in need(result, "splits", where="results/sets/sets.json"):
        methods = need(split, "methods", where="results/sets splits")
        if method not in methods:
            raise MissingResult(f"results/sets has no method {method!r}")
        values[split["seed"]] = float(get(need(split, "metrics", methods.index(method), where="results/sets splits")))
    return values


def _sets_target(data: _Results) -> float:
    return 1.0 - float(need(data.result("sets"), "alpha", where="results/sets/sets.json"))


def _against(values: dict[int, float], target: float) -> report.Comparison:
    return report.paired_comparison(values, {seed: target for seed in values})


def _mc(values: dict[int, float]) -> str:
    # The mean over splits with its Monte Carlo standard error (std / sqrt(splits)).
    array = np.asarray(list(values.values()))
    se = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else math.nan
    return f"{100 * array.mean():.1f}% ± {100 * se:.2f} (Monte Carlo s.e., {array.size} splits)"


@_rule("jazbec-avcs-coverage")
def _sets_avcs_coverage(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """AVCS coverage at every exit, per split, against 1 - alpha, paired over splits: reproduced unless clearly lower."""
    target = _sets_target(data)
    values = _split_metric(data, "AVCS", lambda m: need(m, "all_exit_coverage", where="results/sets")[-1])
    c = _against(values, target)
    return [(f"Covered at every exit {_mc(values)}; " + _words(c, what=f"against {target:.0%}", over="calibration splits"),
             "not testable here" if c.verdict == "too few seeds" else "not reproduced" if c.verdict == "clearly lower" else "reproduced")]


@_rule("jazbec-intersection-loses-coverage")
def _sets_intersection(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """RAPS ∩ coverage at the last exit (= at every exit) against 1 - alpha, paired over splits: "clearly lower"."""
    target = _sets_target(data)
    values = _split_metric(data, "RAPS ∩", lambda m: need(m, "all_exit_coverage", where="results/sets")[-1])
    c = _against(values, target)
    return [(f"RAPS ∩ at the last exit {_mc(values)}; " + _words(c, what=f"against {target:.0%}", over="calibration splits"),
             _from_comparison(c, "clearly lower"))]


@_rule("jazbec-raps-not-nested")
def _sets_raps_nested(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Per-exit RAPS nestedness N(t) at the last exit against 1, paired over splits: "clearly lower"."""
    values = _split_metric(data, "RAPS", lambda m: need(m, "nestedness", where="results/sets")[-1])
    c = _against(values, 1.0)
    return [(f"RAPS N(t) at the last exit {float(np.mean(list(values.values()))):.3f}; "
             + _words(c, what="against 1", scale=1.0, unit="", over="calibration splits", digits=3), _from_comparison(c, "clearly lower"))]


@_rule("jazbec-avcs-nested")
def _sets_avcs_nested(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """A property of every set: the smallest AVCS N(t) over splits and exits equals 1 (within 1e-9)."""
    values = _split_metric(data, "AVCS", lambda m: min(need(m, "nestedness", where="results/sets")))
    smallest = min(values.values())
    return [(f"Smallest AVCS N(t) over {len(values)} splits and every exit: {smallest:.6f}", "reproduced" if smallest >= 1 - 1e-9 else "not reproduced")]


# Two methods on calibration splits of ONE trained model: the splits redraw which examples calibrate, with the same
# logits, so for the seed rule they are one sample (n=1). Their mean difference is read in its Monte Carlo standard
# error instead (how precisely the splits pin down this model's mean), as experiments.sets_report does: "clearly"
# only beyond SPLIT_STANDARD_ERRORS of them, and no verdict from fewer than MIN_SPLITS splits.
SPLIT_STANDARD_ERRORS = 3.0
MIN_SPLITS = 3


@_rule("jazbec-avcs-larger")
def _sets_avcs_larger(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """AVCS - RAPS mean set size over exits, over the calibration splits of one trained model: reproduced when the
    mean difference is more than SPLIT_STANDARD_ERRORS (3) Monte Carlo standard errors above zero; not testable here
    below MIN_SPLITS (3) splits; otherwise not reproduced."""
    def size(m: dict[str, Any]) -> float:
        return float(np.mean(need(m, "size", where="results/sets")))
    avcs, raps = _split_metric(data, "AVCS", size), _split_metric(data, "RAPS", size)
    shared = sorted(set(avcs) & set(raps))
    means = (f"Mean size over exits AVCS {np.mean(list(avcs.values())):.2f}, RAPS {np.mean(list(raps.values())):.2f} "
             f"({np.mean(list(avcs.values())) / np.mean(list(raps.values())):.2f}x); AVCS - RAPS")
    if len(shared) < MIN_SPLITS:
        return [(f"{means}: {len(shared)} calibration splits; no verdict below {MIN_SPLITS}", "not testable here")]
    mean, error = monte_carlo_error([avcs[s] - raps[s] for s in shared])
    # Zero spread (every split the same difference): any non-zero mean is beyond any number of standard errors.
    beyond = mean != 0 and abs(mean) > SPLIT_STANDARD_ERRORS * error
    verdict = "no clear difference" if not beyond else "clearly higher" if mean > 0 else "clearly lower"
    distance = f"{mean / error:+.1f}" if error > 0 else ("+inf" if mean > 0 else "-inf" if mean < 0 else "0")
    return [(f"{means}: {mean:+.2f} labels, Monte Carlo s.e. {error:.3f} over {len(shared)} calibration splits of one trained "
             f"model (n=1 for the seed rule), {distance} s.e. from zero (clearly beyond {SPLIT_STANDARD_ERRORS:g}): {verdict}",
             "reproduced" if verdict == "clearly higher" else "not reproduced")]


@_rule("jazbec-regression-wiggle")
def _sets_wiggle(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """One trained network and one test set: plain thresholds. Reproduced when AVCS covers at least 1 - alpha at every
    exit with N(t) = 1, and the running intersection of credible intervals covers less than 1 - alpha."""
    payload = data.payload("sets", "regression")
    result = need(payload, "result", where="results/sets/regression.json")
    config = payload.get("meta", {}).get("config", {})
    alpha = float(config.get("sets", {}).get("alpha", need(data.result("sets"), "alpha", where="results/sets/sets.json")))
    metrics = dict(zip(need(result, "methods", where="results/sets/regression.json"), need(result, "metrics", where="results/sets/regression.json")))
    avcs, inter = need(metrics, "AVCS", where="results/sets/regression.json"), need(metrics, "Bayes ∩", where="results/sets/regression.json")
    avcs_cover, inter_cover = avcs["all_exit_coverage"][-1], inter["all_exit_coverage"][-1]
    nested = min(avcs["nestedness"]) >= 1 - 1e-9
    ok = avcs_cover >= 1 - alpha and nested and inter_cover < 1 - alpha
    return [(f"One network, one test set: AVCS covers {avcs_cover:.1%} at every exit (smallest N(t) {min(avcs['nestedness']):.3f}); "
             f"the credible intervals' running intersection {inter_cover:.1%}; target {1 - alpha:.0%}", "reproduced" if ok else "not reproduced")]


@_rule("jazbec-regression-stsb")
def _sets_stsb(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The course runs no text regression; results/sets' regression is the synthetic wiggle (see the claim above)."""
    return [("No STS-B / ALBERT run in the course (notebook 06's regression is the synthetic wiggle)", "not testable here")]


# ----------------------------------------------------------------------------------------------------------------
# Notebook 07: results/capstone (one row per dataset, and per DeDiER variant).


def _capstone(data: _Results) -> tuple[list[dict[str, Any]], float]:
    result = data.result("capstone")
    config = need(result, "config", where="results/capstone/capstone.json")
    # The capstone names its miscoverage level "miscoverage" (alpha is DeDiER's exponent elsewhere); older files said alpha.
    alpha = float(config["miscoverage"] if "miscoverage" in config else need(config, "alpha", where="results/capstone/capstone.json config"))
    return need(result, "datasets", where="results/capstone/capstone.json"), alpha


def _outcomes(dataset: dict[str, Any], model: str) -> list[dict[str, Any]]:
    found = [o for o in need(dataset, "outcomes", where="results/capstone") if o.get("model") == model]
    if not found:
        raise MissingResult(f"results/capstone has no {model!r} outcomes on {dataset.get('dataset')}")
    return found


def _students(dataset: dict[str, Any]) -> tuple[str, list[str]]:
    names = list(dict.fromkeys(o["model"] for o in need(dataset, "outcomes", where="results/capstone") if o.get("model") != "teacher"))
    if not names:
        raise MissingResult("results/capstone has no students")
    kd = "KD" if "KD" in names else names[0]
    return kd, [n for n in names if n != kd]


def _worst_last(outcome: dict[str, Any]) -> float:
    accuracy = need(outcome, "accuracy", where="results/capstone outcomes")
    return float(min(accuracy[-1]))


@_rule("jazbec-avcs-coverage-capstone")
def _capstone_avcs(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The KD student's AVCS coverage at every exit against 1 - alpha, paired over seeds: reproduced unless clearly lower."""
    datasets, alpha = _capstone(data)
    rows = []
    for d in datasets:
        kd, _ = _students(d)
        runs = _outcomes(d, kd)
        values = {o["seed"]: float(need(o, "marginal", "AVCS", "all_exit_coverage", where="results/capstone outcomes")) for o in runs}
        feasible = [float(o.get("avcs_feasible", math.nan)) for o in runs]
        if any(not f >= 1.0 for f in feasible):
            # Where the threshold rule is infeasible AVCS returns the full label set: coverage is 100% by construction.
            rows.append((f"{d.get('dataset')}, {kd} student: AVCS's threshold rule is infeasible on some calibration splits "
                         f"(feasible on {report.mean_std(feasible, scale=100, digits=0)} % of them); there the set is every label, so "
                         "its coverage says nothing about the method: no verdict", "not testable here"))
            continue
        c = _against(values, 1 - alpha)
        rows.append((f"{d.get('dataset')}, {kd} student: covered at every exit (%) {report.mean_std(list(values.values()), scale=100)}, "
                     f"calibration splits where the threshold rule is feasible (%) {report.mean_std(feasible, scale=100, digits=0)}; "
                     + _words(c, what=f"against {1 - alpha:.0%}"),
                     "not testable here" if c.verdict == "too few seeds" else "not reproduced" if c.verdict == "clearly lower" else "reproduced"))
    return rows


@_rule("conformal-marginal-capstone")
def _capstone_lac(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The KD student's LAC coverage of every example, per exit, against 1 - alpha, paired over seeds: reproduced
    when no exit is clearly lower."""
    datasets, alpha = _capstone(data)
    rows = []
    for d in datasets:
        kd, _ = _students(d)
        runs = _outcomes(d, kd)
        series = {o["seed"]: need(o, "marginal", "LAC", "coverage", where="results/capstone outcomes") for o in runs}
        exits = len(next(iter(series.values())))
        comparisons = [_against({s: float(v[t]) for s, v in series.items()}, 1 - alpha) for t in range(exits)]
        if any(c.verdict == "too few seeds" for c in comparisons):
            rows.append((f"{d.get('dataset')}: " + _words(comparisons[0], what="exit 1"), "not testable here"))
            continue
        text = "; ".join(_words(c, what=f"exit {t + 1}") for t, c in enumerate(comparisons))
        rows.append((f"{d.get('dataset')}, {kd} student, LAC coverage - {1 - alpha:.0%}: {text}",
                     "not reproduced" if any(c.verdict == "clearly lower" for c in comparisons) else "reproduced"))
    return rows


@_rule("tiwari-student-vs-teacher-capstone")
def _capstone_student(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """The KD student's worst-group accuracy at its last exit - its teacher's, paired over seeds: "clearly lower"."""
    datasets, _ = _capstone(data)
    rows = []
    for d in datasets:
        kd, _ = _students(d)
        teacher = {o["seed"]: _worst_last(o) for o in _outcomes(d, "teacher")}
        student = {o["seed"]: _worst_last(o) for o in _outcomes(d, kd)}
        c = report.paired_comparison(student, teacher)
        rows.append((f"{d.get('dataset')}: " + _words(c, what=f"{kd} student (last exit) - teacher, worst-group accuracy"), _from_comparison(c, "clearly lower")))
    return rows


@_rule("dedier-worst-group-capstone")
def _capstone_dedier(claim: Claim, data: _Results) -> list[tuple[str, Verdict]]:
    """Each DeDiER variant - KD on worst-group accuracy at the last exit, paired over seeds: "clearly higher"."""
    datasets, _ = _capstone(data)
    rows = []
    for d in datasets:
        kd, variants = _students(d)
        reference = {o["seed"]: _worst_last(o) for o in _outcomes(d, kd)}
        for variant in variants:
            c = report.paired_comparison({o["seed"]: _worst_last(o) for o in _outcomes(d, variant)}, reference)
            rows.append((f"{d.get('dataset')}: " + _words(c, what=f"{variant} - {kd}, worst-group accuracy at the last exit"),
                         _from_comparison(c, "clearly higher")))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The scorecard.


def scorecard(notebook: str, *, folder: Path | None = None, claims_file: Path | None = None) -> list[ScorecardRow]:
    """Every claim of one notebook beside the course's committed measurement, with its verdict.

    Args:
        notebook: "01" ... "07".
        folder: the results folder (default: the checkout's results/).
        claims_file: the claims file (default: kdteach/paper_claims.json).

    Returns:
        One row per claim (claims measured on several datasets or variants give one row each).
    """
    data = _Results(folder)
    rows = []
    for claim in claims_for(notebook, claims_file):
        if claim.key not in RULES:
            raise ValueError(f"claim {claim.key!r} of {claims_file or CLAIMS_FILE} has no rule in kdteach.scorecard")
        try:
            decided = RULES[claim.key](claim, data)
        except MissingResult as missing:
            decided = [(f"{missing}", "not testable here")]
        if not decided:  # e.g. a result with no datasets: the claim still gets its row
            decided = [("the committed results hold nothing this claim can be measured on", "not testable here")]
        rows.extend(ScorecardRow(claim, text, verdict) for text, verdict in decided)
    return rows


def _paper_cell(claim: Claim) -> str:
    numbers = "; ".join(f"{what}: {value:g}" for what, value in claim.paper_value or ())
    return f"{claim.claim} {f'({numbers}) ' if numbers else ''}*{claim.paper}, {claim.source}*"


def scorecard_table(notebook: str, *, folder: Path | None = None, claims_file: Path | None = None) -> str:
    """The scorecard as a Markdown table: the paper's claim and numbers (with source), the course's measurement, the
    protocol difference and the verdict.

    Args:
        notebook: "01" ... "07".
        folder: the results folder (default: the checkout's results/).
        claims_file: the claims file (default: kdteach/paper_claims.json).

    Returns:
        The table.
    """
    rows = [{"the paper says": _paper_cell(r.claim), "the course measured (committed results)": r.measurement,
             "protocol difference": r.claim.protocol, "verdict": f"**{r.verdict}**"}
            for r in scorecard(notebook, folder=folder, claims_file=claims_file)]
    return report.markdown_table(rows)
