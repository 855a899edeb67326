"""comparison_sentence withholds the verdict when a model on either side fails the competence gate
(kdteach.groups.competence): a difference between a model and a shortcut rule says nothing about the methods."""
from __future__ import annotations

from kdteach import report
from kdteach.groups import competence, shortcut_rules

RULES = shortcut_rules(2, 2, class_names=("landbird", "waterbird"))
GOOD = competence((0.9, 0.8, 0.7, 0.95), RULES)
BACKGROUND = competence((1.0, 0.0, 0.0, 1.0), RULES)  # notebook 03's colored_digits students: exactly the colour rule


def test_a_degenerate_model_on_either_side_withholds_the_verdict():
    assert GOOD.competent and not BACKGROUND.competent
    c = report.paired_comparison([0.7, 0.72, 0.71], [0.3, 0.31, 0.29], bounds=report.FRACTION_DIFFERENCE)
    assert c.verdict == "clearly higher"  # the rule alone would say "clearly"
    good = {s: GOOD for s in range(3)}
    kd = {**good, 1: BACKGROUND}
    words = report.comparison_sentence(c, what="worst-group accuracy", ours="DeDiER", reference="KD", ours_competence=good,
                                       reference_competence=kd)
    assert "degenerate model, no verdict" in words and "clearly" not in words
    assert f"KD (seed 1: follows the {BACKGROUND.rule_followed}, mean over groups 50.0% against its 50.0%)" in words
    flipped = report.comparison_sentence(c, what="w", ours="DeDiER", reference="KD", ours_competence=kd)
    assert "DeDiER (seed 1" in flipped and "no verdict" in flipped
    # every model competent (or nothing checked): the rule's own sentence, word for word
    plain = report.comparison_sentence(c, what="worst-group accuracy", ours="DeDiER", reference="KD", ours_competence=good,
                                       reference_competence=good)
    assert plain == report.comparison_sentence(c, what="worst-group accuracy", ours="DeDiER", reference="KD")


def test_paired_findings_pass_each_names_competence_on():
    values = {"DeDiER": dict(enumerate([0.7, 0.72, 0.71])), "KD": dict(enumerate([0.3, 0.31, 0.29])), "ERM": dict(enumerate([0.3, 0.3, 0.3]))}
    kd_bad = {s: BACKGROUND for s in range(3)}
    dedier_kd, dedier_erm = report.paired_findings(values, [("DeDiER", "KD"), ("DeDiER", "ERM")], what="w", bounds=report.FRACTION_DIFFERENCE,
                                                   competences={"KD": kd_bad, "DeDiER": {s: GOOD for s in range(3)}})
    assert "degenerate model, no verdict" in dedier_kd and "seed 0" in dedier_kd and "seed 2" in dedier_kd
    assert "DeDiER is clearly higher than ERM" in dedier_erm  # ERM unchecked, DeDiER competent: the verdict stands
