"""Group metrics against hand-computed cases: an empty group, a majority group that is the worst, the three averages,
overlapping groups, and clear errors for bad input."""
import math

import numpy as np
import pytest
import torch

from kdteach.groups import (
    AVERAGE_CONVENTIONS,
    average_accuracy,
    group_accuracy,
    group_counts,
    group_ids,
    group_metrics,
    worst_group_accuracy,
)

# 7 examples in groups 0, 1 and 3; group 2 is empty. Group 0 (the largest) gets 2 of 4 right, groups 1 and 3 all.
GROUPS = [0, 0, 0, 0, 1, 1, 3]
LABELS = [0, 0, 0, 0, 0, 0, 1]
PREDS = [0, 1, 0, 1, 0, 0, 1]
TRAIN_COUNTS = [10, 5, 3, 2]


def test_group_accuracy_by_hand_with_an_empty_group():
    result = group_accuracy(PREDS, LABELS, GROUPS, 4)
    assert result.counts.tolist() == [4, 2, 0, 1]
    assert result.accuracy[0] == 0.5 and result.accuracy[1] == 1.0 and result.accuracy[3] == 1.0
    assert math.isnan(result.accuracy[2])


def test_worst_group_ignores_empty_groups_and_can_be_the_majority_group():
    # The empty group 2 must not count as 0 (or NaN); the worst is the largest group, 0.
    assert worst_group_accuracy(PREDS, LABELS, GROUPS, 4) == 0.5


def test_three_average_conventions_by_hand():
    assert average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="test") == pytest.approx(5 / 7)
    assert average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="uniform") == pytest.approx((0.5 + 1 + 1) / 3)
    # Group 2 is empty in the evaluated data, so its training weight (3) is left out and the rest renormalised.
    expected = (0.5 * 10 + 1.0 * 5 + 1.0 * 2) / (10 + 5 + 2)
    assert average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="train", train_group_counts=TRAIN_COUNTS) == pytest.approx(expected)


def test_conventions_differ_for_a_background_only_rule():
    # Waterbirds-like test set: backgrounds balanced within each class. A rule that predicts label = background is
    # right on groups 0 and 3 only: train-weighted average ~95%, plain and uniform 50%, worst group 0%.
    labels = np.array([0] * 4 + [1] * 4)
    background = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    groups = 2 * labels + background
    train = [3498, 184, 56, 1057]
    assert average_accuracy(background, labels, groups, 4, weighting="train", train_group_counts=train) == pytest.approx((3498 + 1057) / 4795)
    assert average_accuracy(background, labels, groups, 4, weighting="test") == 0.5
    assert average_accuracy(background, labels, groups, 4, weighting="uniform") == 0.5
    assert worst_group_accuracy(background, labels, groups, 4) == 0.0


def test_scores_and_tensors_are_accepted():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # argmax: 0, 1, 0
    result = group_accuracy(logits, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 2)
    assert result.accuracy.tolist() == [1.0, 0.5]


def test_overlapping_groups_as_a_membership_matrix():
    # CivilComments-style: example 1 mentions two identities, example 3 none.
    member = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    labels = [1, 0, 0, 1]
    preds = [1, 1, 0, 1]  # wrong only on example 1
    result = group_accuracy(preds, labels, member)
    assert result.counts.tolist() == [2, 2]
    assert result.accuracy.tolist() == [0.5, 0.5]
    assert average_accuracy(preds, labels, member, weighting="test") == 0.75  # over examples, not memberships
    assert group_counts(member).tolist() == [2, 2]


def test_group_ids_and_metrics_row():
    assert group_ids(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])).tolist() == [0, 1, 2, 3]
    assert group_ids([2, 1], [2, 0], num_attributes=3).tolist() == [8, 3]
    metrics = group_metrics(PREDS, LABELS, GROUPS, 4, train_group_counts=TRAIN_COUNTS, group_names=list("abcd"))
    assert metrics.worst_group == 0.5 and metrics.worst_group_index == 0 and metrics.accuracy_of("a") == 0.5
    assert math.isnan(metrics.per_group[2]) and metrics.counts == (4, 2, 0, 1) and metrics.group_names == tuple("abcd")
    # The same numbers as the single-convention functions, each under its own name.
    assert metrics.average_test == pytest.approx(5 / 7) and metrics.average("test") == metrics.average_test
    assert metrics.mean_over_groups == pytest.approx(2.5 / 3)
    assert metrics.average("train") == pytest.approx((0.5 * 10 + 5 + 2) / 17)
    assert set(AVERAGE_CONVENTIONS) == {"train", "test", "uniform"}
    # Without training counts the train-weighted average is NaN, not a silently different convention.
    assert math.isnan(group_metrics(PREDS, LABELS, GROUPS, 4).average_train_weighted)
    with pytest.raises(ValueError, match="weighting"):
        metrics.average("mean")
    with pytest.raises(ValueError, match="name"):
        metrics.accuracy_of("e")


def test_worst_group_index_can_point_at_the_majority_group():
    # Group 1 (3 examples, the majority) is all wrong; group 0 (1 example) right: the worst is the majority group.
    metrics = group_metrics([0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], 2)
    assert (metrics.worst_group, metrics.worst_group_index) == (0.0, 1)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: group_accuracy([0, 1], [0, 1, 1], [0, 0, 0], 2), "preds"),
        (lambda: group_accuracy([0, 1, 1], [0, 1, 1], [0, 0], 2), "groups"),
        (lambda: group_accuracy([0, 1, 1], [0, 1, 1], [0, 2, 5], 4), "groups"),
        (lambda: group_accuracy([0, 1, 1], [0, 1, 1], [0, -1, 1], 2), "groups"),
        (lambda: group_accuracy([0, 1], [0, 1], np.ones((2, 3), bool), 2), "num_groups"),
        (lambda: average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="mean"), "weighting"),
        (lambda: average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="train"), "train_group_counts"),
        (lambda: average_accuracy(PREDS, LABELS, GROUPS, 4, weighting="train", train_group_counts=[1, 2]), "train_group_counts"),
        (lambda: group_ids([0, 1], [0, 2]), "attributes"),
        (lambda: group_metrics(PREDS, LABELS, GROUPS, 4, group_names=["a"]), "group_names"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# Bad input of issue 22: scores that are all NaN gave a worst-group accuracy of 0.0 (argmax of NaN rows).
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_worst_group_accuracy_refuses_non_finite_scores(bad):
    labels, groups = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"preds holds 8 non-finite value\(s\) \(NaN or inf\)"):
        worst_group_accuracy(torch.full((4, 2), bad), labels, groups)
    one_row = torch.tensor([[2.0, 0.0], [0.0, 1.0], [bad, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"preds holds 1 non-finite value\(s\)"):
        worst_group_accuracy(one_row.numpy(), labels.numpy(), groups.numpy())
    assert worst_group_accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]]), labels, groups) == 0.5
