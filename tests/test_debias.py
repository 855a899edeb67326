"""kdteach.debias: confidence margins, DeDiER weights, the early readout and the baselines."""
from __future__ import annotations

import math

import pytest
import torch

from kdteach.debias import confidence_margin, dedier_weights


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    # log p is a valid set of logits whose softmax is p, so margins can be picked by hand.
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


PROBS = [
    [0.5, 0.3, 0.2, 0.0 + 1e-12],  # top-1 0.5, top-2 0.3 -> margin 0.2; predicts class 0
    [0.1, 0.15, 0.7, 0.05],  # margin 0.55; predicts class 2
    [0.25, 0.25, 0.25, 0.25],  # a tie: margin 0
    [0.05, 0.05, 0.1, 0.8],  # margin 0.7; predicts class 3
]
MARGINS = [0.2, 0.55, 0.0, 0.7]


def test_confidence_margin_is_top1_minus_top2_for_four_classes():
    assert torch.allclose(confidence_margin(logits_of(PROBS)), torch.tensor(MARGINS), atol=1e-5)


def test_confidence_margin_binary_is_absolute_difference():
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    margin = confidence_margin(p.log())
    assert torch.allclose(margin, (p[:, 0] - p[:, 1]).abs(), atol=1e-6)


def test_confidence_margin_ignores_logit_shift():
    logits = torch.randn(6, 5)
    assert torch.allclose(confidence_margin(logits), confidence_margin(logits + 7.0), atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.05, 4.0), (1.0, 2.0), (2.0, 3.0)])
def test_dedier_weights_match_formula_multiclass(alpha, beta):
    # Row 0 wrong, row 1 right, row 2 a tie (weight 1 either way: margin 0 gives exp(0)), row 3 wrong.
    labels = torch.tensor([1, 2, 1, 0])
    logits = logits_of(PROBS)
    predicted = logits.argmax(dim=1).tolist()
    expected = [
        math.exp(beta * m**alpha) if p != y else 1.0 for m, p, y in zip(MARGINS, predicted, labels.tolist())
    ]
    weights = dedier_weights(logits, labels, alpha=alpha, beta=beta)
    assert weights.shape == (4,)
    assert torch.allclose(weights, torch.tensor(expected), rtol=1e-4)
    # Row 0 (predicts 0, label 1) and row 3 (predicts 3, label 0) are wrong; row 1 is right.
    assert weights[1] == 1.0
    assert weights[0] == pytest.approx(math.exp(beta * 0.2**alpha), rel=1e-4)
    assert weights[3] == pytest.approx(math.exp(beta * 0.7**alpha), rel=1e-4)


def test_alpha_is_an_exponent_not_a_factor():
    logits = logits_of([[0.6, 0.4, 1e-12]])  # margin 0.2, predicts 0
    w = dedier_weights(logits, torch.tensor([1]), alpha=0.5, beta=1.0)
    assert float(w) == pytest.approx(math.exp(0.2**0.5), rel=1e-4)
    assert float(w) != pytest.approx(math.exp(0.5 * 0.2), rel=1e-3)


def test_dedier_weights_are_one_when_readout_is_right():
    logits = torch.randn(50, 3)
    weights = dedier_weights(logits, logits.argmax(dim=1), alpha=0.1, beta=4.0)
    assert torch.equal(weights, torch.ones(50))


