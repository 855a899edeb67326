"""kdteach.exits: the multi-exit wrapper on MLP and ResNet backbones, exit costs, the exit policies (simulated and
really stopping), the multi-exit losses, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdteach.data.batches import Batches
from kdteach.exits import (
    MultiExit,
    MultiExitLoss,
    ResidualMLP,
    calibration_error,
    confidence_exit,
    early_exit_predict,
    exit_accuracy,
    exit_costs,
    exit_feature_vectors,
    exit_logits,
    measure_early_exit,
    multi_exit_mse,
    reliability_bins,
    threshold_curve,
)
from kdteach.models.mlp import MLP
from kdteach.models.resnet import CifarResNet
from kdteach.train import fit


def mlp_exits(seed: int = 0) -> MultiExit:
    torch.manual_seed(seed)
    return MultiExit(MLP((12, 16, 16, 16, 5)), 5, example_input=torch.zeros(1, 12)).eval()


def test_multi_exit_mlp_has_a_head_per_stage_and_reuses_the_classifier():
    model = mlp_exits()
    assert model.exit_names == ("hidden1", "hidden2", "hidden3") and model.num_exits == 3
    assert model.heads[-1] is model.backbone.classifier
    x = torch.randn(7, 12)
    out = model(x)
    assert out.shape == (3, 7, 5)
    assert torch.allclose(out[-1], model.backbone(x), atol=1e-6)  # the last exit is the backbone itself
    for k in range(3):
        assert torch.allclose(model.forward_exit(x, k), out[k], atol=1e-6)


def test_multi_exit_resnet_pools_feature_maps_before_the_heads():
    torch.manual_seed(0)
    backbone = CifarResNet(8, 4, 3, in_channels=1)
    model = MultiExit(backbone, 3, example_input=torch.zeros(1, 1, 12, 12), exits=("stem", "layer2", "pooled"), head_pool=2)
    widths = [h.in_features for h in model.heads]
    assert widths == [4 * 2 * 2, 8 * 2 * 2, 16]  # stem: 4 channels x 2x2 cells; pooled is already a vector
    model.eval()
    x = torch.randn(5, 1, 12, 12)
    assert model(x).shape == (3, 5, 3)
    features = exit_feature_vectors(model, x, batch_size=2)
    assert [tuple(f.shape) for f in features] == [(5, 16), (5, 32), (5, 16)]


def test_exit_costs_grow_and_match_a_hand_count():
    model = mlp_exits()
    costs = exit_costs(model, torch.zeros(1, 12))
    macs = [c.macs for c in costs]
    # hidden layers 12x16, 16x16, 16x16; heads 16x5 each: reaching exit t runs layers 1..t and heads 1..t
    assert macs == [12 * 16 + 16 * 5, 12 * 16 + 16 * 16 + 2 * 16 * 5, 12 * 16 + 2 * 16 * 16 + 3 * 16 * 5]
    assert costs[-1].params == sum(p.numel() for p in model.parameters())
    assert [c.stage for c in costs] == list(model.exit_names)


def test_early_exit_predict_matches_the_simulated_policy_and_really_skips_stages():
    model = mlp_exits(1)
    x = torch.randn(200, 12)
    logits = model(x)
    for threshold in (0.0, 0.3, 0.45, [0.4, 0.5, 0.0], 1.0):
        index, prediction = confidence_exit(logits, threshold)
        real = early_exit_predict(model, x, threshold)
        assert torch.equal(index, real.exit_index) and torch.equal(prediction, real.predictions)
    calls = []
    hook = model.backbone.hidden[2].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    real = early_exit_predict(model, x, 0.0)  # everyone is confident at exit 0: later stages never run
    assert calls == [] and (real.exit_index == 0).all()
    real = early_exit_predict(model, x, 0.45)
    assert sum(calls) == int((real.exit_index == 2).sum())  # the last stage ran only for the examples that reached it
    hook.remove()


def resnet_exits() -> MultiExit:
    torch.manual_seed(0)
    backbone = CifarResNet(8, 4, 5, in_channels=1)
    return MultiExit(backbone, 5, example_input=torch.zeros(1, 1, 12, 12), exits=("stem", "layer1", "pooled"), head_pool=2).eval()


def residual_exits() -> MultiExit:
    torch.manual_seed(0)
    return MultiExit(ResidualMLP(3, 8, 4, 5), 5, example_input=torch.zeros(2, 3)).eval()


@pytest.mark.parametrize("make, shape, first_stage", [
    (mlp_exits, (12,), lambda m: m.backbone.hidden[0]),
    (resnet_exits, (1, 12, 12), lambda m: m.backbone.stem),
    (residual_exits, (3,), lambda m: m.backbone.blocks[0]),
])
def test_early_exit_outputs_are_the_full_models_exit_outputs_and_no_stage_runs_twice(make, shape, first_stage):
    model = make()
    x = torch.randn(120, *shape)
    full = model(x).detach()
    threshold = float(torch.softmax(full[0], -1).max(-1).values.median())  # about half leave at exit 1
    real = early_exit_predict(model, x, threshold)
    assert 0 < int((real.exit_index == 0).sum()) < len(x)
    for k in range(model.num_exits):
        here = real.exit_index == k
        torch.testing.assert_close(real.logits[here], full[k][here], atol=1e-5, rtol=1e-5)
    # each stage runs once per example that reaches it: the first stage sees the N rows once, never more
    rows = []
    hook = first_stage(model).register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    early_exit_predict(model, x, threshold)
    hook.remove()
    assert rows == [len(x)]


def test_spent_macs_equal_the_ideal_count_and_the_run_is_timed():
    model = resnet_exits()
    x = torch.randn(64, 1, 12, 12)
    threshold = float(torch.softmax(model(x)[0].detach(), -1).max(-1).values.median())
    run = measure_early_exit(model, x, threshold, repeats=2)
    costs = [c.macs for c in exit_costs(model, x)]
    index = early_exit_predict(model, x, threshold).exit_index
    assert run.matches_simulated and run.repeats == 2
    assert run.spent_macs == pytest.approx(run.ideal_macs, rel=1e-12)
    assert run.ideal_macs == pytest.approx(sum(costs[int(k)] for k in index) / len(x))
    assert costs[0] < run.spent_macs < costs[-1] == run.full_macs
    assert sum(run.exit_shares) == pytest.approx(1.0) and run.early_seconds > 0 and run.full_seconds > 0


def test_confidence_exit_sends_everyone_to_the_last_exit_at_certainty():
    logits = torch.randn(3, 50, 4)  # no softmax of these reaches 1.0 exactly
    index, prediction = confidence_exit(logits, 1.0)
    assert (index == 2).all() and torch.equal(prediction, logits[2].argmax(1))


def test_threshold_curve_spans_cheapest_to_full_compute():
    logits = torch.randn(3, 100, 4)
    labels = torch.randint(0, 4, (100,))
    rows = threshold_curve(logits, labels, [1.0, 2.0, 5.0], thresholds=[0.0, 1.0])
    assert rows[0].mean_macs == 1.0 and rows[1].mean_macs == 5.0
    assert rows[1].accuracy == pytest.approx(float(exit_accuracy(logits, labels)[-1]))
    assert rows[0].exit_shares == (1.0, 0.0, 0.0)


def test_multi_exit_loss_is_the_mean_of_exit_losses_and_distils_without_touching_the_last_exit():
    outputs = torch.randn(3, 8, 5, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    plain = MultiExitLoss()(outputs, {"y": labels})
    expected = torch.stack([F.cross_entropy(outputs[t], labels) for t in range(3)]).mean()
    assert torch.allclose(plain, expected)
    distilled = MultiExitLoss(distill_weight=1.0, temperature=2.0)(outputs, {"y": labels})
    (grad,) = torch.autograd.grad(distilled, outputs)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(outputs[2], labels) / 3, outputs)
    assert torch.allclose(grad[2], ce_grad[2], atol=1e-6)  # the teacher (last exit) is detached


def test_calibration_error_and_accuracy_on_a_hand_made_example():
    # two examples, one exit: confidences 0.8 (right) and 0.6 (wrong), in different bins of 10
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]]])
    logits = probs.log()
    labels = torch.tensor([0, 1])
    assert exit_accuracy(logits, labels).tolist() == [0.5]
    assert calibration_error(logits, labels, bins=10).tolist() == pytest.approx([(0.2 + 0.6) / 2])
    assert calibration_error(logits, labels, bins=1).tolist() == pytest.approx([abs(0.7 - 0.5)])
    count, confidence, accuracy = reliability_bins(logits, labels, bins=10)
    assert count[0, 8] == 1 and count[0, 6] == 1 and count.sum() == 2 and torch.isnan(confidence[0, 0])
    assert float(confidence[0, 8]) == pytest.approx(0.8) and float(accuracy[0, 6]) == 0.0


def test_ece_is_the_count_weighted_gap_of_the_reliability_bins():
    g = torch.Generator().manual_seed(0)
    logits, labels = 3 * torch.randn(2, 500, 4, generator=g), torch.randint(0, 4, (500,), generator=g)
    count, confidence, accuracy = reliability_bins(logits, labels)  # the default bins are the ECE's (15)
    assert count.shape == (2, 15)
    by_hand = []
    for t in range(2):
        conf, pred = torch.softmax(logits[t].double(), -1).max(-1)
        which = (conf * 15).long().clamp(max=14)
        by_hand.append(sum(abs(float(conf[which == b].mean()) - float((pred == labels)[which == b].double().mean())) * int((which == b).sum())
                           for b in range(15) if (which == b).any()) / 500)
    assert calibration_error(logits, labels).tolist() == pytest.approx(by_hand)


def test_fit_trains_a_multi_exit_classifier_and_a_regressor():
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    y = (x[:, 0] > 0).long()
    model = MultiExit(MLP((12, 16, 16, 2)), 2, example_input=x)
    history = fit(model, Batches({"x": x, "y": y}, 16, shuffle=True), epochs=2, optimizer=torch.optim.Adam(model.parameters(), 1e-2), loss_fn=MultiExitLoss(distill_weight=0.5), progress=False)
    assert len(history.epochs) == 2 and "train_acc" in history.last
    assert exit_logits(model, x).shape == (2, 64, 2)
    reg = MultiExit(ResidualMLP(1, 8, 3, 1), 1, example_input=torch.zeros(2, 1))
    xr = torch.randn(64, 1)
    history = fit(reg, Batches({"x": xr, "target": xr[:, 0] ** 2}, 16), epochs=2, optimizer=torch.optim.Adam(reg.parameters(), 1e-2), loss_fn=multi_exit_mse, progress=False)
    assert len(history.epochs) == 2 and reg(xr).shape == (3, 64, 1)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="exits"):
        MultiExit(MLP((4, 8, 8, 2)), 2, example_input=torch.zeros(1, 4), exits=("hidden3",))
    with pytest.raises(ValueError, match="exits"):
        MultiExit(MLP((4, 8, 8, 2)), 2, example_input=torch.zeros(1, 4), exits=("hidden2", "hidden1"))
    with pytest.raises(ValueError, match="backbone"):
        MultiExit(torch.nn.Linear(4, 2), 2, example_input=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="head_pool"):
        MultiExit(MLP((4, 8, 2)), 2, example_input=torch.zeros(1, 4), head_pool=0)
    model = mlp_exits()
    with pytest.raises(ValueError, match="threshold"):
        confidence_exit(torch.randn(3, 4, 5), [0.5, 0.5])
    with pytest.raises(ValueError, match="threshold"):
        early_exit_predict(model, torch.randn(4, 12), [0.5, 0.5])
    with pytest.raises(ValueError, match="exit_index"):
        model.forward_exit(torch.randn(2, 12), 3)
    with pytest.raises(ValueError, match="exit_macs"):
        threshold_curve(torch.randn(3, 4, 5), torch.zeros(4, dtype=torch.long), [1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        exit_accuracy(torch.randn(3, 4, 5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="distill_weight"):
        MultiExitLoss(distill_weight=1.5)
    with pytest.raises(ValueError, match="depth"):
        ResidualMLP(depth=0)


def test_reliability_diagram_uses_the_ece_bins_and_only_joins_bins_with_enough_examples():
    from kdteach.plots import plot_reliability

    g = torch.Generator().manual_seed(0)
    logits, labels = 2 * torch.randn(2, 300, 4, generator=g), torch.randint(0, 4, (300,), generator=g)
    count, _, _ = reliability_bins(logits, labels)
    fig = plot_reliability(logits, labels, min_count=10)
    lines = fig.axes[0].get_lines()  # the diagonal, then per exit: joined bins, sparse bins; then the legend marker
    for t in range(2):
        joined, sparse = lines[1 + 2 * t], lines[2 + 2 * t]
        assert len(joined.get_xdata()) == int((count[t] >= 10).sum())
        assert len(sparse.get_xdata()) == int(((count[t] > 0) & (count[t] < 10)).sum()) and sparse.get_linestyle() == "None"
    assert "15 bins" in fig.axes[0].get_title()


# Bad inputs of issue 22: each refused with a ValueError naming the argument, before torch sees it.
@pytest.mark.parametrize("labels, seen", [([0, 1, 5, 2], r"\[0, 5\]"), ([0, -1, 2, 2], r"\[-1, 2\]")])
def test_multi_exit_loss_refuses_labels_out_of_range(labels, seen):
    with pytest.raises(ValueError, match=rf"batch\['y'\] must be in \[0, 5\), got values in {seen}"):
        MultiExitLoss()(torch.randn(3, 4, 5), {"y": torch.tensor(labels)})
    with pytest.raises(ValueError, match=r"outputs must be floating point"):
        MultiExitLoss()(torch.zeros(3, 4, 5, dtype=torch.long), {"y": torch.tensor([0, 1, 2, 3])})


def test_exit_accuracy_refuses_labels_out_of_range_instead_of_scoring_them_wrong():
    logits = torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\), got values in \[0, 5\]"):
        exit_accuracy(logits, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\), got values in \[-3, 2\]"):
        exit_accuracy(logits, torch.tensor([0, 1, -3, 2]))
    with pytest.raises(ValueError, match=r"labels must hold integer class indices, got torch.float32"):
        exit_accuracy(logits, torch.tensor([0.0, 1.0, 2.0, 2.0]))
    # In range, the accuracy is the share of argmax hits, per exit.
    labels = logits[1].argmax(1)
    assert exit_accuracy(logits, labels)[1] == 1.0


@pytest.mark.parametrize("threshold, got", [(1.5, "got 1.5"), (-0.1, "got -0.1"), ([0.5, 0.5, 2.0], r"got values in \[0.5, 2\]"),
                                            ([0.5, float("nan"), 0.5], "got 0.5 and NaN")])
def test_confidence_exit_refuses_a_threshold_outside_0_1(threshold, got):
    with pytest.raises(ValueError, match=rf"threshold must be in \[0, 1\] \(a softmax confidence\), {got}"):
        confidence_exit(torch.randn(3, 4, 5), threshold)
    with pytest.raises(ValueError, match=r"threshold must be a confidence in \[0, 1\] or one per exit \(3\), got 'high'"):
        confidence_exit(torch.randn(3, 4, 5), "high")
