"""The competence gate, notebook 03's recipe and DeDiER's one selection rule: fast checks without training."""
import dataclasses
import math

import pytest
import torch

from kdteach.debias import DeDiERReweighting
from kdteach.data.batches import Batches
from kdteach.experiments import dedier, spurious
from kdteach.groups import COMPETENCE_MARGIN, SELECTION, competence, selection_rule, shortcut_rules

RULES = shortcut_rules(2, 2, class_names=["landbird", "waterbird"])


def test_the_binary_shortcut_rules_have_the_accuracies_worked_out_by_hand():
    # groups: (landbird, land), (landbird, water), (waterbird, land), (waterbird, water)
    assert RULES == {"constant: always landbird": [1.0, 1.0, 0.0, 0.0], "constant: always waterbird": [0.0, 0.0, 1.0, 1.0],
                     "spurious-attribute rule": [1.0, 0.0, 0.0, 1.0], "inverted spurious-attribute rule": [0.0, 1.0, 1.0, 0.0]}
    ten = shortcut_rules(10, 10)
    assert len(ten) == 11 and sum(ten["spurious-attribute rule"]) == 10  # ten constants and the colour rule


@pytest.mark.parametrize("per_group, followed", [([1.0, 0.003, 0.0, 1.0], "spurious-attribute rule"),  # notebook 03's old KD student
                                                  ([0.99, 0.98, 0.02, 0.01], "constant: always landbird"),
                                                  ([0.0, 1.0, 0.97, 0.03], "inverted spurious-attribute rule")])
def test_background_constant_and_inverted_rules_are_degenerate(per_group, followed):
    c = competence(per_group, RULES)
    assert not c.competent and c.rule_followed == followed
    assert c.label().startswith("DEGENERATE")


def test_a_model_that_learned_the_shape_passes_and_the_margin_decides_the_edge():
    learned = competence([1.0, 0.846, 0.495, 0.996], RULES)  # notebook 03's KD student with notebook 02's recipe
    assert learned.competent and learned.rule_followed is None and math.isclose(learned.mean_over_groups, 0.83425)
    assert learned.best_rule_mean == 0.5
    edge = [0.5 + COMPETENCE_MARGIN + 0.01] * 4
    assert competence(edge, RULES).competent and not competence([0.5 + COMPETENCE_MARGIN - 0.01] * 4, RULES).competent


def test_empty_groups_are_left_out_and_bad_input_is_named():
    assert competence([0.9, math.nan, 0.8, 0.9], RULES).competent
    with pytest.raises(ValueError, match="no finite accuracy"):
        competence([math.nan] * 4, RULES)
    with pytest.raises(ValueError, match="has 4 groups, per_group has 3"):
        competence([0.9, 0.9, 0.9], RULES)


def test_notebook_03_uses_notebook_02s_student_recipe():
    # Notebook 03 once dropped notebook 02's recipe (no augmentation, half the learning rate) and its students stayed
    # background classifiers: the full configurations must agree field by field.
    ours, theirs = dedier.FULL_CONFIG, spurious.FULL_CONFIG
    for mine, notebook02 in dedier.RECIPE_FROM_NOTEBOOK_02.items():
        assert getattr(ours, mine) == getattr(theirs, notebook02), mine
    assert (ours.alpha, ours.beta) in ours.sweep_settings  # the official defaults stay a row of the (alpha, beta) table
    assert len(ours.few_seeds) >= 3 and len(ours.seeds) >= 5


def test_dedier_never_keeps_an_epoch_before_its_first_reweighting():
    batches = Batches({"x": torch.zeros(4, 1), "y": torch.tensor([0, 1, 0, 1])}, 2)
    reweighting = DeDiERReweighting(torch.nn.Linear(1, 2), object(), batches, alpha=1.0, beta=2.0, start_after=2)
    assert reweighting.first_reweighted_epoch == 2
    scores = iter([0.9, 0.8, 0.5, 0.5])  # the plain-KD epochs score best on validation
    rule = selection_rule(lambda model: {"val_mean_group": next(scores)}, batches, by="val_mean_group",
                          first_epoch=reweighting.first_reweighted_epoch)
    picked = []
    for epoch in range(4):
        batches.epoch = epoch
        picked.append(rule(None)[SELECTION])
    assert picked[:2] == [-math.inf, -math.inf]
    assert max(range(4), key=picked.__getitem__) == 3  # ties go to the later epoch, never to a plain-KD one
    with pytest.raises(ValueError, match="first_epoch"):
        selection_rule(lambda model: {}, batches, by="val_mean_group", first_epoch=-1)


def test_choose_setting_takes_the_best_mean_validation_worst_group(monkeypatch):
    cfg = dataclasses.replace(dedier.SMOKE_CONFIG, sweep_settings=((0.05, 4.0), (1.0, 2.0), (1.0, 1.0)), few_seeds=(0, 1, 2))
    val = {(0.05, 4.0): [0.2, 0.9, 0.1], (1.0, 2.0): [0.6, 0.6, 0.6], (1.0, 1.0): [0.6, 0.6, 0.6]}

    def fake_compare(prep, cfg, *, settings=(), seeds=None, progress=True, methods=()):
        return tuple(dedier.StudentResult("d", "DeDiER", seed, s, None, 2, 2, 0.0, val_worst_group=val[s.alpha, s.beta][seed])
                     for s in settings for seed in seeds)

    monkeypatch.setattr(dedier, "compare", fake_compare)
    chosen, sweep = dedier.choose_setting(None, cfg, progress=False)
    assert (chosen.alpha, chosen.beta) == (1.0, 2.0)  # best mean (0.6 against 0.4); the tie with (1, 1) goes to the earlier
    assert len(sweep) == 9
    with pytest.raises(ValueError, match="sweep_settings is empty"):
        dedier.choose_setting(None, dataclasses.replace(cfg, sweep_settings=()), progress=False)