def test_dedier_weights_reject_bad_input():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        dedier_weights(logits, torch.zeros(4, dtype=torch.long), alpha=-1.0, beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        dedier_weights(logits, torch.zeros(4, dtype=torch.long), alpha=1.0, beta=float("nan"))
    with pytest.raises(ValueError, match="labels"):
        dedier_weights(logits, torch.zeros(5, dtype=torch.long), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="labels"):
        dedier_weights(logits, torch.full((4,), 3), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="readout_logits"):
        dedier_weights(torch.randn(4), torch.zeros(4, dtype=torch.long), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="2 classes"):
        confidence_margin(torch.randn(4, 1))


# ---------------------------------------------------------------------------------------------------------------
# The early readout leaves the student untouched
# ---------------------------------------------------------------------------------------------------------------
from torch import nn  # noqa: E402

from kdteach.data.batches import Batches  # noqa: E402
from kdteach.debias import (  # noqa: E402
    DeDiERReweighting,
    EarlyReadout,
    GroupDROLoss,
    InstanceWeights,
    SimKDLoss,
    SimKDStudent,
    confident_error_retrieval,
    jtt_error_set,
    jtt_weights,
    parameters_upto,
    readout_by_group,
    teacher_features,
    WeightedCrossEntropy,
    weights_by_group,
)
from kdteach.distill import KDLoss, kd_loss, kd_loss_per_example  # noqa: E402
from kdteach.models.mlp import MLP  # noqa: E402
from kdteach.train import fit  # noqa: E402


class TinyConvNet(nn.Module):
    """Two conv stages with BatchNorm and dropout, the ResNets' feature-tap interface."""

    stage_names = ("stem", "layer1", "pooled")

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.1))
        self.classifier = nn.Linear(6, num_classes)
        self.feature_dim = 6

    def features(self, x, *, upto=None):
        taps = {}
        h = taps["stem"] = self.stem(x)
        if upto == "stem":
            return taps
        h = taps["layer1"] = self.layer1(h)
        if upto == "layer1":
            return taps
        taps["pooled"] = h.mean(dim=(2, 3))
        return taps

    def forward(self, x):
        return self.classifier(self.features(x)["pooled"])


def image_batches(n: int = 48, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    return Batches({"x": x, "y": y}, 16, shuffle=True, seed=seed)


def snapshot(model: nn.Module) -> tuple:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return state, modes, flags, grads


@pytest.mark.parametrize("head", ["conv", "linear"])
@pytest.mark.parametrize("stage", ["stem", "layer1"])
def test_readout_leaves_student_untouched(head, stage):
    torch.manual_seed(0)
    student = TinyConvNet()
    student.train()
    student.layer1[1].eval()  # a mixed mode, which a blanket model.train(was_training) would overwrite
    student.stem[0].weight.requires_grad_(False)  # a mixed requires_grad pattern
    batches = image_batches()
    before = snapshot(student)
    readout = EarlyReadout(stage, 2, head=head, epochs=2, lr=1e-2)
    readout.fit(student, batches)
    logits = readout.predict(student, batches)
    after = snapshot(student)
    assert logits.shape == (48, 2)
    for key, value in before[0].items():  # BatchNorm running stats and num_batches_tracked included
        assert torch.equal(value, after[0][key]), key
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in student.parameters())


def test_readout_in_train_mode_moves_batchnorm_like_the_official_code():
    student = TinyConvNet()
    before = student.stem[1].running_mean.clone()
    EarlyReadout("stem", 2, features_in_train_mode=True).fit(student, image_batches())
    assert not torch.equal(before, student.stem[1].running_mean)
    assert student.training  # the mode is still put back


def test_readout_learns_and_is_reproducible():
    student = TinyConvNet()
    batches = image_batches(96)
    first = EarlyReadout("layer1", 2, head="linear", epochs=30, lr=5e-2, seed=3)
    first.fit(student, batches)
    second = EarlyReadout("layer1", 2, head="linear", epochs=30, lr=5e-2, seed=3)
    second.fit(student, batches)
    a, b = first.predict(student, batches), second.predict(student, batches)
    assert torch.equal(a, b)
    # The label is the sign of channel 0's mean, which a probe on random conv features can mostly read.
    assert float((a.argmax(1) == batches.tensors["y"]).float().mean()) > 0.7


def test_readout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="head"):
        EarlyReadout("stem", 2, head="mlp")
    with pytest.raises(ValueError, match="stage"):
        EarlyReadout("layer9", 2).fit(TinyConvNet(), image_batches())
    mlp_batches = Batches({"x": torch.randn(8, 5), "y": torch.zeros(8, dtype=torch.long)}, 4)
    with pytest.raises(ValueError, match="head='linear'"):
        EarlyReadout("hidden1", 2, head="conv").fit(MLP((5, 7, 2)), mlp_batches)
    with pytest.raises(RuntimeError, match="fit"):
        EarlyReadout("stem", 2).predict(TinyConvNet(), image_batches())


