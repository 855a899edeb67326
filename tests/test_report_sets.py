"""The sentences about early exits and prediction sets (kdteach.experiments.exits and .sets): the words follow paired_comparison's verdict (or a
stated threshold), checked on constructed typed results, not on their wording alone."""
from __future__ import annotations

import re

import numpy as np
import pytest

from kdteach import report
from kdteach import sets as S
from kdteach.exits import EarlyExitRun, PolicyPoint
from kdteach.experiments import exits as exit_experiment
from kdteach.experiments import sets as set_experiment
from kdteach.experiments.exits import ExitResult, ExitsResult, ModelResult
from kdteach.experiments.sets import ClassificationResult, ParallelResult, RegressionResult, SplitResult

METHODS = [m for name in [*S.CONFORMAL_METHODS, "Bayes"] for m in (name, f"{name} ∩")] + ["AVCS"]


def model(name: str, seed: int, accuracies: list[float]) -> ModelResult:
    exits = tuple(ExitResult(name, seed, t + 1, f"s{t}", a, 0.05, 1000.0 * (t + 1), 10) for t, a in enumerate(accuracies))
    return ModelResult(name, seed, exits, (PolicyPoint(0.9, accuracies[-1], 2500.0, (0.5, 0.0, 0.5)),))


def exits_result(differences: list[float], spent: float = 2000.0) -> ExitsResult:
    models = []
    for seed, d in enumerate(differences):
        models += [model("plain", seed, [0.80, 0.90, 0.95]), model("distilled", seed, [0.80 + d, 0.90 + d, 0.95 + d])]
    run = EarlyExitRun(0.9, (0.5, 0.0, 0.5), 2000.0, spent, 3000.0, 0.01, 0.02, 3, True)
    return ExitsResult("MNIST", tuple(models), run)


def verdict_words(lines: list[str], name: str = "distilled - plain on exit 1") -> str:
    return next(line for line in lines if line.startswith(name))


@pytest.mark.parametrize("differences, expected", [
    ([0.02], "cannot decide"),
    ([0.02, 0.03], "cannot decide"),
    ([0.02, 0.03, 0.025], "clearly higher"),
    ([-0.02, -0.03, -0.025, -0.02, -0.01], "clearly lower"),
    ([0.02, -0.02, 0.01], "no clear difference"),
])
def test_distilled_vs_plain_is_worded_by_the_paired_verdict(differences, expected):
    line = verdict_words(exit_experiment.exit_sentences(exits_result(differences)))
    assert expected in line
    assert ("clearly" in line) == (expected.startswith("clearly"))


def test_early_exit_sentence_says_whether_spent_matches_ideal():
    assert any("the same: no stage ran twice" in line for line in exit_experiment.exit_sentences(exits_result([0.0])))
    more = exit_experiment.exit_sentences(exits_result([0.0], spent=2600.0))
    assert any("600 MACs were spent beyond it" in line for line in more)
    assert exit_experiment.exit_sentences(exits_result([0.0]), mode="smoke")[-1] == report.smoke_note("smoke")


def metrics(all_exit: float, size: float, returning: float) -> S.SetMetrics:
    return S.SetMetrics((all_exit, all_exit), (size, size), (0.01, 0.01), (1.0, 0.9), (all_exit, all_exit), returning, 0.9)


def classification(avcs_coverage: list[float], size_gap: list[float], u_gap: list[float], feasible: bool = True) -> ClassificationResult:
    splits = []
    for seed, (cov, gap, ugap) in enumerate(zip(avcs_coverage, size_gap, u_gap)):
        per = {m: metrics(0.9, 1.2, 0.0 if m.endswith("∩") else 0.1) for m in METHODS}
        per["RAPS"] = metrics(0.95, 1.2, 0.1 + ugap)
        per["AVCS"] = metrics(cov, 1.2 + gap, 0.0)
        fit = S.AvcsFit((1.5, 1.5), 0.96, 0.955, 0.97 if feasible else 0.93, feasible)
        splits.append(SplitResult(seed, tuple(METHODS), tuple(per[m] for m in METHODS), fit, ((0.1, 0.1),) * 5))
    summaries = tuple(S.summarize_splits(m, [sp.metrics[i] for sp in splits], 0.05) for i, m in enumerate(METHODS))
    parallel = (ParallelResult(1, summaries[-1], 0.01, 0.002),)
    return ClassificationResult("MNIST", 0.05, (0.8, 0.9), tuple(splits), summaries, parallel)


