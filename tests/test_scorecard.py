"""The scorecards (kdteach.scorecard): the claims file is complete and sourced, every claim has a rule, and each
verdict is decided by the numbers: tiny fake results flip it when the measured number changes."""
import json
import re

import pytest

from kdteach import report
from kdteach import scorecard as sc

CLAIMS = json.loads(sc.CLAIMS_FILE.read_text())


def write(folder, name, result, *, file=None, meta=None):
    path = folder / name / f"{file or name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta or {"mode": "full"}, "rows": [], "result": result}))


def verdicts(notebook, folder, key):
    return [r.verdict for r in sc.scorecard(notebook, folder=folder) if r.claim.key == key]


# The claims file


def test_every_claim_has_one_rule_and_every_rule_a_claim():
    keys = [c["key"] for c in CLAIMS["claims"]]
    assert len(keys) == len(set(keys)), "duplicate claim keys"
    assert set(keys) == set(sc.RULES), f"claims without rules: {set(keys) - set(sc.RULES)}; rules without claims: {set(sc.RULES) - set(keys)}"


def test_every_notebook_has_claims_and_every_number_a_paper_and_a_source():
    assert {c["notebook"] for c in CLAIMS["claims"]} == set(sc.NOTEBOOKS)
    used = {n for c in CLAIMS["claims"] for n in c["numbers"]}
    assert used <= set(CLAIMS["numbers"]), f"claims name unknown numbers: {used - set(CLAIMS['numbers'])}"
    assert set(CLAIMS["numbers"]) <= used, f"numbers no claim states: {set(CLAIMS['numbers']) - used}"
    for key, number in CLAIMS["numbers"].items():
        assert number["paper"] in CLAIMS["papers"] and number["source"].strip() and number["what"].strip(), key
        assert isinstance(number["value"], (int, float)), key


def test_dedier_claims_carry_no_numbers_and_claims_no_typed_numbers():
    # DeDiER's tables could not be read: its claims come from the abstract, without numbers. No claim's text types a
    # number either (numbers live once, under "numbers").
    for claim in CLAIMS["claims"]:
        if claim["paper"] == "tiwari2024":
            assert claim["numbers"] == [], claim["key"]
        assert not re.search(r"\d\.\d|\d{2,}", claim["claim"]), f"{claim['key']} types a number into its text"


def test_issue_figures_of_jazbec_cifar10_are_kept_with_their_source():
    numbers = CLAIMS["numbers"]
    expected = {"avcs_coverage_first": 0.957, "avcs_coverage_last": 0.950, "raps_intersection_last": 0.831,
                "avcs_size_first": 1.84, "avcs_size_last": 1.47, "raps_size_first": 1.30, "raps_size_last": 1.12}
    for name, value in expected.items():
        entry = numbers[f"jazbec.cifar10.{name}"]
        assert entry["value"] == value and entry["paper"] == "jazbec_code"
    assert "evaluation split" in CLAIMS["papers"]["jazbec_code"]["title"]  # its thresholds were tuned on it


def test_load_claims_resolves_citations_and_values():
    claim = next(c for c in sc.load_claims() if c.key == "hinton-student-errors")
    assert claim.paper.endswith("arXiv:1503.02531")
    assert [v for _, v in claim.paper_value] == [146.0, 74.0]
    assert next(c for c in sc.load_claims() if c.key == "dedier-worst-group").paper_value is None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="notebook must be one of"):
        sc.claims_for("00")
    claim = sc.load_claims()[0]
    with pytest.raises(ValueError, match="verdict must be one of"):
        sc.ScorecardRow(claim, "x", "maybe")


# Verdicts flip with the numbers (tiny fake results)


def hinton(alone, distilled, hard=None, soft=None, class_errors=(95, 25)):
    return {"headline": {"test_size": 10000, "teacher_errors": 76, "alone_errors": alone[0], "distilled_errors": distilled[0]},
            "seeds": {"test_size": 10000, "seeds": list(range(len(alone))), "alone_errors": alone, "distilled_errors": distilled},
            "sweep": {"test_size": 10000, "widths": [800, 30], "temperatures": [1.0, 4.0], "errors": [[150, 100], [250, 240]]},
            "omitted": {"shift": 1.5, "errors": [180, 120], "class_errors": list(class_errors), "test_count": 1010, "val_size": 500},
            "regularizer": {"n_train": 1800, "hard": hard or [0.5, 0.9, 0.9], "soft": soft or [0.5, 0.95, 0.95]}}