def test_parameters_upto_finds_the_shared_modules():
    student = TinyConvNet()
    x = torch.randn(2, 3, 6, 6)
    shared = {id(p) for p in parameters_upto(student, "stem", x)}
    assert shared == {id(p) for p in student.stem.parameters()}
    shared = {id(p) for p in parameters_upto(student, "layer1", x)}
    assert shared == {id(p) for p in [*student.stem.parameters(), *student.layer1.parameters()]}


# ---------------------------------------------------------------------------------------------------------------
# DeDiER inside fit()
# ---------------------------------------------------------------------------------------------------------------
def distill_batches(n: int = 64) -> Batches:
    batches = image_batches(n)
    batches.tensors["teacher_logits"] = torch.randn(n, 2)
    return batches


def test_dedier_reweighting_writes_fresh_weights_each_epoch():
    torch.manual_seed(0)
    student, batches = TinyConvNet(), distill_batches()
    readout = EarlyReadout("stem", 2, head="linear")
    reweight = DeDiERReweighting(student, readout, batches, alpha=1.0, beta=2.0)
    assert torch.equal(reweight.weights, torch.ones(64))  # epoch 0 is plain KD
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    history = fit(student, batches, epochs=2, optimizer=optimizer, on_epoch_end=reweight, progress=False,
                  loss_fn=KDLoss(temperature=3.0, soft_weight=1.0, instance_weights=reweight))
    logits = readout.predict(student, batches)
    expected = dedier_weights(logits, batches.tensors["y"], alpha=1.0, beta=2.0)
    assert torch.allclose(reweight.weights, expected)
    assert "weight" not in batches.tensors  # nothing is written into the training data
    assert "upweighted_fraction" in history.last and "readout_train_acc" in history.last


def test_kd_loss_reads_the_reweighting_it_was_given():
    torch.manual_seed(0)
    student, batches = TinyConvNet(), distill_batches(8)
    reweight = DeDiERReweighting(student, EarlyReadout("stem", 2, head="linear"), batches, alpha=1.0, beta=2.0)
    state = reweight.state_dict()
    state["weight"] = torch.arange(1.0, 9.0)
    reweight.load_state_dict(state)
    batch = next(iter(Batches(batches.tensors, 8, shuffle=True, seed=3)))
    outputs = student(batch["x"])
    weighted = KDLoss(temperature=2.0, soft_weight=1.0, instance_weights=reweight)(outputs, batch)
    per_example = kd_loss_per_example(outputs, batch["teacher_logits"], temperature=2.0, soft_weight=1.0)
    assert torch.allclose(weighted, (per_example * (batch["index"] + 1).float()).mean())  # row i weighs i + 1
    with pytest.raises(ValueError, match="instance_weights"):
        KDLoss(temperature=2.0, soft_weight=1.0, instance_weights=torch.ones(8))


def test_a_reweighting_no_loss_reads_is_an_error_not_plain_kd():
    torch.manual_seed(0)
    student, batches = TinyConvNet(), distill_batches()
    reweight = DeDiERReweighting(student, EarlyReadout("stem", 2, head="linear"), batches, alpha=1.0, beta=2.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    with pytest.raises(RuntimeError, match="instance_weights"):  # the loss was not given the reweighting
        fit(student, batches, epochs=3, optimizer=optimizer, loss_fn=KDLoss(temperature=3.0, soft_weight=1.0),
            on_epoch_end=reweight, progress=False)


def test_weighted_cross_entropy_by_hand():
    outputs, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1])
    weights = InstanceWeights(torch.tensor([1.0, 20.0, 1.0]))
    batch = {"y": labels, "index": torch.tensor([2, 1, 0])}  # rows 2, 1, 0 of the dataset, in this order
    ce = torch.nn.functional.cross_entropy(outputs, labels, reduction="none")
    assert torch.allclose(WeightedCrossEntropy(weights)(outputs, batch), (ce * torch.tensor([1.0, 20.0, 1.0])).mean())
    with pytest.raises(ValueError, match="non-negative"):
        InstanceWeights(torch.tensor([1.0, -1.0]))


