"""Notebook 04's sentences and tables (kdteach.experiments.text's text_*) on constructed results: the verdicts come from the
one comparison rule, and no sentence says "clearly" unless the paired interval excludes zero."""
import math

import pytest

from kdteach.experiments import text
from kdteach.experiments.text import ModelScores, ReadoutGroup, TextResult, WeightShares
from kdteach.groups import GroupMetrics

GROUPS = ("minority", "majority")


def _metrics(worst: float, average: float) -> GroupMetrics:
    return GroupMetrics(per_group=(worst, 1.0), counts=(10, 90), group_names=GROUPS, worst_group=worst, worst_group_index=0,
                        mean_over_groups=(worst + 1.0) / 2, average_test=average, average_train_weighted=math.nan)


def _result(kd_worst, dedier_worst, *, teacher_worst=0.9) -> TextResult:
    models = [ModelScores("teacher", 0, _metrics(teacher_worst, 0.95), 3, (0.5, teacher_worst))]
    for seed, (k, d) in enumerate(zip(kd_worst, dedier_worst)):
        models += [ModelScores("KD", seed, _metrics(k, 0.9), 1, (k,)), ModelScores("DeDiER", seed, _metrics(d, 0.9), 1, (d,))]
    readout = (ReadoutGroup("minority", 10, 0.2, 0.4, 0.5, 0.8, 10.0, 0.6), ReadoutGroup("majority", 90, 0.99, 0.9, 0.1, 0.01, 1.2, 0.4))
    return TextResult("standin", tuple(models), "layer1", readout, (0,))


def test_the_standins_five_seeds_straddle_zero():
    # README's stand-in: DeDiER - KD on the worst group, +93.3, +75.3, +24.7, -4.8, -1.6 points. Mean +37.4, but the
    # paired 95% interval (t with 4 degrees of freedom) runs from about -18 to +93: no clear difference.
    kd = [0.05, 0.20, 0.50, 0.80, 0.90]
    differences = [0.933, 0.753, 0.247, -0.048, -0.016]
    result = _result(kd, [k + d for k, d in zip(kd, differences)])
    c = text.text_dedier_vs_kd(result)
    assert c.n == 5 and c.n_higher == 3 and c.mean == pytest.approx(0.3738)
    assert c.low < 0 < c.high and c.verdict == "no clear difference"
    sentences = text.text_sentences(result)
    assert not any("clearly" in line for line in sentences)


def test_a_difference_every_seed_agrees_on_is_clear():
    result = _result([0.5, 0.52, 0.48, 0.51, 0.49], [0.7, 0.73, 0.69, 0.70, 0.72])
    assert text.text_dedier_vs_kd(result).verdict == "clearly higher"
    assert text.text_dedier_vs_kd(result, "average_test").verdict == "no clear difference"  # 0.9 against 0.9
    assert text.text_kd_vs_teacher(result).verdict == "clearly lower"  # every KD seed is below the teacher's 0.9
    assert any("DeDiER is clearly higher than KD" in line for line in text.text_sentences(result))


@pytest.mark.parametrize("seeds", [1, 2])
def test_one_or_two_seeds_give_no_verdict(seeds):
    result = _result([0.1] * seeds, [0.9] * seeds)
    assert text.text_dedier_vs_kd(result).verdict == "too few seeds"
    assert text.text_kd_vs_teacher(result).verdict == "too few seeds"
    assert not any("clearly" in line for line in text.text_sentences(result, mode="smoke"))


def test_tables_carry_the_numbers():
    result = _result([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])
    summary = {row["model"]: row for row in text.text_summary_rows(result)}
    assert summary["KD student"]["seeds"] == 3 and summary["KD student"]["worst-group"] == "60.0 ± 10.0 (n=3)"
    assert summary["teacher"]["worst-group"] == "90.0 (n=1)"
    rows = text.text_model_rows(result)
    assert len(rows) == 7 and rows[1]["model"] == "KD student" and rows[1]["minority"] == 0.5 and rows[1]["majority"] == 1.0
    lines = text.text_sentences(result)
    assert any("80% of 'minority'" in line and "'majority', 1%" in line for line in lines)  # most and least upweighted


def test_weight_share_sentences_sum_the_conflicting_groups():
    shares = WeightShares(groups=("a", "b", "c"), share_of_examples=(0.05, 0.9, 0.05), alphas=(0.2, 1.0),
                          weight_share=((0.3, 0.5, 0.2), (0.1, 0.8, 0.1)), conflicting=(0, 2))
    first, second = text.text_weight_share_sentences(shares)
    assert "carry 50% of the weight" in first and "carry 20% of the weight" in second and "10% of the examples" in first
    rows = text.text_weight_share_rows(shares)
    assert rows[1] == {"group": "b", "share of examples": 0.9, "weight share (alpha=0.2)": 0.5, "weight share (alpha=1)": 0.8}


def test_conflicting_sentences_name_a_conflicting_group_the_readout_gets_right():
    # Three groups counted as conflicting by the cue; the readout is right on 98% of the second, 0% of the others.
    readout = (ReadoutGroup("a", 900, 1.0, 0.5, math.nan, 0.0, 1.0, 0.2), ReadoutGroup("b", 50, 0.0, 0.6, 0.6, 1.0, 15.0, 0.3),
               ReadoutGroup("c", 48, 0.98, 0.4, 0.06, 0.02, 1.1, 0.01), ReadoutGroup("d", 100, 0.0, 0.5, 0.5, 1.0, 13.0, 0.3))
    result = TextResult("standin", (), "layer1", readout, (1, 2, 3))
    lines = text.text_conflicting_sentences(result)
    assert len(lines) == 4 and lines[1] == "'c' (n=48) counts as conflicting: the readout at layer1 is right on 98% of it and upweights 2%."
    assert lines[-1].startswith("'c': counted as conflicting by the cue, yet the readout is right on at least 90% of each")
    assert "'b'" not in lines[-1] and "'d'" not in lines[-1] and "at most 10% of each" in lines[-1]
    assert len(text.text_conflicting_sentences(result, mostly_right=0.99)) == 3  # 98% < 99%: no group named