def test_hinton_distillation_verdict_follows_the_paired_rule(tmp_path):
    write(tmp_path, "hinton", hinton([168, 169, 168], [91, 95, 96]))
    assert verdicts("01", tmp_path, "hinton-distillation-helps") == ["reproduced"]
    write(tmp_path, "hinton", hinton([168, 169, 168], [170, 171, 169]))
    assert verdicts("01", tmp_path, "hinton-distillation-helps") == ["not reproduced"]
    write(tmp_path, "hinton", hinton([168, 169], [91, 95]))
    assert verdicts("01", tmp_path, "hinton-distillation-helps") == ["not testable here"]


def test_hinton_counts_are_reproduced_only_when_the_paper_lies_inside_the_interval(tmp_path):
    write(tmp_path, "hinton", hinton([140, 150, 147], [70, 78, 75]))
    assert verdicts("01", tmp_path, "hinton-student-errors") == ["reproduced"]
    write(tmp_path, "hinton", hinton([168, 169, 168], [70, 78, 75]))
    assert verdicts("01", tmp_path, "hinton-student-errors") == ["not reproduced"]
    assert verdicts("01", tmp_path, "hinton-teacher-errors") == ["not testable here"]  # one teacher


def test_hinton_one_model_properties_use_their_stated_thresholds(tmp_path):
    write(tmp_path, "hinton", hinton([1, 2, 3], [1, 2, 3], hard=[0.5, 0.95, 0.90], soft=[0.5, 0.96, 0.96]))
    assert verdicts("01", tmp_path, "hinton-regularizer-early-stopping") == ["reproduced"]  # hard drops 5 points
    write(tmp_path, "hinton", hinton([1, 2, 3], [1, 2, 3], hard=[0.5, 0.95, 0.948], soft=[0.5, 0.96, 0.96]))
    assert verdicts("01", tmp_path, "hinton-regularizer-early-stopping") == ["not reproduced"]  # a plateau
    write(tmp_path, "hinton", hinton([1, 2, 3], [1, 2, 3], class_errors=(100, 60)))
    assert verdicts("01", tmp_path, "hinton-omitted-three") == ["not reproduced"]  # 40% removed: not "most"
    write(tmp_path, "hinton", hinton([1, 2, 3], [1, 2, 3], class_errors=(100, 20)))
    assert verdicts("01", tmp_path, "hinton-omitted-three") == ["reproduced"]
    assert verdicts("01", tmp_path, "hinton-small-student-temperature") == ["not testable here"]  # one seed per T


def spurious(student, teacher):
    def run(model, seed, worst):
        return {"model": model, "seed": seed, "test": {"worst_group": worst, "average_train_weighted": 0.95}}
    return {"runs": [run("student_kd_balanced", s, v) for s, v in enumerate(student)]
            + [run("teacher_balanced", s, v) for s, v in enumerate(teacher)]
            + [run("teacher_erm", s, 0.5 + 0.01 * s) for s in range(len(teacher))]}


def test_spurious_verdict_flips(tmp_path):
    write(tmp_path, "spurious", spurious([0.40, 0.45, 0.50], [0.80, 0.82, 0.85]))
    assert verdicts("02", tmp_path, "tiwari-student-vs-debiased-teacher") == ["reproduced"]
    write(tmp_path, "spurious", spurious([0.86, 0.84, 0.83], [0.80, 0.82, 0.85]))
    assert verdicts("02", tmp_path, "tiwari-student-vs-debiased-teacher") == ["not reproduced"]
    assert verdicts("02", tmp_path, "erm-worst-below-average") == ["reproduced"]


def dedier(dedier_average, kd_average=(0.90, 0.91, 0.92)):
    def run(method, seed, worst, average):
        return {"method": method, "seed": seed, "test": {"worst_group": worst, "average_train_weighted": average}}
    runs = [run("KD", s, 0.3, a) for s, a in enumerate(kd_average)] + [run("DeDiER", s, 0.6 + 0.01 * s, a) for s, a in enumerate(dedier_average)]
    runs += [run("ERM", s, 0.2, 0.9) for s in range(3)]
    return {"comparisons": {"toy": runs}, "readouts": {"toy": {"retrieval": [
        {"margin": 0.0, "flagged": 100, "precision": 0.3, "base_rate": 0.05, "lift": 6.0},
        {"margin": 0.75, "flagged": 20, "precision": 0.2, "base_rate": 0.05, "lift": 4.0}]}}}