def test_start_after_keeps_plain_kd_for_that_many_epochs():
    torch.manual_seed(0)
    student, batches = TinyConvNet(), distill_batches()
    readout = EarlyReadout("stem", 2, head="linear")
    reweight = DeDiERReweighting(student, readout, batches, alpha=1.0, beta=2.0, start_after=3)
    assert reweight(0, student) == {} and reweight(1, student) == {}  # epochs 0 and 1: plain KD
    assert torch.equal(reweight.weights, torch.ones(64)) and readout.fits == 0
    row = reweight(2, student)  # after the third epoch: the first reweighting
    expected = dedier_weights(readout.predict(student, batches), batches.tensors["y"], alpha=1.0, beta=2.0)
    assert readout.fits == 1 and "upweighted_fraction" in row
    assert torch.allclose(reweight.weights, expected)
    with pytest.raises(ValueError, match="start_after"):
        DeDiERReweighting(student, readout, batches, alpha=1.0, beta=2.0, start_after=0)


def test_sticky_weights_keep_an_old_upweight():
    student, batches = TinyConvNet(), distill_batches(8)
    reweight = DeDiERReweighting(student, EarlyReadout("stem", 2, head="linear"), batches, alpha=1.0, beta=2.0, sticky=True)
    state = reweight.state_dict()
    state["weight"] = torch.full((8,), 5.0)  # as if every example had been wrong before
    reweight.load_state_dict(state)
    reweight(0, student)
    wrong = reweight.readout_logits.argmax(1) != batches.tensors["y"]
    fresh = dedier_weights(reweight.readout_logits, batches.tensors["y"], alpha=1.0, beta=2.0)
    assert torch.equal(reweight.weights[~wrong], torch.full((int((~wrong).sum()),), 5.0))
    assert torch.allclose(reweight.weights[wrong], fresh[wrong])


def test_freeze_shared_reproduces_the_official_freezing():
    student, batches = TinyConvNet(), distill_batches(8)
    reweight = DeDiERReweighting(student, EarlyReadout("layer1", 2, head="linear"), batches, alpha=1.0, beta=2.0, freeze_shared=True)
    reweight(0, student)
    assert not any(p.requires_grad for p in [*student.stem.parameters(), *student.layer1.parameters()])
    assert all(p.requires_grad for p in student.classifier.parameters())
    # A resumed run re-applies it from the checkpointed state.
    fresh = TinyConvNet()
    other = DeDiERReweighting(fresh, EarlyReadout("layer1", 2, head="linear"), distill_batches(8), alpha=1.0, beta=2.0, freeze_shared=True)
    other.load_state_dict(reweight.state_dict())
    assert not any(p.requires_grad for p in fresh.stem.parameters())
    assert torch.equal(other.weights, reweight.weights)


def test_dedier_resume_ends_where_an_uninterrupted_run_does(tmp_path):
    class Killed(Exception):
        pass

    def kill_in_second_epoch(model):
        # metrics runs after the epoch's training and before its checkpoint: a kill here leaves epoch 1's file.
        kill_in_second_epoch.calls += 1
        if kill_in_second_epoch.calls == 2:
            raise Killed
        return {}

    kill_in_second_epoch.calls = 0

    def run(resume, path, metrics=None):
        torch.manual_seed(0)
        student, batches = TinyConvNet(), distill_batches()
        reweight = DeDiERReweighting(student, EarlyReadout("stem", 2, head="linear", seed=1), batches, alpha=0.5, beta=3.0)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
        fit(student, batches, epochs=3, optimizer=optimizer, on_epoch_end=reweight, checkpoint=path, metrics=metrics,
            resume=resume, progress=False, loss_fn=KDLoss(temperature=3.0, soft_weight=1.0, instance_weights=reweight))
        return student, reweight

    straight, straight_weights = run(False, None)
    with pytest.raises(Killed):
        run(False, tmp_path / "ckpt.pt", metrics=kill_in_second_epoch)
    resumed, resumed_weights = run(True, tmp_path / "ckpt.pt")
    assert torch.equal(straight_weights.weights, resumed_weights.weights)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float())


