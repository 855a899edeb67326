"""Figures of notebooks 01 and 04: what is drawn, checked on the returned matplotlib objects."""
import matplotlib

matplotlib.use("Agg")

from kdteach.plots import plot_learning_curves  # noqa: E402


def test_learning_curves_one_line_per_curve_and_the_mark():
    fig = plot_learning_curves({"KD": [0.1, 0.2, 0.3], "DeDiER": [0.1, 0.5, 0.9]}, ylabel="worst", mark=(1.5, "first reweighting"))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["DeDiER"].get_xdata()) == [1, 2, 3] and list(lines["DeDiER"].get_ydata()) == [0.1, 0.5, 0.9]
    assert list(lines["first reweighting"].get_xdata()) == [1.5, 1.5]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KD", "DeDiER", "first reweighting"]
    assert ax.get_ylabel() == "worst"
    plain = plot_learning_curves({"hard": [0.5, 0.6]})
    assert len(plain.axes[0].get_lines()) == 1


def _metrics(a, b):
    from kdteach.groups import GroupMetrics

    return GroupMetrics(per_group=(a, b), counts=(5, 5), group_names=("g0", "g1"), worst_group=min(a, b), worst_group_index=int(b < a),
                        mean_over_groups=(a + b) / 2, average_test=(a + b) / 2, average_train_weighted=(a + b) / 2)


def test_group_accuracies_bars_are_means_over_seeds_with_the_worst_group_last():
    from kdteach.plots import plot_group_accuracies

    fig = plot_group_accuracies({"teacher": [_metrics(0.8, 0.4), _metrics(0.6, 0.2)], "student": [_metrics(1.0, 0.0)]})
    ax = fig.axes[0]
    heights = [round(bar.get_height(), 6) for bar in ax.patches]
    assert heights == [70.0, 30.0, 30.0, 100.0, 0.0, 0.0]  # teacher: g0, g1, worst; then the student
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1", "worst-group"]
    assert ax.get_title() == "accuracy per group, mean ± std over 2 seeds"
    assert plot_group_accuracies({"student": [_metrics(1.0, 0.0)]}).axes[0].get_title() == "accuracy per group (1 seed)"


def test_probes_one_line_per_model_in_percent():
    from kdteach.experiments.spurious import StageProbe
    from kdteach.plots import plot_probes

    fig = plot_probes({"m": [StageProbe("stem", 0.5, 0.9), StageProbe("layer1", 0.7, 1.0)]})
    label_panel, spurious_panel = fig.axes
    assert list(label_panel.get_lines()[0].get_ydata()) == [50.0, 70.0]
    assert list(spurious_panel.get_lines()[0].get_ydata()) == [90.0, 100.0]
    assert [t.get_text() for t in label_panel.get_xticklabels()] == ["stem", "layer1"]


def test_probes_of_models_that_agree_are_not_drawn_on_top_of_each_other():
    from kdteach.experiments.spurious import StageProbe
    from kdteach.plots import plot_probes

    same = [StageProbe("stem", 0.5, 1.0), StageProbe("layer1", 0.7, 1.0)]
    spurious_panel = plot_probes({"teacher": same, "student": same, "alone": same}).axes[1]
    lines = [line for line in spurious_panel.get_lines() if line.get_label() in ("teacher", "student", "alone")]
    assert [list(line.get_ydata()) for line in lines] == [[100.0, 100.0]] * 3  # the values themselves are not moved
    assert len({tuple(line.get_xdata()) for line in lines}) == 3  # each model at its own x offset
    assert len({(line.get_marker(), str(line.get_linestyle())) for line in lines}) == 3
    offsets = [line.get_xdata()[0] for line in lines]
    assert max(abs(o) for o in offsets) < 0.5  # every point stays beside its own stage's tick


def test_soft_targets_by_temperature_one_panel_per_temperature_with_the_softmax_heights():
    import numpy as np
    import torch

    from kdteach.plots import plot_soft_targets_by_temperature

    logits = torch.tensor([8.0, 2.0, 0.0, -1.0])
    fig = plot_soft_targets_by_temperature(torch.zeros(28, 28), logits, (1.0, 4.0, 20.0), label=0)
    image_ax, *panels = fig.axes
    assert image_ax.get_title() == "label 0" and len(panels) == 3
    for ax, t in zip(panels, (1.0, 4.0, 20.0)):
        expected = np.exp(logits.numpy() / t) / np.exp(logits.numpy() / t).sum()  # the softmax at T, by numpy
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], expected, rtol=1e-6)
        assert ax.get_title().startswith(f"T = {t:g}: top {expected.max():.2f}")
        assert ax.get_ylim() == (0.0, 1.0)  # one linear scale for every panel, so the flattening is seen


def test_method_comparison_one_point_per_method_at_the_seed_means():
    from kdteach.experiments.dedier import StudentResult
    from kdteach.plots import plot_method_comparison

    results = [StudentResult("d", "KD", s, None, _metrics(1.0, w), 3, 1, 0.5) for s, w in enumerate((0.2, 0.4))]
    results.append(StudentResult("d", "JTT", 0, None, None, None, 1, float("nan"), note="empty"))  # unscored: left out
    ax = plot_method_comparison(results).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KD"]
    x, y = ax.containers[0].lines[0].get_data()
    assert (round(float(x[0]), 6), round(float(y[0]), 6)) == (65.0, 30.0)  # average (1 + 0.3) / 2, worst 0.3


def test_method_comparison_keeps_coinciding_methods_visible_and_counts_seeds():
    from kdteach.experiments.dedier import StudentResult
    from kdteach.plots import plot_method_comparison

    # KD and DeDiER at exactly the same point (as in smoke mode): different hollow markers, both in the legend.
    results = [StudentResult("d", m, 0, None, _metrics(1.0, 0.5), 3, 1, 0.5) for m in ("KD", "DeDiER")]
    ax = plot_method_comparison(results, title="d").axes[0]
    lines = [c.lines[0] for c in ax.containers]
    assert [ln.get_marker() for ln in lines][0] != [ln.get_marker() for ln in lines][1]
    assert all(ln.get_fillstyle() == "none" for ln in lines)
    assert ax.get_title() == "d (1 seed)" and "±" not in ax.get_title()
    two = [StudentResult("d", "KD", s, None, _metrics(1.0, w), 3, 1, 0.5) for s, w in enumerate((0.2, 0.4))]
    assert plot_method_comparison(two, title="d").axes[0].get_title() == "d (mean ± std over 2 seeds)"
