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