def test_weighted_kd_loss_equals_hand_computation():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])
    weights = torch.tensor([1.0, math.exp(4.0 * 0.3**0.05)])
    t, lam = 3.0, 0.7
    total = 0.0
    for i in range(2):
        p = [math.exp(v / t) for v in teacher[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [math.exp(v / t) for v in student[i].tolist()]
        q = [v / sum(q) for v in q]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        z = [math.exp(v) for v in student[i].tolist()]
        ce = -math.log(z[labels[i]] / sum(z))
        total += float(weights[i]) * (lam * t * t * kl + (1 - lam) * ce)
    got = kd_loss(student, teacher, labels, temperature=t, soft_weight=lam, weights=weights)
    assert float(got) == pytest.approx(total / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
class FixedPredictor(nn.Module):
    """Predicts class x[:, 0] (0 or 1) with logits that are a fixed function of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.stack([1 - x[:, 0], x[:, 0]], dim=1) * 5 + self.dummy


def test_jtt_error_set_and_upweighting():
    x = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    batches = Batches({"x": x, "y": y}, 2, shuffle=True)
    errors = jtt_error_set(FixedPredictor(), batches)
    assert errors.tolist() == [False, True, False, True, False]
    assert jtt_weights(errors, upweight=20.0).tolist() == [1.0, 20.0, 1.0, 20.0, 1.0]


def test_jtt_empty_error_set_is_reported():
    x = torch.tensor([[0.0], [1.0]])
    errors = jtt_error_set(FixedPredictor(), Batches({"x": x, "y": torch.tensor([0, 1])}, 2))
    with pytest.raises(ValueError, match="error set is empty"):
        jtt_weights(errors, upweight=20.0)
    with pytest.raises(ValueError, match="upweight"):
        jtt_weights(torch.tensor([True]), upweight=0.5)


def test_group_dro_weights_move_towards_the_worst_group():
    # Group 1's examples are mislabelled relative to the others: a shared model fits group 0 and fails group 1.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    group = (torch.arange(200) >= 160).long()  # group 1 is the 20% minority
    y = (x[:, 0] > 0).long()
    y[group == 1] = 1 - y[group == 1]
    # A model that fits the majority rule (class 1 iff x0 > 0) and is held fixed (lr 0): group 1's loss stays
    # the larger, so the group weights must move towards it whatever the batch order. (A trained model made the
    # test depend on the RNG state left by earlier tests: DRO's weights oscillate as the model flips rules.)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        model.bias.zero_()
    loss_fn = GroupDROLoss(2, step_size=0.05)
    batches = Batches({"x": x, "y": y, "group": group}, 50, shuffle=True)
    fit(model, batches, epochs=5, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), loss_fn=loss_fn, progress=False)
    q = loss_fn.group_weights
    assert q.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert q[1] > 0.6 > q[0]  # started at 0.5 / 0.5
    # The loss is sum_g q_g * (mean loss of group g in the batch): check one step by hand.
    outputs, batch = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), {"y": torch.tensor([0, 0, 1]), "group": torch.tensor([0, 1, 1])}
    dro = GroupDROLoss(2, step_size=1.0)
    ce = torch.nn.functional.cross_entropy(outputs, batch["y"], reduction="none")
    losses = torch.stack([ce[0], ce[1:].mean()])
    q = torch.tensor([0.5, 0.5]) * losses.exp()
    q = q / q.sum()
    assert float(dro(outputs, batch)) == pytest.approx(float((q * losses).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="group"):
        dro(outputs, {"y": batch["y"]})


def test_simkd_student_reads_through_the_frozen_teacher_head():
    teacher, student = TinyConvNet(), TinyConvNet()
    simkd = SimKDStudent(student, teacher.classifier)
    batches = image_batches(32)
    batches.tensors["teacher_features"] = teacher_features(teacher, batches)
    head_before = simkd.teacher_head.weight.clone()
    optimizer = torch.optim.Adam([p for p in simkd.parameters() if p.requires_grad], lr=1e-2)
    history = fit(simkd, batches, epochs=3, optimizer=optimizer, loss_fn=SimKDLoss(), progress=False)
    assert torch.equal(simkd.teacher_head.weight, head_before)
    assert torch.equal(simkd.teacher_head.weight, teacher.classifier.weight)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    x = batches.tensors["x"][:4]
    assert torch.allclose(simkd.eval()(x), teacher.classifier(simkd.projector(student.features(x)["pooled"])), atol=1e-6)
    # Without cached features, the loss runs the teacher on the batch: the same number.
    batch = {"x": x, "teacher_features": batches.tensors["teacher_features"][:4]}
    outputs = simkd.train()(x)  # training mode: the logits carry their projected features
    assert outputs.projected.shape == (4, teacher.classifier.in_features)
    assert torch.allclose(outputs, simkd.teacher_head(outputs.projected))  # the logits are read from these features
    cached = SimKDLoss()(outputs, batch)
    live = SimKDLoss(teacher=teacher)(outputs, {"x": x})
    assert torch.allclose(cached, live, atol=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        SimKDLoss()(outputs, {"x": x})
    with pytest.raises(ValueError, match="SimKDLogits"):  # eval-mode logits carry no projection
        SimKDLoss()(simkd.eval()(x), batch)


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------------
def test_confident_error_retrieval_counts_by_hand():
    # Rows: (probabilities, label, minority). Wrong rows: 0 (margin 0.8), 1 (margin 0.2), 3 (margin 0.6).
    probs = [[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]]
    labels = torch.tensor([1, 1, 0, 0, 1])
    minority = torch.tensor([True, False, True, False, False])
    out = confident_error_retrieval(logits_of(probs), labels, minority, margin=0.5)
    assert out["flagged"] == 2  # rows 0 and 3
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)
    assert out["base_rate"] == pytest.approx(0.4)
    assert out["lift"] == pytest.approx(1.25)
    none = confident_error_retrieval(logits_of(probs), labels, minority, margin=0.95)
    assert none["flagged"] == 0 and math.isnan(none["precision"]) and none["recall"] == 0


def test_readout_and_weights_by_group():
    probs = [[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]]
    labels, groups = torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 2])
    rows = readout_by_group(logits_of(probs), labels, groups, 4)
    assert [r["n"] for r in rows] == [2, 1, 1, 0]
    assert rows[0]["accuracy"] == 0 and rows[1]["accuracy"] == 1 and rows[2]["accuracy"] == 0
    assert rows[0]["mean_margin_wrong"] == pytest.approx(0.5, abs=1e-5)
    assert math.isnan(rows[1]["mean_margin_wrong"]) and math.isnan(rows[3]["accuracy"])
    w = weights_by_group(torch.tensor([3.0, 1.0, 1.0, 5.0]), groups, 4)
    assert [r["mean_weight"] for r in w[:3]] == [2.0, 1.0, 5.0]
    assert w[0]["weight_share"] == pytest.approx(0.4) and w[0]["upweighted"] == 0.5
    with pytest.raises(ValueError, match="groups"):
        weights_by_group(torch.ones(4), torch.tensor([0, 0, 1, 9]), 4)


def test_plots_draw_one_panel_per_group_and_one_point_per_method():
    import matplotlib.pyplot as plt

    from kdteach.experiments.dedier import StudentResult
    from kdteach.groups import group_metrics
    from kdteach.plots import plot_margin_histograms, plot_method_comparison

    logits = torch.randn(40, 2)
    fig = plot_margin_histograms(logits, torch.randint(0, 2, (40,)), torch.arange(40) % 4, ["a", "b", "c", "d"])
    assert len(fig.axes) == 4
    plt.close(fig)
    test = group_metrics([0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 2, 3], 4, train_group_counts=[4, 3, 2, 1])
    results = [StudentResult("d", m, s, None, test, 3, 1, 0.5) for m in ("KD", "DeDiER") for s in range(3)]
    fig = plot_method_comparison(results)
    assert len(fig.axes[0].containers) == 2  # one errorbar per method
    plt.close(fig)
    with pytest.raises(ValueError, match="same length"):
        plot_margin_histograms(logits, torch.zeros(39, dtype=torch.long), torch.zeros(40, dtype=torch.long), ["a"])