def test_dedier_no_loss_needs_the_whole_interval_above_the_margin(tmp_path):
    write(tmp_path, "dedier", dedier((0.901, 0.909, 0.921)))
    assert verdicts("03", tmp_path, "dedier-average") == ["reproduced"]
    assert verdicts("03", tmp_path, "dedier-worst-group") == ["reproduced"]
    write(tmp_path, "dedier", dedier((0.80, 0.85, 0.90)))
    assert verdicts("03", tmp_path, "dedier-average") == ["not reproduced"]
    # JTT and Group DRO are not in this fake result: their rows say so instead of failing.
    rows = [r for r in sc.scorecard("03", folder=tmp_path) if r.claim.key == "jtt-beats-erm"]
    assert rows[0].verdict == "not testable here"


def test_dedier_readout_rules_read_the_retrieval_rows(tmp_path):
    write(tmp_path, "dedier", dedier((0.9, 0.9, 0.9)))
    assert verdicts("03", tmp_path, "dedier-readout-finds-minority") == ["not reproduced"]  # lift 4 at the top margin
    assert verdicts("03", tmp_path, "dedier-real-readout-is-noisy") == ["reproduced"]  # 30% of errors in the minority


def sets(avcs_cover, raps_cover=0.83, alpha=0.05):
    def metrics(cover, nested, size):
        return {"all_exit_coverage": [cover, cover], "nestedness": [1.0, nested], "size": [size, size]}
    splits = [{"seed": s, "methods": ["RAPS", "RAPS ∩", "AVCS"],
               "metrics": [metrics(0.95, 0.85 - 0.01 * s, 1.3), metrics(raps_cover + 0.001 * s, 1.0, 1.2), metrics(avcs_cover + 0.001 * s, 1.0, 1.7)]}
              for s in range(5)]
    return {"alpha": alpha, "splits": splits}


def test_sets_coverage_verdicts_flip_over_calibration_splits(tmp_path):
    write(tmp_path, "sets", sets(0.957))
    assert verdicts("06", tmp_path, "jazbec-avcs-coverage") == ["reproduced"]
    assert verdicts("06", tmp_path, "jazbec-intersection-loses-coverage") == ["reproduced"]
    assert verdicts("06", tmp_path, "jazbec-avcs-nested") == ["reproduced"]
    assert verdicts("06", tmp_path, "jazbec-avcs-larger") == ["reproduced"]
    write(tmp_path, "sets", sets(0.90, raps_cover=0.96))
    assert verdicts("06", tmp_path, "jazbec-avcs-coverage") == ["not reproduced"]
    assert verdicts("06", tmp_path, "jazbec-intersection-loses-coverage") == ["not reproduced"]
    # The regression file is absent from this fake folder: named, not testable.
    row = next(r for r in sc.scorecard("06", folder=tmp_path) if r.claim.key == "jazbec-regression-wiggle")
    assert row.verdict == "not testable here" and "regression.json" in row.measurement



def sizes(avcs, raps):
    # results/sets with AVCS and RAPS mean set sizes given per calibration split (one trained model).
    def metrics(size):
        return {"all_exit_coverage": [0.95, 0.95], "nestedness": [1.0, 1.0], "size": [size, size]}
    return {"alpha": 0.05, "splits": [{"seed": s, "methods": ["RAPS", "AVCS"], "metrics": [metrics(r), metrics(a)]}
                                      for s, (a, r) in enumerate(zip(avcs, raps))]}