def test_avcs_coverage_is_worded_against_the_stated_target_and_never_holds():
    rng = np.random.default_rng(0)
    above = set_experiment.set_sentences(classification(list(0.96 + 0.005 * rng.standard_normal(20)), [0.1] * 20, [0.0] * 20))
    below = set_experiment.set_sentences(classification(list(0.93 + 0.005 * rng.standard_normal(20)), [0.1] * 20, [0.0] * 20))
    line_above, line_below = (next(l for l in lines if l.startswith("AVCS, threshold")) for lines in (above, below))
    assert "reaching the target 95%" in line_above and "short of the target 95%" in line_below
    assert not any(re.search(r"\bholds?\b", line) for line in above + below)
    assert "100% of single splits fall below" in line_below


def test_method_differences_over_splits_of_one_model_give_means_with_monte_carlo_errors_and_no_verdict():
    # Calibration splits of ONE trained model are n=1 for the seed rule: the sentence states the mean difference over
    # the splits and its Monte Carlo standard error (computed here by hand), and never a verdict.
    rng = np.random.default_rng(1)
    gaps, ugaps = list(0.2 + 0.02 * rng.standard_normal(30)), list(0.05 + 0.01 * rng.standard_normal(30))
    lines = set_experiment.set_sentences(classification([0.96] * 30, gaps, ugaps))
    size = next(l for l in lines if l.startswith("AVCS - per-exit RAPS"))
    d = np.asarray(gaps)  # AVCS's size is 1.2 + gap against RAPS's 1.2
    assert f"{d.mean():+.2f} labels on average over 30 random calibration split(s) of one trained model" in size
    assert f"Monte Carlo standard error {d.std(ddof=1) / np.sqrt(30):.2f} labels" in size
    assert "one sample (n=1)" in size and "no verdict" in size
    returning = next(l for l in lines if l.startswith("RAPS with a fresh u"))
    u = 100 * np.asarray(ugaps)
    assert f"{u.mean():+.2f} points" in returning and f"Monte Carlo standard error {u.std(ddof=1) / np.sqrt(30):.2f} points" in returning
    assert not any("clearly" in line for line in lines)
    one = set_experiment.set_sentences(classification([0.96], [0.3], [0.1]))
    assert "over 1 random calibration split(s) of one trained model (one split, so no standard error" in next(
        l for l in one if l.startswith("AVCS - per-exit RAPS"))


def test_infeasible_avcs_thresholds_are_reported():
    lines = set_experiment.set_sentences(classification([0.93] * 5, [0.1] * 5, [0.0] * 5, feasible=False))
    assert any(line.startswith("In 5 of 5 splits not even the smallest candidate tau") for line in lines)
    assert not any(line.startswith("In ") for line in set_experiment.set_sentences(classification([0.96] * 5, [0.1] * 5, [0.0] * 5)))


def test_regression_sentences_compare_with_the_stated_target():
    good, bad = metrics(0.97, 2.0, 0.0), metrics(0.90, 1.0, 0.3)
    result = RegressionResult(("Bayes", "Bayes ∩", "AVCS"), (good, bad, good), (0.0, 0.0, 0.1), (0.0, 0.0, 0.8))
    lines = set_experiment.regression_sentences(result, alpha=0.05)
    assert "keeps 90.0% of test targets to the last exit (below 95%)" in lines[1]
    assert "97.0% at every exit (not below 95%)" in lines[2]
    assert "empty for 80% of grid points" in lines[3]
    rows = set_experiment.regression_rows(result)
    assert rows[2]["empty, last exit, outside training range"] == 0.8 and rows[1]["covered at every exit"] == 0.9
