"""kdteach.checks and the functions that use it: every bad input gets a ValueError that names the argument, and
value checks (ranges, finiteness) never read a GPU tensor inside a training step."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdteach import checks
from kdteach.data import GroupedData, waterbirds_like
from kdteach.debias import EarlyReadout, GroupDROLoss, confidence_margin, dedier_weights, jtt_weights, weights_by_group
from kdteach.distill import check_logits, kd_loss, kd_loss_per_example, softmax_t
from kdteach.groups import average_accuracy, group_accuracy, group_counts, group_ids, worst_group_accuracy

S, T, Y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
NAN_ROW = torch.tensor([[0.0, float("nan"), 1.0, 2.0], [0.0] * 4, [1.0] * 4])


# ---------------------------------------------------------------------------------------------------------------
# The checks themselves
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [2.5, 2.0, True, "3", None, float("nan")])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(ValueError, match=f"epochs must be an integer, got {value!r}"):
        checks.check_int("epochs", value)


def test_check_int_accepts_integers_and_numpy_integers_and_checks_the_minimum():
    assert checks.check_int("n", 3) == 3 and checks.check_int("n", np.int64(4)) == 4
    assert type(checks.check_int("n", np.int64(4))) is int
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        checks.check_int("n", 0, minimum=1)


@pytest.mark.parametrize("value, message", [
    (float("inf"), "temperature must be a finite number, got inf"),
    (float("nan"), "temperature must be a finite number, got nan"),
    (0.0, r"temperature must be in \(0.0, inf\), got 0.0"),
    (-2, r"temperature must be in \(0.0, inf\), got -2"),
    ("4", "temperature must be a finite number, got '4'"),
    (True, "temperature must be a finite number, got True"),
])
def test_temperature_must_be_finite_and_positive(value, message):
    with pytest.raises(ValueError, match=message):
        checks.check_temperature(value)


def test_check_number_bounds_are_printed_as_they_are_checked():
    assert checks.check_number("p", 1.0, low=0.0, high=1.0) == 1.0  # closed ends are allowed
    with pytest.raises(ValueError, match=r"alpha must be in \(0.0, 1.0\), got 1.0"):
        checks.check_alpha(1.0)
    with pytest.raises(ValueError, match=r"lr must be in \(0.0, inf\), got 0"):
        checks.check_number("lr", 0, low=0.0, low_open=True)


def test_check_labels_names_the_argument_and_the_range_it_saw():
    with pytest.raises(ValueError, match=r"group_ids must be in \[0, 4\), got values in \[-1, 2\]"):
        checks.check_labels("group_ids", torch.tensor([0, -1, 2]), 3, 4)
    with pytest.raises(ValueError, match=r"y must have shape \(2,\), got \(3,\)"):
        checks.check_labels("y", Y, 2, 4)
    with pytest.raises(ValueError, match="y must hold integer class indices, got torch.float32"):
        checks.check_labels("y", Y.float(), 3, 4)
    with pytest.raises(ValueError, match="y must hold integer class indices, got torch.bool"):
        checks.check_labels("y", Y > 0, 3, 4)
    checks.check_labels("y", torch.tensor([0, 9]), 2, 4, check_values=False)  # asked not to read: passes


def test_value_checks_skip_gpu_tensors_unless_asked():
    # A stand-in with a CUDA device: reads_values is the one switch every value check goes through.
    on_gpu, on_cpu = SimpleNamespace(device=torch.device("cuda", 0)), torch.zeros(1)
    assert not checks.reads_values(on_gpu) and checks.reads_values(on_gpu, True)
    assert checks.reads_values(on_cpu) and not checks.reads_values(on_cpu, False)


def test_check_logits_refuses_empty_non_finite_and_wrong_shapes():
    with pytest.raises(ValueError, match=r"logits is empty \(0 rows\)"):
        checks.check_logits("logits", torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"logits holds 1 non-finite value\(s\)"):
        checks.check_logits("logits", NAN_ROW)
    with pytest.raises(ValueError, match=r"logits must be a tensor of shape \(N, classes\), got \(3,\)"):
        checks.check_logits("logits", torch.zeros(3))
    with pytest.raises(ValueError, match=r"logits must be a tensor of shape \(N, classes\), got list"):
        checks.check_logits("logits", [[0.0, 1.0]])
    with pytest.raises(ValueError, match="logits must be floating point, got torch.int64"):
        checks.check_logits("logits", torch.zeros(2, 3, dtype=torch.long))
    assert check_logits is checks.check_logits  # distill.check_logits still works for its importers


# ---------------------------------------------------------------------------------------------------------------
# Distillation loss
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("student, teacher, labels, name", [
    (NAN_ROW, T, Y, "student_logits holds 1 non-finite"),
    (S, NAN_ROW, Y, "teacher_logits holds 1 non-finite"),
    (S, T.masked_fill(T > 0, float("inf")), Y, "teacher_logits holds .* non-finite"),
    (torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), r"student_logits is empty \(0 rows\)"),
    (S, T, Y.float(), "labels must hold integer class indices"),
    (S, T, torch.tensor([0, 1, 7]), r"labels must be in \[0, 4\), got values in \[0, 7\]"),
])
def test_kd_loss_refuses_bad_tensors_naming_them(student, teacher, labels, name):
    for loss in (kd_loss, kd_loss_per_example):
        with pytest.raises(ValueError, match=name):
            loss(student, teacher, labels, temperature=2.0, soft_weight=0.5)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0, -1.0])
def test_kd_loss_and_softmax_t_refuse_bad_temperatures(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(S, T, Y, temperature=temperature, soft_weight=0.5)
    with pytest.raises(ValueError, match="temperature"):
        softmax_t(S, temperature)


def test_softmax_t_refuses_empty_and_non_finite_logits():
    with pytest.raises(ValueError, match="logits must be a non-empty tensor"):
        softmax_t(torch.zeros(0, 3), 2.0)
    with pytest.raises(ValueError, match="logits holds 1 non-finite"):
        softmax_t(NAN_ROW, 2.0)
    torch.testing.assert_close(softmax_t(torch.tensor([0.0, math.log(3.0)]), 1.0), torch.tensor([0.25, 0.75]))


def test_kd_loss_with_value_checks_off_reads_nothing():
    # check_values=False is what a GPU step gets by default: NaN goes through to the loss (fit reports NaN losses).
    loss = kd_loss(NAN_ROW, T, Y, temperature=2.0, soft_weight=0.5, check_values=False)
    assert math.isnan(float(loss))


# ---------------------------------------------------------------------------------------------------------------
# Group DRO, DeDiER, JTT: group ids against num_groups, integers given as floats
# ---------------------------------------------------------------------------------------------------------------
def test_group_dro_refuses_group_ids_out_of_range_naming_the_batch_entry():
    outputs, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    dro = GroupDROLoss(2)
    with pytest.raises(ValueError, match=r"batch\['group'\] must be in \[0, 2\), got values in \[0, 3\]"):
        dro(outputs, {"y": y, "group": torch.tensor([0, 1, 3, 0])})
    with pytest.raises(ValueError, match=r"batch\['group'\] must be in \[0, 2\), got values in \[-1, 1\]"):
        dro(outputs, {"y": y, "group": torch.tensor([0, 1, -1, 0])})
    with pytest.raises(ValueError, match=r"batch\['y'\] must be in \[0, 2\)"):
        dro(outputs, {"y": torch.tensor([0, 1, 2, 0]), "group": torch.tensor([0, 1, 1, 0])})
    with pytest.raises(ValueError, match=r"batch\['group'\] must hold integer"):
        dro(outputs, {"y": y, "group": torch.tensor([0.0, 1.0, 1.0, 0.0])})
    assert torch.equal(dro.group_weights, torch.full((2,), 0.5))  # nothing was updated by the refused batches


def test_group_dro_checks_the_whole_training_set_at_construction():
    data = waterbirds_like("train", 40, image_size=8)
    GroupDROLoss(data.num_groups, groups=data.groups)
    with pytest.raises(ValueError, match=r"groups must be in \[0, 3\), got values in \[0, 3\]"):
        GroupDROLoss(3, groups=data.groups)


def test_group_dro_counts_groups_like_bincount():
    group = torch.tensor([0, 2, 2, 3, 0, 2])
    _, counts = GroupDROLoss(5).group_losses(torch.randn(6, 2), {"y": torch.zeros(6, dtype=torch.long), "group": group})
    assert counts.tolist() == torch.bincount(group, minlength=5).float().tolist() == [2, 0, 3, 1, 0]


def test_group_dro_state_of_another_group_count_is_refused():
    with pytest.raises(ValueError, match=r"state\['group_weights'\] must have shape \(4,\) for num_groups=4, got \(2,\)"):
        GroupDROLoss(4).load_state_dict({"group_weights": torch.ones(2) / 2})


@pytest.mark.parametrize("call, message", [
    (lambda: GroupDROLoss(2.5), "num_groups must be an integer, got 2.5"),
    (lambda: GroupDROLoss(2, step_size=float("inf")), "step_size must be a finite number"),
    (lambda: EarlyReadout("layer1", 2, epochs=2.5), "epochs must be an integer, got 2.5"),
    (lambda: EarlyReadout("layer1", 2, batch_size=64.0), "batch_size must be an integer, got 64.0"),
    (lambda: EarlyReadout("layer1", 2.0), "num_classes must be an integer, got 2.0"),
    (lambda: jtt_weights(torch.tensor([True]), upweight=float("nan")), "upweight must be a finite number"),
    (lambda: dedier_weights(NAN_ROW, Y, alpha=0.1, beta=3.0), "readout_logits holds 1 non-finite"),
    (lambda: dedier_weights(S, torch.tensor([0, 1, 4]), alpha=0.1, beta=3.0), r"labels must be in \[0, 4\)"),
    (lambda: dedier_weights(S, Y, alpha=0.1, beta=-1.0), r"beta must be in \[0.0, inf\)"),
    (lambda: confidence_margin(torch.zeros(0, 2)), r"logits is empty \(0 rows\)"),
    (lambda: weights_by_group(torch.ones(3), torch.tensor([0, 1, 2]), 2.5), "num_groups must be an integer, got 2.5"),
    (lambda: weights_by_group(torch.ones(3), torch.tensor([0, 1, 2]), 2), r"groups must be in \[0, 2\), got values in \[0, 2\]"),
])
def test_debias_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Group metrics and grouped datasets
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: worst_group_accuracy([], [], []), r"labels is empty \(0 examples\)"),
    (lambda: worst_group_accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4), "labels is empty"),
    (lambda: group_accuracy([], [], [], 2), "labels is empty"),
    (lambda: average_accuracy([], [], [], 2, weighting="uniform"), "labels is empty"),
    (lambda: worst_group_accuracy([0, 1], [0, 1], [0, 1], 2.5), "num_groups must be an integer, got 2.5"),
    (lambda: group_counts([0, 1], 2.0), "num_groups must be an integer, got 2.0"),
    (lambda: group_ids([0, 1], [0, 1], 2.0), "num_attributes must be an integer, got 2.0"),
    (lambda: group_ids([0.5, 1.0], [0, 1]), "labels must hold integer"),
    (lambda: group_ids([0, -1], [0, 1]), "labels must be >= 0, got -1"),
    (lambda: waterbirds_like("train", 100.5), "n must be an integer, got 100.5"),
    (lambda: waterbirds_like("train", 100, image_size=16.0), "image_size must be an integer, got 16.0"),
    (lambda: waterbirds_like("train", 100, p_corr=float("nan")), "p_corr must be a finite number"),
])
def test_group_metrics_and_data_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_group_counts_of_nothing_is_zeros():
    # Counting is fine on an empty split (an accuracy is not): every group has zero examples.
    assert group_counts([], 3).tolist() == [0, 0, 0]
    assert group_ids([], []).tolist() == []


def test_grouped_data_refuses_labels_and_groups_out_of_range():
    data = waterbirds_like("val", 8, image_size=8)
    groups, labels = torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)
    groups[0], labels[3] = 4, 2
    with pytest.raises(ValueError, match=r"groups must be in \[0, 4\), got values in \[0, 4\]"):
        GroupedData(**{**data.__dict__, "groups": groups})
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got values in \[0, 2\]"):
        GroupedData(**{**data.__dict__, "labels": labels})


# ---------------------------------------------------------------------------------------------------------------
# On a GPU: the checks stay out of the step (no host synchronisation after the first batch)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_losses_check_without_waiting_for_the_device():
    device = torch.device("cuda")
    outputs = torch.randn(64, 2, device=device, requires_grad=True)
    batch = {"y": torch.randint(0, 2, (64,), device=device), "group": torch.randint(0, 4, (64,), device=device)}
    dro = GroupDROLoss(4)
    dro(outputs, batch)  # the first batch is checked: one wait, once
    bad = {**batch, "group": batch["group"].clone().fill_(1)}
    bad["group"][5] = 9
    with pytest.raises(ValueError, match=r"groups must be in \[0, 4\), got values in \[0, 9\]"):
        GroupDROLoss(4, groups=bad["group"])  # the whole set, checked at construction on the GPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation now raises
    try:
        for _ in range(3):
            dro(outputs, batch).backward()
            kd_loss(outputs, outputs.detach() * 2, batch["y"], temperature=4.0, soft_weight=0.5).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(dro.group_weights).all()


def test_check_same_shape_names_both_arguments_and_the_shape_wanted():
    reference = torch.zeros(4, 3)
    checks.check_same_shape("b", torch.ones(4, 3), "a", reference)  # equal shapes pass
    with pytest.raises(ValueError, match=r"b must have the shape of a, \(N, classes\) = \(4, 3\), got \(4, 5\)"):
        checks.check_same_shape("b", torch.ones(4, 5), "a", reference, what="(N, classes)")
    with pytest.raises(ValueError, match=r"b must have the shape of a, \(4, 3\), got list"):
        checks.check_same_shape("b", [[0.0] * 3] * 4, "a", reference)


def test_check_values_in_reads_the_range_and_nan():
    checks.check_values_in("p", torch.tensor([0.0, 0.5, 1.0]), 0.0, 1.0)  # closed bounds pass
    checks.check_values_in("p", torch.tensor([]), 0.0, 1.0)  # nothing to refuse
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\] \(a probability\), got values in \[0.2, 1.5\]"):
        checks.check_values_in("p", torch.tensor([0.2, 1.5]), 0.0, 1.0, meaning="a probability")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got no number and NaN"):
        checks.check_values_in("p", torch.tensor([float("nan")]), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got -inf"):
        checks.check_values_in("p", torch.tensor([float("-inf")]), 0.0, 1.0)
