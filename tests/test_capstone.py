"""Notebook 07's capstone: group-conditional coverage by hand, the multi-exit KD loss and the exit readout against
their definitions, a tiny end-to-end run (shapes, reuse of checkpoints, paired splits with the teacher), and the
sentences on constructed numbers at 1 and 3 seeds."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from kdteach import report, train
from kdteach.debias import EarlyReadout
from kdteach.distill import KDLoss, kd_loss
from kdteach.experiments import capstone, dedier, spurious
from kdteach.sets import group_conditional_coverage

TINY_DEDIER = dataclasses.replace(dedier.SMOKE_CONFIG, student_width=4, epochs=3, batch_size=32)
TINY_SPURIOUS = dataclasses.replace(spurious.SMOKE_CONFIG, n_train=96, n_val=48, n_test=64, image_size=8, teacher_width=4, teacher_epochs=1)
TINY = dataclasses.replace(capstone.SMOKE_CONFIG, splits=2, calib_fraction=0.5)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_conditional_coverage_by_hand():
    # 6 examples, 2 classes, 3 groups; sets at two exits.
    sets = torch.tensor([[[1, 0], [0, 1], [1, 1], [0, 1], [1, 0], [0, 0]],
                         [[1, 0], [1, 0], [1, 1], [0, 1], [0, 1], [0, 0]]], dtype=torch.bool)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    hit = np.array([[1, 1, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0]], dtype=float)
    expected = np.stack([[hit[e, groups.numpy() == g].mean() for g in range(3)] for e in range(2)])
    np.testing.assert_allclose(group_conditional_coverage(sets, labels, groups, 3).numpy(), expected)
    assert math.isnan(float(group_conditional_coverage(sets[0], labels, groups, 4)[3]))  # an empty group
    with pytest.raises(ValueError, match="groups"):
        group_conditional_coverage(sets, labels, torch.tensor([0, 0, 1, 1, 2, 3]), 3)


def test_mean_interval_by_hand():
    # 1, 2, 3: mean 2, sd 1, t(0.975, df=2) = 4.3027, half-width 4.3027 / sqrt(3) = 2.484.
    assert report.mean_interval([1.0, 2.0, 3.0]) == "2.0 [-0.5, 4.5] (n=3)"
    assert report.mean_interval([0.5], scale=100.0) == "50.0 (n=1)"
    assert report.mean_interval([]) == "n/a"


def _tiny_student(num_classes=2):
    from kdteach.exits import MultiExit
    from kdteach.models.resnet import resnet_cifar

    torch.manual_seed(0)
    return MultiExit(resnet_cifar(8, 4, num_classes, 3), num_classes, example_input=torch.zeros(1, 3, 8, 8), exits=capstone.EXITS, head_pool=2)


def test_multi_exit_kd_loss_is_the_mean_of_each_exits_kd_loss():
    generator = torch.Generator().manual_seed(0)
    outputs, teacher = torch.randn(3, 5, 2, generator=generator), torch.randn(5, 2, generator=generator)
    batch = {"y": torch.tensor([0, 1, 1, 0, 1]), "teacher_logits": teacher, "index": torch.arange(5)}
    loss = capstone.MultiExitKDLoss(KDLoss(temperature=3.0, soft_weight=1.0))(outputs, batch)
    by_hand = torch.stack([kd_loss(o, teacher, batch["y"], temperature=3.0, soft_weight=1.0) for o in outputs]).mean()
    torch.testing.assert_close(loss, by_hand)
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
    # The feature-tap interface: an EarlyReadout on layer1 reads the backbone's layer1 features through the MultiExit.
    torch.testing.assert_close(model.features(x, upto="layer1")["layer1"], model.backbone.features(x, upto="layer1")["layer1"])
    EarlyReadout("layer1", 2, head="linear", epochs=1, seed=0).fit(model, batches)


@pytest.fixture(scope="module")
def tiny_run(one_thread, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDTEACH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(spurious, "config", lambda mode=None: TINY_SPURIOUS)
        patch.setattr(dedier, "config", lambda mode=None: TINY_DEDIER)
        epochs = []
        real = train.train_one_epoch
        patch.setattr(train, "train_one_epoch", lambda *a, **k: epochs.append(1) or real(*a, **k))
        first = capstone.run_dataset("waterbirds_like", TINY, "cpu", seeds=(0,), progress=False)
        trained = len(epochs)
        again = capstone.run_dataset("waterbirds_like", TINY, "cpu", seeds=(0,), progress=False)
        yield first, again, trained, len(epochs) - trained


def test_a_tiny_capstone_run(tiny_run):
    result, again, trained, retrained = tiny_run
    assert [o.model for o in result.outcomes] == ["teacher", *capstone.VARIANTS]
    assert trained >= 3 * TINY_DEDIER.epochs and retrained == 0  # every student reloaded the second time
    assert again.outcomes == result.outcomes  # the same students and the same seeded splits give the same numbers
    teacher, kd = result.outcomes[0], result.outcomes[1]
    assert len(teacher.accuracy) == 1 and len(kd.accuracy) == len(capstone.EXITS) and len(kd.accuracy[0]) == 4
    for o in result.outcomes:
        for method in capstone.SET_METHODS:
            per_exit = len(o.accuracy)
            assert len(o.marginal[method].coverage) == per_exit and len(o.by_group[method]) == 4
            assert all(0.0 <= c <= 1.0 for g in o.by_group[method] for c in g.coverage)
        assert o.by_group["AVCS"][0].nestedness == (1.0,) * len(o.accuracy)  # AVCS sets are nested by construction
        assert 0.0 <= o.avcs_feasible <= 1.0
    assert set(result.conflicting) == {1, 2}  # landbird on water, waterbird on land
    assert sum(result.test_counts) == TINY_SPURIOUS.n_test
    assert len(capstone.capstone_rows(result, method="LAC")) == 1 + 3 * len(capstone.EXITS)
    with pytest.raises(ValueError, match="variant"):
        capstone.train_student("DeDiER++", None, TINY_DEDIER, TINY)


def _outcome(model, seed, conflicting_cov, aligned_cov, exits=3):
    from kdteach.sets import MethodSummary

    sets = lambda c: MethodSummary("LAC", 10, (c,) * exits, (0.0,) * exits, (1.0,) * exits, (0.0,) * exits, (0.0,) * exits, (1.0,) * exits,
                                   c, 0.0, 0.0, 0.0, c)
    per_group = (sets(aligned_cov), sets(conflicting_cov), sets(conflicting_cov), sets(aligned_cov))
    by = {m: per_group for m in capstone.SET_METHODS}
    marginal = {m: sets((conflicting_cov + aligned_cov) / 2) for m in capstone.SET_METHODS}
    return capstone.ModelOutcome("waterbirds_like", model, seed, ((0.9, 0.5, 0.5, 0.9),) * exits, marginal, by, 1.0)


def _constructed(seeds, kd_gap, dedier_gap):
    outcomes = []
    for i, seed in enumerate(seeds):
        outcomes.append(_outcome("teacher", seed, 0.88, 0.92, exits=1))
        outcomes.append(_outcome("KD", seed, 0.90 - kd_gap + 0.01 * i, 0.95))
        outcomes.append(_outcome("DeDiER, exit 1", seed, 0.90 - dedier_gap + 0.01 * i, 0.95))
    return capstone.DatasetResult("waterbirds_like", ("a", "b", "c", "d"), (1, 2), capstone.EXITS, tuple(seeds), tuple(outcomes), (40, 10, 10, 40))


def test_capstone_sentences_follow_the_rule():
    lines = capstone.capstone_sentences(_constructed((0, 1, 2), kd_gap=0.40, dedier_gap=0.10), alpha=0.1, methods=("LAC",))
    text = "\n".join(lines)
    # KD: conflicting groups at 0.50-0.52 against aligned 0.95 in every seed: clearly lower.
    assert any("KD student)" in line and "the bias-conflicting groups' mean is clearly lower than the bias-aligned groups' mean" in line for line in lines)
    # DeDiER's worst group 0.80-0.82 against KD's 0.50-0.52: +30 points in every seed.
    assert any("DeDiER, exit 1 - KD on LAC worst-group coverage at exit 1" in line and "clearly higher" in line for line in lines)
    assert "KD student - teacher on LAC worst-group coverage" in text and "-37.0" in text
    # AVCS: sizes of 1 label; accuracy weighted by the test counts: (0.9 * 40 + 0.5 * 10 + 0.5 * 10 + 0.9 * 40) / 100 = 82%.
    avcs = "\n".join(capstone.capstone_sentences(_constructed((0, 1, 2), kd_gap=0.4, dedier_gap=0.1), alpha=0.1, methods=("AVCS",)))
    assert "mean set size per exit 1.00" in avcs and "82.0 [82.0, 82.0]" in avcs
    # At one seed the same numbers give no verdict anywhere.
    one = "\n".join(capstone.capstone_sentences(_constructed((0,), kd_gap=0.40, dedier_gap=0.10), alpha=0.1, mode="smoke"))
    assert "clearly" not in one and "smoke mode" in one


def test_group_coverage_figure_has_a_panel_per_student_and_method():
    from kdteach.plots.sets import plot_group_coverage

    fig = plot_group_coverage(_constructed((0, 1, 2), kd_gap=0.4, dedier_gap=0.1), alpha=0.1)
    assert len(fig.axes) == 2 * 2 and "mean ± std over 3 seeds" in fig._suptitle.get_text()
    one = plot_group_coverage(_constructed((0,), kd_gap=0.4, dedier_gap=0.1), alpha=0.1)
    assert "one seed" in one._suptitle.get_text()
