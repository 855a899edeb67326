"""Notebook 07's capstone: group-conditional (Mondrian) conformal against its definition and its promise, AVCS's
full set where its rule is infeasible, the multi-exit KD loss and the exit readout, the ten-class digits, a tiny
end-to-end run (reuse of checkpoints, paired splits with the teacher), and the answers and tables on constructed
numbers (yes / no / the premise failed; no verdict on an infeasible or an unlearned row; intervals in range)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from kdteach import train
from kdteach.debias import EarlyReadout
from kdteach.distill import KDLoss, kd_loss
from kdteach.experiments import capstone, capstone_report, capstone_sets, dedier
from kdteach.sets import MethodSummary, calibration_split, conformal_rank

TINY_DEDIER = dataclasses.replace(dedier.SMOKE_CONFIG, student_width=4, epochs=3, batch_size=32, augment=False)
TINY = dataclasses.replace(capstone.SMOKE_CONFIG, datasets=(capstone.DIGITS,), digits_sizes=(160, 40, 120), teacher_width=4,
                           teacher_epochs=1, splits=2, calib_fraction=0.5, seeds=(0,))

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# Mondrian conformal and AVCS's infeasible rule


def test_mondrian_thresholds_are_each_groups_own_conformal_quantile():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 40, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=generator)
    groups = torch.arange(40) % 3  # group 2 has 13 examples; group 3 none
    thresholds = capstone_sets.mondrian_thresholds(logits, labels, groups, 4, 0.2)
    scores = 1 - torch.softmax(logits, -1).gather(-1, labels.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
    for g in range(3):
        mine = scores[:, groups == g]
        rank = conformal_rank(mine.shape[1], 0.2)  # ceil((n + 1) * 0.8)
        torch.testing.assert_close(thresholds[:, g], mine.sort(dim=1).values[:, rank - 1])
    assert torch.isinf(thresholds[:, 3]).all()  # no calibration example: every candidate of that group stays in
    # A candidate is compared with its own group's threshold: here candidate y of example i is in group y.
    candidates = torch.arange(3).expand(5, 3)
    sets = capstone_sets.mondrian_sets(logits[:, :5], candidates, thresholds)
    probs = torch.softmax(logits[:, :5], -1)
    assert torch.equal(sets, (1 - probs) <= thresholds[:, None, :3])
    with pytest.raises(ValueError, match="candidate_groups"):
        capstone_sets.mondrian_sets(logits[:, :5], candidates[:4], thresholds)
    with pytest.raises(ValueError, match="miscoverage"):
        capstone_sets.mondrian_thresholds(logits, labels, groups, 4, 1.5)


def test_mondrian_covers_every_group_where_marginal_lac_misses_the_minority():
    # A model that is sure and right on the majority group and unsure on a minority group (a tenth of the examples,
    # its label often the second choice): marginal LAC covers the minority less than 90%, Mondrian each group.
    generator = torch.Generator().manual_seed(1)
    n, classes = 4000, 5
    groups = (torch.rand(n, generator=generator) < 0.1).long()
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.randn(1, n, classes, generator=generator, dtype=torch.float64)
    logits[0, torch.arange(n), labels] += torch.where(groups == 0, 4.0, 0.5).double()
    candidates = groups[:, None].expand(n, classes)  # the group is a property of the example here
    cover = {"LAC": [], "Mondrian": []}
    for split in range(20):
        calib, evaluation = calibration_split(n, 0.5, seed=split)
        sets, _, _ = capstone_sets.split_sets(logits[:, calib], labels[calib], groups[calib], logits[:, evaluation], candidates[evaluation], 2, 0.1,
                                              seed=split, avcs_draws=2, avcs_start=0.25)
        for m in cover:
            hit = sets[m][0, torch.arange(len(evaluation)), labels[evaluation]]
            cover[m].append([float(hit[groups[evaluation] == g].double().mean()) for g in range(2)])
    lac, mondrian = np.mean(cover["LAC"], axis=0), np.mean(cover["Mondrian"], axis=0)
    assert lac[1] < 0.85 and lac[0] > 0.9  # the marginal promise holds on the mixture, not on the minority
    assert mondrian[0] >= 0.89 and mondrian[1] >= 0.89  # each group at its target (its Monte Carlo error is < 0.01)


def test_avcs_is_the_full_label_set_where_its_rule_is_infeasible():
    # Half the calibration labels have a negative logit at exit 1: no tau keeps 90% of them, so the rule cannot
    # reach its rank and the sets are every label (split conformal's set at an infinite threshold).
    generator = torch.Generator().manual_seed(2)
    n, classes = 200, 4
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.full((2, n, classes), -2.0, dtype=torch.float64)
    logits[:, torch.arange(n), labels] = torch.where(torch.arange(n) % 2 == 0, 3.0, -3.0).double()
    groups = torch.zeros(n, dtype=torch.long)
    candidates = torch.zeros(n, classes, dtype=torch.long)
    sets, feasible, _ = capstone_sets.split_sets(logits, labels, groups, logits, candidates, 1, 0.1, seed=0, avcs_draws=2, avcs_start=0.25)
    assert not feasible and sets["AVCS"].all()
    logits[:, torch.arange(n), labels] = 5.0  # every label clearly first: the rule reaches its rank
    sets, feasible, tau = capstone_sets.split_sets(logits, labels, groups, logits, candidates, 1, 0.1, seed=0, avcs_draws=2, avcs_start=0.25)
    assert feasible and tau >= 0.25 and not sets["AVCS"].all()


# ----------------------------------------------------------------------------------------------------------------
# The students' pieces


def _tiny_student(num_classes=2):
    from kdteach.exits import MultiExit
    from kdteach.models.resnet import resnet_cifar

    torch.manual_seed(0)
    return MultiExit(resnet_cifar(8, 4, num_classes, 3), num_classes, example_input=torch.zeros(1, 3, 8, 8), exits=capstone.EXITS, head_pool=2)


def test_multi_exit_kd_loss_is_the_mean_of_each_exits_kd_loss_with_cached_or_live_teacher():
    generator = torch.Generator().manual_seed(0)
    outputs, teacher = torch.randn(3, 5, 2, generator=generator), torch.randn(5, 2, generator=generator)
    batch = {"y": torch.tensor([0, 1, 1, 0, 1]), "teacher_logits": teacher, "index": torch.arange(5)}
    loss = capstone.MultiExitKDLoss(KDLoss(temperature=3.0, soft_weight=1.0))(outputs, batch)
    by_hand = torch.stack([kd_loss(o, teacher, batch["y"], temperature=3.0, soft_weight=1.0) for o in outputs]).mean()
    torch.testing.assert_close(loss, by_hand)
    # Augmented batches carry no cached logits: the teacher runs on the batch's images, once for every exit.
    net = torch.nn.Linear(4, 2)
    x = torch.randn(5, 4, generator=generator)
    live = capstone.MultiExitKDLoss(KDLoss(temperature=3.0, soft_weight=1.0, teacher=net))(outputs, {"x": x, "y": batch["y"], "index": batch["index"]})
    with torch.no_grad():
        cached = capstone.MultiExitKDLoss(KDLoss(temperature=3.0, soft_weight=1.0))(outputs, {**batch, "teacher_logits": net(x)})
    torch.testing.assert_close(live, cached)
    with pytest.raises(ValueError, match="exits, N, C"):
        capstone.MultiExitKDLoss(KDLoss(temperature=3.0, soft_weight=1.0))(outputs[0], batch)


def test_exit_readout_reads_the_first_exit_and_an_early_readout_reads_a_multi_exit_student():
    from kdteach.data.batches import Batches

    model = _tiny_student().train()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    batches = Batches({"x": x, "y": torch.tensor([0, 1, 0, 1, 0, 1])}, 4)
    readout = capstone.ExitReadout(0, "layer1")
    logits = readout.predict(model, batches)
    model.eval()
    torch.testing.assert_close(logits, model.forward_exit(x, 0))
    model.train()
    assert readout.fit(model, batches) == {} and model.training  # nothing to train; the student left in train mode
    torch.testing.assert_close(model.features(x, upto="layer1")["layer1"], model.backbone.features(x, upto="layer1")["layer1"])
    EarlyReadout("layer1", 2, head="linear", epochs=1, seed=0).fit(model, batches)


def test_ten_class_digits_have_aligned_and_conflicting_examples_in_every_class():
    # sizes that both MNIST and its offline stand-in (scikit-learn's digits: 1,198 training and 360 test images) hold
    train_split = capstone.digits_data("train", 1000, p_corr=0.9, image_size=14)
    test_split = capstone.digits_data("test", 300, p_corr=0.9, image_size=14)
    assert train_split.images.shape[1:] == (3, 14, 14) and train_split.num_classes == 10 and train_split.num_groups == 2
    for data, aligned_share in ((train_split, 0.9), (test_split, 0.1)):
        assert torch.equal(data.groups, (data.spurious != data.labels).long())
        assert abs(float((data.groups == 0).double().mean()) - aligned_share) < 0.03
    for c in range(10):  # both kinds of example in every class of the training split
        assert set(train_split.groups[train_split.labels == c].tolist()) == {0, 1}
    rules = capstone.shortcut_rules(test_split)
    assert rules["colour rule"] == (1.0, 0.0)  # right on every aligned digit, wrong on every conflicting one
    constants = {name: a for name, a in rules.items() if name.startswith("constant")}
    assert len(constants) == 10
    for c, name in enumerate(test_split.class_names):  # "always c" is right on exactly group g's share of digit c
        shares = tuple(float((test_split.labels[test_split.groups == g] == c).double().mean()) for g in range(2))
        assert constants[f"constant: always {name}"] == pytest.approx(shares)
    from kdteach.groups import competence

    assert competence((0.99, 0.02), rules).rule_followed == "colour rule" and competence((0.97, 0.75), rules).competent
    with pytest.raises(ValueError, match="image_size"):
        capstone.digits_data("test", 10, p_corr=0.9, image_size=10)


def test_without_mnist_the_digits_use_a_whole_stand_in_split_where_it_is_smaller(monkeypatch, tmp_path, capsys):
    from kdteach.data import mnist

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [tmp_path])  # no MNIST anywhere
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "smoke")  # smoke mode never downloads
    monkeypatch.setattr(mnist, "internet_reachable", refuse)
    monkeypatch.setattr(mnist, "download_mnist", refuse)
    monkeypatch.setattr(mnist, "_ANNOUNCED", set())
    sizes = capstone.SMOKE_CONFIG.digits_sizes  # (600, 200, 600): the stand-in's test split holds 360
    splits = [capstone.digits_data(split, n, p_corr=0.9, image_size=14) for split, n in zip(("train", "val", "test"), sizes)]
    assert [len(s.labels) for s in splits] == [600, 200, 360] and all("sklearn digits" in s.name for s in splits)
    assert capsys.readouterr().out.count("stand in for it") == 1  # said once, in one sentence
    # Full mode offline: one probe for a download, then full mode's 3,000 training digits are the whole stand-in split
    probes = []
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "full")
    monkeypatch.setattr(mnist, "internet_reachable", lambda *args, **kwargs: probes.append(1) or False)
    full = capstone.digits_data("train", capstone.CapstoneConfig().digits_sizes[0], p_corr=0.9, image_size=14)
    assert len(full.labels) == 1198 and len(probes) == 1


def test_dedier_in_the_capstone_never_keeps_a_plain_kd_epoch():
    with pytest.raises(ValueError, match="start_after"):
        capstone.train_student("DeDiER, exit 1", None, dataclasses.replace(TINY_DEDIER, epochs=1), TINY)
    with pytest.raises(ValueError, match="variant"):
        capstone.train_student("DeDiER++", None, TINY_DEDIER, TINY)


# ----------------------------------------------------------------------------------------------------------------
# A tiny end-to-end run


@pytest.fixture(scope="module")
def tiny_run(one_thread, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDTEACH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(dedier, "config", lambda mode=None: TINY_DEDIER)
        epochs = []
        real = train.train_one_epoch
        patch.setattr(train, "train_one_epoch", lambda *a, **k: epochs.append(1) or real(*a, **k))
        first = capstone.run_dataset(capstone.DIGITS, TINY, "cpu", seeds=(0,), progress=False)
        trained = len(epochs)
        again = capstone.run_dataset(capstone.DIGITS, TINY, "cpu", seeds=(0,), progress=False)
        yield first, again, trained, len(epochs) - trained


def test_a_tiny_capstone_run(tiny_run):
    result, again, trained, retrained = tiny_run
    assert [o.model for o in result.outcomes] == ["teacher", *capstone.VARIANTS]
    assert trained >= 3 * TINY_DEDIER.epochs + TINY.teacher_epochs and retrained == 0  # everything reloaded the second time
    assert repr(again.outcomes) == repr(result.outcomes)  # the same models and seeded splits, the same numbers (NaN too)
    teacher, kd = result.outcomes[0], result.outcomes[1]
    assert len(teacher.accuracy) == 1 and len(kd.accuracy) == len(capstone.EXITS) and len(kd.accuracy[0]) == 2
    assert len(kd.class_accuracy[0]) == 10 and result.conflicting == (1,)
    for o in result.outcomes:
        assert set(o.by_group) == set(capstone.SET_METHODS)
        for method in capstone.SET_METHODS:
            assert all(0.0 <= c <= 1.0 for g in o.by_group[method] for c in g.coverage)
            assert all(0.0 <= s <= 10.0 for g in o.by_group[method] for s in g.size)
        if o.avcs_feasible == 0.0:  # the full label set on every split
            assert o.marginal["AVCS"].coverage == (1.0,) * len(o.accuracy) and o.marginal["AVCS"].size == (10.0,) * len(o.accuracy)
    assert sum(result.test_counts) == TINY.digits_sizes[2]
    for method in capstone.SET_METHODS:
        assert len(capstone_report.coverage_rows(result, method)) == 1 + 3 * len(capstone.EXITS)
        assert len(capstone_report.size_rows(result, method)) == 1 + 3 * len(capstone.EXITS)
    assert len(capstone_report.class_rows(result)) == 1 + 3 * len(capstone.EXITS)


# ----------------------------------------------------------------------------------------------------------------
# Answers, tables and figures on constructed numbers


def _summary(coverage, size=1.5, exits=3, std=0.02, empty=0.0):
    e = exits
    return MethodSummary("m", 10, (coverage,) * e, (std,) * e, (size,) * e, (0.1,) * e, (empty,) * e, (1.0,) * e, coverage, 0.0, 0.0, 0.0, coverage)


def _outcome(model, seed, *, conflicting_cov, aligned_cov, accuracy, exits=3, feasible=1.0, mondrian=0.9, sizes=(1.2, 2.5)):
    def per_group(method):
        if method == "Mondrian":
            return (_summary(mondrian, sizes[0] + 0.2, exits), _summary(mondrian, sizes[1] + 1.0, exits))
        return (_summary(aligned_cov, sizes[0], exits), _summary(conflicting_cov, sizes[1], exits))

    by = {m: per_group(m) for m in capstone.SET_METHODS}
    marginal = {m: _summary(0.1 * g[0].coverage[0] + 0.9 * g[1].coverage[0], exits=exits) for m, g in by.items()}
    classes = {m: ((0.9,) * 10,) * exits for m in capstone.SET_METHODS}
    return capstone_sets.ModelOutcome(capstone.DIGITS, model, seed, (accuracy,) * exits, ((0.8,) * 10,) * exits, marginal, by, classes, classes,
                                      feasible, 1.0)


def _constructed(seeds, *, kd_gap=0.30, dedier_gap=0.10, kd_accuracy=(0.99, 0.70), feasible=1.0, aligned=(0.99,)):
    outcomes = []
    for i, seed in enumerate(seeds):
        jitter = 0.01 * i
        outcomes.append(_outcome("teacher", seed, conflicting_cov=0.88, aligned_cov=0.95, accuracy=(0.99, 0.9), exits=1, feasible=feasible))
        outcomes.append(_outcome("KD", seed, conflicting_cov=0.90 - kd_gap + jitter, aligned_cov=aligned[i % len(aligned)], accuracy=kd_accuracy,
                                 feasible=feasible))
        for variant in capstone.VARIANTS[1:]:
            outcomes.append(_outcome(variant, seed, conflicting_cov=0.90 - dedier_gap + jitter, aligned_cov=0.99, accuracy=(0.97, 0.75), feasible=feasible))
    return capstone.DatasetResult(capstone.DIGITS, capstone.DIGIT_GROUPS, (1,), tuple(f"digit {d}" for d in range(10)), capstone.EXITS, tuple(seeds),
                                  tuple(outcomes), (100, 900), {"constant: always digit 0": (0.1, 0.1), "colour rule": (1.0, 0.0)}, 1.0, 2.0)


def test_answers_say_yes_when_the_minority_loses_coverage_and_what_restores_it():
    lines = capstone_report.answers(_constructed((0, 1, 2, 3, 4)), miscoverage=0.1)
    assert [line.split(" (")[0] for line in lines] == ["Answer 1", "Answer 2", "Answer 3"]
    assert "yes:" in lines[0] and "62.0%" in lines[0] and "99.0%" in lines[0]  # conflicting 0.60-0.64 (mean 0.62), aligned 0.99
    assert "DeDiER, detached readout - KD" in lines[1] and "raises it" in lines[1]  # +20 points in every seed
    assert "Mondrian" in lines[2].split("In numbers")[0] and "reaching the target" in lines[2]


def test_answers_say_no_or_the_premise_failed_when_the_numbers_do():
    no_gap = capstone_report.answers(_constructed((0, 1, 2), kd_gap=0.0, dedier_gap=0.0), miscoverage=0.1)
    assert not no_gap[0].split(": ", 1)[1].startswith("yes") and "nothing needed restoring" in no_gap[2]
    # A KD student at the colour rule (100% aligned, 0% conflicting: mean over groups 50%) has not learned the task.
    colour_rule = capstone_report.answers(_constructed((0, 1, 2), kd_accuracy=(1.0, 0.0)), miscoverage=0.1)
    assert all("premise failed" in line for line in colour_rule) and "clearly" not in " ".join(colour_rule)
    # A student as good on both groups does not lean on the shortcut: the question's premise fails.
    even = capstone_report.answers(_constructed((0, 1, 2), kd_accuracy=(0.9, 0.9)), miscoverage=0.1)
    assert "the premise failed" in even[0]


@pytest.mark.parametrize("miscoverage", [2.0, 0.0, 1.0, -0.1, float("nan")])
def test_a_miscoverage_outside_zero_one_is_refused_by_name(miscoverage):
    # issue 22: a miscoverage of 2 printed "target coverage -100%"
    result = _constructed((0, 1, 2))
    with pytest.raises(ValueError, match="miscoverage must be"):
        capstone_report.answers(result, miscoverage=miscoverage)
    with pytest.raises(ValueError, match="miscoverage must be"):
        capstone_report.dataset_findings(result, miscoverage=miscoverage, splits=10)


def test_no_verdict_on_an_infeasible_avcs_row_or_an_unlearned_exit():
    result = _constructed((0, 1, 2), feasible=0.4)
    for row in capstone_report.coverage_rows(result, "AVCS"):
        assert "rule infeasible on 60% of splits" in row["note"] and "no verdict" in row["note"]
    assert "AVCS's threshold rule was infeasible on 60%" in capstone_report.answers(result, miscoverage=0.1)[2]
    findings = capstone_report.dataset_findings(result, miscoverage=0.1, splits=10)
    assert not any("AVCS" in line and "clearly" in line for line in findings)
    unlearned = _constructed((0, 1, 2), kd_accuracy=(1.0, 0.0))
    rows = capstone_report.coverage_rows(unlearned, "LAC")
    assert all("has not learned the task" in r["note"] for r in rows if r["model"] == "KD")
    lines = capstone_report.dataset_findings(unlearned, miscoverage=0.1, splits=10)
    assert not any(line.startswith(f"{capstone.DIGITS}: DeDiER") and "than KD" in line and "clearly" in line for line in lines
                   if "coverage" in line)


def test_tables_keep_intervals_in_range_and_name_the_teacher_as_one_model():
    # KD covers the aligned group 0.95, 0.995, 1.0: the t-interval's upper end (105.0) must stop at 100.
    result = _constructed((0, 1, 2), kd_gap=0.0, aligned=(0.95, 0.995, 1.0))
    rows = capstone_report.coverage_rows(result, "LAC")
    assert rows[1]["model"] == "KD" and rows[1][result.group_names[0]] == "98.2 [91.3, 100.0] (n=3)"
    for row in rows:
        for name in (*result.group_names, "every example"):
            numbers = [float(x) for x in row[name].replace("[", " ").replace("]", " ").replace(",", " ").split() if x.replace(".", "").isdigit()]
            assert all(0.0 <= x <= 100.0 for x in numbers), row[name]
    teacher = rows[0]
    assert "one model, 30 splits" in teacher["every example"] and "s.e." in teacher["every example"]
    sizes = capstone_report.size_rows(result, "Mondrian")
    assert {"empty (%)", "nestedness"} <= set(sizes[0])


def test_figures_keep_axes_in_range_and_the_legend_outside_the_data():
    from kdteach.plots.capstone import plot_group_coverage, plot_group_sizes

    result = _constructed((0, 1, 2), feasible=0.5)
    fig = plot_group_coverage(result, miscoverage=0.1)
    assert len(fig.axes) == len(capstone.SET_METHODS) * len(capstone.VARIANTS)
    assert all(ax.get_ylim() == (0.0, 1.0) for ax in fig.axes) and all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1 and "rule infeasible on 50%" in fig.axes[2 * len(capstone.VARIANTS)].get_title()
    fig.canvas.draw()
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(legend_top <= ax.get_window_extent().y0 for ax in fig.axes)  # below every panel
    sizes = plot_group_sizes(result)
    assert all(ax.get_ylim() == (0.0, 10.0) for ax in sizes.axes)
    assert math.isclose(len(sizes.axes), len(fig.axes))


def test_every_config_field_is_named_as_deciding_a_model_or_not():
    named = capstone.DIGITS_FIELDS + capstone.STUDENT_ONLY_FIELDS + capstone.NOT_DECIDING
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(capstone.CapstoneConfig))
    assert not hasattr(capstone.FULL_CONFIG, "alpha")  # the miscoverage level and DeDiER's exponent have different names
