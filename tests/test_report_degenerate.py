"""comparison_sentence withholds the verdict when a model on either side fails the competence gate
(kdteach.groups.competence): a difference between a model and a shortcut rule says nothing about the methods.
Notebooks 02 and 03 word it through the same sentence."""
from __future__ import annotations

from kdteach import report
from kdteach.experiments import dedier, spurious
from kdteach.groups import GroupMetrics, competence, shortcut_rules

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


def _metrics(per_group):
    # GroupMetrics of four equal groups (landbird/waterbird on land/water) with these accuracies.
    names = ("landbird on land", "landbird on water", "waterbird on land", "waterbird on water")
    mean = sum(per_group) / len(per_group)
    return GroupMetrics(tuple(per_group), (50, 50, 50, 50), names, min(per_group), per_group.index(min(per_group)), mean, mean, mean)


def test_dedier_and_spurious_word_a_degenerate_model_as_the_report_does():
    # One wording for a degenerate model everywhere: report.comparison_sentence's, fed each side's {seed: Competence}.
    good, background = (0.9, 0.8, 0.7, 0.95), (1.0, 0.0, 0.0, 1.0)

    def student(method, seed, per_group):
        test = _metrics(per_group)
        return dedier.StudentResult("waterbirds_like", method, seed, None, test, 2, 1, 0.5,
                                    competence=competence(test.per_group, RULES))

    results = [student("DeDiER", s, good) for s in range(3)] + [student("KD", s, background if s == 1 else good) for s in range(3)]
    words = dedier.gated_sentence(results, "DeDiER", "KD", what="test worst-group accuracy")
    c = report.paired_comparison({s: 0.7 for s in range(3)}, {0: 0.7, 1: 0.0, 2: 0.7}, bounds=report.FRACTION_DIFFERENCE)
    assert words == report.comparison_sentence(c, what="test worst-group accuracy", ours="DeDiER", reference="KD",
                                               ours_competence={s: GOOD for s in range(3)},
                                               reference_competence={0: GOOD, 1: BACKGROUND, 2: GOOD})
    assert "degenerate model, no verdict" in words and "KD (seed 1: follows the" in words
    findings = dedier.dedier_findings(results)
    assert findings[0].startswith("Competence gate: 5 of 6 students") and "degenerate: KD seed 1." in findings[0]

    runs = [spurious.ModelRun(key, seed, 1, _metrics(background if (key, seed) == ("student_kd_erm", 2) else good))
            for seed in range(3) for key in spurious.MODEL_NAMES]
    result = spurious.SpuriousResult(spurious.FULL_CONFIG, tuple(runs), {}, _metrics(good).group_names, 1.0)
    lines = spurious.spurious_findings(result)
    assert lines[0].startswith("Competence gate: 4 of 5 models") and "student <- teacher (ERM) (seeds [2])" in lines[0]
    by_pair = dict(zip(spurious.PAIRS, lines[1:], strict=True))
    for (ours, reference), line in by_pair.items():
        degenerate = "student_kd_erm" in (ours, reference)
        assert ("degenerate model, no verdict" in line) is degenerate, line
        assert ("student <- teacher (ERM) (seed 2: follows the spurious-attribute rule" in line) is degenerate
    assert "no clear difference" in by_pair["student_kd_balanced", "teacher_balanced"]  # equal numbers, competent: the rule's words
