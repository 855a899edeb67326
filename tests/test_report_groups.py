"""The sentences of notebooks 02 and 03 (kdteach.experiments.spurious' findings, .dedier's dedier_*) on constructed
numbers: each comparison's verdict comes from paired_comparison (checked on the verdict, not the wording), single
numbers against stated thresholds, and the tables' means and standard deviations by hand."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

from kdteach import report
from kdteach.experiments import dedier, spurious
from kdteach.experiments.dedier import Setting, StudentResult
from kdteach.experiments.spurious import MODEL_NAMES, PAIRS, StageProbe
from kdteach.groups import GroupMetrics


def metrics(worst: float, average: float = 0.9) -> GroupMetrics:
    # Two groups: the worst one and one at 1.0; the averages as given.
    return GroupMetrics(per_group=(worst, 1.0), counts=(10, 10), group_names=("a", "b"), worst_group=worst, worst_group_index=0,
                        mean_over_groups=(worst + 1) / 2, average_test=average, average_train_weighted=average)


def student(method: str, seed: int, worst: float, average: float = 0.9, *, setting: Setting | None = None, kept: int = 3) -> StudentResult:
    return StudentResult("d", method, seed, setting, metrics(worst, average), kept, 1, 0.5)


def expected_sentence(ours_values: dict, reference_values: dict, **words) -> tuple[str, str]:
    c = report.paired_comparison(ours_values, reference_values, bounds=report.FRACTION_DIFFERENCE)
    return c.verdict, report.comparison_sentence(c, **words)


def test_paired_findings_take_their_verdict_from_the_paired_comparison():
    values = {"s": {0: 0.5, 1: 0.6, 2: 0.7}, "t": {0: 0.6, 1: 0.7, 2: 0.8}, "mixed": {0: 0.7, 1: 0.65, 2: 0.75}}
    lower, higher_or_not = report.paired_findings(values, [("s", "t"), ("mixed", "t"), ("s", "absent")], what="w")
    verdict, sentence = expected_sentence(values["s"], values["t"], what="w", ours="s", reference="t")
    assert verdict == "clearly lower" and lower == sentence  # 10 points lower in every seed: the interval excludes zero
    verdict, sentence = expected_sentence(values["mixed"], values["t"], what="w", ours="mixed", reference="t")
    assert verdict == "no clear difference" and higher_or_not == sentence  # one seed up, two down: straddles zero


@pytest.mark.parametrize("seeds, verdict", [(1, "too few seeds"), (2, "too few seeds"), (3, "clearly higher"), (5, "clearly higher")])
def test_spurious_findings_decide_nothing_below_three_seeds(seeds, verdict):
    runs = tuple(spurious.ModelRun(key, s, 1, metrics(0.5 + 0.1 * (key == "student_kd_erm") + 0.01 * s))
                 for s in range(seeds) for key in MODEL_NAMES)
    result = spurious.SpuriousResult(dataclasses.replace(spurious.FULL_CONFIG, seeds=tuple(range(seeds))), runs, {}, ("a", "b"), 0.0)
    gate, *lines = spurious.spurious_findings(result)
    assert gate.startswith("Competence gate: 5 of 5 models") and len(lines) == len(PAIRS)  # every model above the constants
    c = report.paired_comparison(result.per_seed("student_kd_erm"), result.per_seed("teacher_erm"), bounds=report.FRACTION_DIFFERENCE)
    assert c.verdict == verdict
    assert lines[0] == report.comparison_sentence(c, what="test worst-group accuracy", ours=MODEL_NAMES["student_kd_erm"],
                                                  reference=MODEL_NAMES["teacher_erm"])
    assert "clearly" not in lines[1]  # the balanced student and teacher are equal in every seed
    smoke = dataclasses.replace(result, config=dataclasses.replace(result.config, mode="smoke"))
    assert spurious.spurious_findings(smoke)[0] == report.smoke_note("smoke")


def test_probe_findings_name_the_first_stage_over_the_threshold():
    rows = [StageProbe("stem", 0.55, 0.95), StageProbe("layer1", 0.92, 0.97), StageProbe("layer2", 0.97, 0.8)]
    (line,) = spurious.probe_findings({"m": rows}, threshold=0.9)
    assert "spurious attribute reaches 90% balanced accuracy from stem on" in line
    assert "the label reaches 90% balanced accuracy from layer1 on" in line
    (never,) = spurious.probe_findings({"m": rows}, threshold=0.99)
    assert "at no stage (best 97.0% at layer2)" in never  # the label's best; the spurious attribute's is at layer1


def test_dedier_findings_pair_dedier_with_kd_and_every_baseline():
    results = [student("KD", s, w) for s, w in enumerate((0.50, 0.52, 0.51))]
    results += [student("DeDiER", s, w, 0.88) for s, w in enumerate((0.70, 0.71, 0.69))]
    results += [student("Group DRO", s, w) for s, w in enumerate((0.80, 0.81, 0.79))]
    results += [student("ERM", s, w) for s, w in enumerate((0.60, 0.75, 0.72))]
    lines = dedier.dedier_findings(results)
    worst = dedier.dedier_per_seed(results)
    verdict, sentence = expected_sentence(worst["DeDiER"], worst["KD"], what="test worst-group accuracy", ours="DeDiER", reference="KD")
    assert lines[0].startswith("Competence gate:")  # these constructed students carry no gate verdict (competence None)
    assert verdict == "clearly higher" and lines[1] == sentence
    average = dedier.dedier_per_seed(results, metric="average_train_weighted")
    assert report.paired_comparison(average["DeDiER"], average["KD"]).verdict == "clearly lower"  # 0.88 against 0.9
    by_reference = {line.split(" on ")[0]: line for line in lines}
    assert report.paired_comparison(worst["DeDiER"], worst["Group DRO"]).verdict == "clearly lower"
    assert "DeDiER is clearly lower than Group DRO" in by_reference["DeDiER - Group DRO"]
    assert report.paired_comparison(worst["DeDiER"], worst["ERM"]).verdict == "no clear difference"
    assert "clearly" not in by_reference["DeDiER - ERM"]
    assert any("group label" in line for line in lines)  # Group DRO's advantage is said
    assert not any("exactly alike" in line for line in lines)


def test_dedier_findings_say_when_dedier_and_kd_are_the_same_model():
    results = [student("KD", 0, 0.4, kept=1), student("DeDiER", 0, 0.4, kept=2), student("DeDiER", 1, 0.5), student("KD", 1, 0.45)]
    same = [line for line in dedier.dedier_findings(results) if "exactly alike" in line]
    assert len(same) == 1 and "1 seed(s) (seed 0: epochs 2 and 1" in same[0]
    assert dedier.dedier_findings(results, mode="smoke")[0] == report.smoke_note("smoke")


def test_dedier_ablation_findings_compare_each_setting_with_the_reference():
    results = [student("DeDiER", s, w, setting=Setting(0.05, 4.0, stage)) for stage, ws in (("layer1", (0.6, 0.62, 0.61)), ("layer2", (0.4, 0.41, 0.43)))
               for s, w in enumerate(ws)]
    (line,) = dedier.dedier_ablation_findings(results, "stage", reference="layer1")
    values = dedier.dedier_per_seed(results, "stage")
    verdict, sentence = expected_sentence(values["layer2"], values["layer1"], what="test worst-group accuracy",
                                          ours="DeDiER (stage layer2)", reference="DeDiER (stage layer1)")
    assert verdict == "clearly lower" and line == sentence
    assert dedier.dedier_label(results[0], "alpha, beta") == "0.05, 4"
    with pytest.raises(ValueError, match="by"):
        dedier.dedier_label(results[0], "temperature")


def test_dedier_summary_rows_mean_and_std_by_hand():
    results = [student("KD", 0, 0.5, kept=2), student("KD", 1, 0.7, kept=3), student("KD", 2, 0.6, kept=3),
               StudentResult("d", "JTT", 0, None, None, None, 1, math.nan, note="JTT: the error set is empty. Train less.")]
    kd, jtt = dedier.dedier_summary_rows(results)
    assert kd["worst-group"] == "60.0 ± 10.0 (n=3)" and kd["mean over groups"] == "80.0 ± 5.0 (n=3)"
    assert kd["seeds"] == 3 and kd["epochs kept"] == "2, 3, 3" and kd["note"] == ""
    assert jtt["worst-group"] == "n/a" and jtt["epochs kept"] == "-" and jtt["note"] == "JTT: the error set is empty"


def test_readout_findings_use_the_stated_lift_thresholds():
    def diag(lift):
        retrieval = ({"margin": 0.0, "flagged": 10.0, "precision": 0.2, "recall": 1.0, "base_rate": 0.1, "lift": 2.0},
                     {"margin": 0.5, "flagged": 2.0, "precision": lift / 10, "recall": 0.4, "base_rate": 0.1, "lift": lift})
        return SimpleNamespace(stage="layer1", conflicting=(2, 0.0, 0.8), aligned=(8, 1.0, math.nan), retrieval=retrieval)

    conflicting, aligned, strong = dedier.dedier_readout_findings(diag(6.0))
    assert "On the 2 bias-conflicting training examples, the readout at layer1 is right on 0.0%" in conflicting
    assert "0.80" in conflicting and "n/a (no errors)" in aligned
    assert "strongly enriched" in strong and "margin >= 0.50" in strong  # the highest margin that flags anything
    assert "over 1.5x: enriched" in dedier.dedier_readout_findings(diag(5.0))[2]  # exactly 5 is not "over 5x"
    assert "hardly enriched" in dedier.dedier_readout_findings(diag(1.2))[2]
    nothing = SimpleNamespace(stage="layer1", conflicting=(2, 1.0, math.nan), aligned=(8, 1.0, math.nan),
                              retrieval=({"margin": 0.0, "flagged": 0.0},))
    assert "nothing to upweight" in dedier.dedier_readout_findings(nothing)[2]


def test_group_metrics_rows_name_every_convention():
    (row,) = report.group_metrics_rows({"rule": metrics(0.25, 0.9)})
    assert row == {"model": "rule", "average (train-weighted)": "90.0", "average (test)": "90.0", "mean over groups": "62.5",
                   "worst-group": "25.0", "a": "25.0", "b": "100.0"}


def test_the_method_table_says_which_group_labels_each_method_uses():
    # "Needs no group labels" holds in training only: every method keeps its epoch by validation group accuracy.
    results = [student(m, 0, 0.5) for m in ("ERM", "KD", "JTT", "Group DRO", "SimKD-style", "DeDiER")]
    used = {row["method"]: row["group labels"] for row in dedier.dedier_summary_rows(results)}
    assert used.pop("Group DRO") == "train + val"
    assert set(used.values()) == {"val (epoch choice)"} and len(used) == 5
    (row,) = dedier.dedier_summary_rows([student("DeDiER", 0, 0.5, setting=Setting(0.05, 4.0, "layer2"))], by="stage")
    assert row["stage"] == "layer2" and row["group labels"] == "val (epoch choice)"  # an ablation row is DeDiER too
    lines = dedier.dedier_findings(results)
    assert any("none in training" in line and "validation" in line for line in lines)