def test_avcs_against_raps_is_read_in_monte_carlo_standard_errors_of_one_model(tmp_path):
    # Calibration splits of one trained model are one sample for the seed rule: the mean difference counts in Monte
    # Carlo standard errors, "clearly" beyond 3. These five differences (0, .2, .1, .05, .15; mean 0.1, s.e.
    # 0.0791 / sqrt(5) = 0.0354) lie 2.83 s.e. above zero: the seed rule's t-interval over 5 would call that clearly higher.
    raps = [1.0] * 5
    write(tmp_path, "sets", sizes([1.0, 1.2, 1.1, 1.05, 1.15], raps))
    (row,) = [r for r in sc.scorecard("06", folder=tmp_path) if r.claim.key == "jazbec-avcs-larger"]
    assert row.verdict == "not reproduced" and "+2.8 s.e. from zero" in row.measurement and "Monte Carlo s.e. 0.035" in row.measurement
    assert report.paired_comparison(dict(enumerate([1.0, 1.2, 1.1, 1.05, 1.15])), dict(enumerate(raps))).verdict == "clearly higher"
    write(tmp_path, "sets", sizes([1.0, 1.2, 1.1, 1.09, 1.11], raps))  # mean 0.1, s.e. 0.032: 3.1 s.e.
    (row,) = [r for r in sc.scorecard("06", folder=tmp_path) if r.claim.key == "jazbec-avcs-larger"]
    assert row.verdict == "reproduced" and "+3.1 s.e." in row.measurement and row.measurement.endswith("clearly higher")
    write(tmp_path, "sets", sizes([0.7, 0.71, 0.69], [1.0, 1.0, 1.0]))  # AVCS smaller: clearly lower, not the claim
    assert verdicts("06", tmp_path, "jazbec-avcs-larger") == ["not reproduced"]
    write(tmp_path, "sets", sizes([1.5, 1.6], [1.0, 1.0]))  # two splits: no verdict
    assert verdicts("06", tmp_path, "jazbec-avcs-larger") == ["not testable here"]

def capstone(dedier_worst):
    def outcome(model, seed, worst):
        return {"model": model, "seed": seed, "accuracy": [[0.9, worst]], "avcs_feasible": 1.0,
                "marginal": {"AVCS": {"all_exit_coverage": 0.91}, "LAC": {"coverage": [0.9]}}}
    outcomes = [outcome("teacher", s, 0.8) for s in range(3)] + [outcome("KD", s, 0.3 + 0.01 * s) for s in range(3)]
    outcomes += [outcome("DeDiER", s, w) for s, w in enumerate(dedier_worst)]
    return {"config": {"alpha": 0.1}, "datasets": [{"dataset": "toy", "outcomes": outcomes}]}


def test_capstone_verdicts_flip(tmp_path):
    write(tmp_path, "capstone", capstone([0.6, 0.65, 0.7]))
    assert verdicts("07", tmp_path, "dedier-worst-group-capstone") == ["reproduced"]
    assert verdicts("07", tmp_path, "tiwari-student-vs-teacher-capstone") == ["reproduced"]
    assert verdicts("07", tmp_path, "jazbec-avcs-coverage-capstone") == ["reproduced"]
    write(tmp_path, "capstone", capstone([0.3, 0.29, 0.33]))
    assert verdicts("07", tmp_path, "dedier-worst-group-capstone") == ["not reproduced"]


def test_missing_results_and_fields_are_not_testable_and_named(tmp_path):
    rows = sc.scorecard("05", folder=tmp_path)
    assert rows and all(r.verdict == "not testable here" and "results/exits" in r.measurement for r in rows)
    write(tmp_path, "capstone", {"datasets": []})  # regenerated with another shape: no crash, the field is named
    row = sc.scorecard("07", folder=tmp_path)[0]
    assert row.verdict == "not testable here" and "has no field config" in row.measurement
    write(tmp_path, "capstone", {"config": {"alpha": 0.1}, "datasets": []})  # nothing to measure: still one row per claim
    rows = sc.scorecard("07", folder=tmp_path)
    assert len(rows) == len(sc.claims_for("07")) and {r.verdict for r in rows} == {"not testable here"}


@pytest.mark.parametrize("notebook", sc.NOTEBOOKS)
def test_committed_results_give_a_table_with_every_claim(notebook):
    table = sc.scorecard_table(notebook)
    claims = sc.claims_for(notebook)
    assert all(c.claim in table for c in claims)
    assert table.count("\n") >= len(claims) + 1  # header, rule, one line per row at least
    assert all(v in sc.VERDICTS for v in re.findall(r"\*\*(.+?)\*\*", table))
