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


def test_probes_one_line_per_model_in_percent():
    from kdteach.experiments.spurious import StageProbe
    from kdteach.plots import plot_probes

    fig = plot_probes({"m": [StageProbe("stem", 0.5, 0.9), StageProbe("layer1", 0.7, 1.0)]})
    label_panel, spurious_panel = fig.axes
    assert list(label_panel.get_lines()[0].get_ydata()) == [50.0, 70.0]
    assert list(spurious_panel.get_lines()[0].get_ydata()) == [90.0, 100.0]


def test_method_comparison_one_point_per_method_at_the_seed_means():
    from kdteach.experiments.dedier import StudentResult
    from kdteach.plots import plot_method_comparison

    results = [StudentResult("d", "KD", s, None, _metrics(1.0, w), 3, 1, 0.5) for s, w in enumerate((0.2, 0.4))]
    results.append(StudentResult("d", "JTT", 0, None, None, None, 1, float("nan"), note="empty"))  # unscored: left out
    ax = plot_method_comparison(results).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KD"]
    x, y = ax.containers[0].lines[0].get_data()
    assert (round(float(x[0]), 6), round(float(y[0]), 6)) == (65.0, 30.0)  # average (1 + 0.3) / 2, worst 0.3
