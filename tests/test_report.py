"""The report module: seed summaries and THE comparison rule, checked on constructed numbers."""
import math

import numpy as np
import pytest
from scipy import stats

from kdteach.report import comparison_sentence, mean_std, paired_comparison, paired_differences, summarize_seeds


def test_paired_differences_by_hand():
    rows = [
        {"model": "a", "seed": 0, "m": 0.50}, {"model": "b", "seed": 0, "m": 0.25},
        {"model": "a", "seed": 1, "m": 0.10}, {"model": "b", "seed": 1, "m": 0.40},
        {"model": "a", "seed": 2, "m": math.nan}, {"model": "b", "seed": 2, "m": 0.30},  # NaN: seed 2 is skipped
        {"model": "a", "seed": 3, "m": 0.90},  # b has no seed 3
    ]
    assert paired_differences(rows, "a", "b", "m") == pytest.approx([25.0, -30.0])
    assert paired_differences([{**r, "method": r["model"]} for r in rows], "b", "a", "m", key="method") == pytest.approx([-25.0, 30.0])
    assert paired_differences(rows, "a", "c", "m") == []


def test_mean_std_uses_the_sample_std():
    assert mean_std([0.5, 0.7], scale=100) == "60.0 ± 14.1 (n=2)"
    assert mean_std([0.5], scale=100) == "50.0 (n=1)" and mean_std([]) == "n/a"
    s = summarize_seeds([0.1, 0.2, math.nan, 0.6])
    assert s.n == 3 and s.mean == pytest.approx(0.3) and s.std == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))


@pytest.mark.parametrize("n", [1, 2])
def test_no_verdict_below_three_seeds(n):
    c = paired_comparison([0.9] * n, [0.1] * n)  # a huge difference, but too few seeds
    assert c.verdict == "too few seeds" and c.n == n
    assert "cannot decide" in comparison_sentence(c, what="accuracy", ours="a", reference="b")
    assert "clearly" not in comparison_sentence(c, what="accuracy", ours="a", reference="b")


def test_interval_is_the_paired_t_interval_by_hand():
    ours, ref = [0.50, 0.62, 0.55, 0.70, 0.58], [0.40, 0.45, 0.50, 0.52, 0.47]
    d = np.subtract(ours, ref)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    c = paired_comparison(ours, ref)
    assert c.mean == pytest.approx(d.mean()) and (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.n == 5 and c.n_higher == 5 and c.verdict == "clearly higher"
    assert paired_comparison(ref, ours).verdict == "clearly lower"


def test_interval_straddling_zero_is_no_clear_difference_even_when_most_seeds_agree():
    # differences +0.93, +0.75, +0.25, -0.05, -0.02: ahead in 3 of 5, mean +0.37, interval includes 0
    c = paired_comparison({0: 0.93, 1: 0.75, 2: 0.25, 3: -0.05, 4: -0.02}, {s: 0.0 for s in range(5)})
    assert c.low < 0 < c.high and c.n_higher == 3 and c.verdict == "no clear difference"
    assert "no clear difference" in comparison_sentence(c, what="worst-group accuracy", ours="DeDiER", reference="KD")


def test_three_seeds_can_decide():
    c = paired_comparison({0: 0.3, 1: 0.31, 2: 0.29}, {0: 0.1, 1: 0.1, 2: 0.1})
    assert c.verdict == "clearly higher" and c.n == 3


def test_pairs_on_shared_seeds_and_refuses_mixed_inputs():
    c = paired_comparison({0: 0.5, 1: 0.6, 7: 0.9}, {0: 0.4, 1: 0.4})
    assert c.differences == pytest.approx((0.1, 0.2))
    with pytest.raises(ValueError, match="one value per seed"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="both be"):
        paired_comparison({0: 0.1}, [0.1])


# The rule at its edges (issue 20): intervals inside the metric's range, a resolution for "clearly", bad values refused.

from kdteach.report import FRACTION, FRACTION_DIFFERENCE, RESOLUTION, mean_interval, t_interval  # noqa: E402


def _t(values):
    # The plain 95% t-interval, computed here independently of the package.
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return v.mean() - half, v.mean() + half


def test_an_interval_of_a_bounded_mean_stays_in_its_range_and_is_the_t_interval_cut_there():
    values = [0.02, 0.55, 0.98]  # three seeds spread over the whole range: the t-interval runs far outside [0, 1]
    low, high = _t(values)
    assert low < 0 and high > 1
    assert t_interval(values, bounds=FRACTION) == pytest.approx((0.0, 1.0))
    assert mean_interval(values, bounds=FRACTION, scale=100) == "51.7 [0.0, 100.0] (n=3)"
    inside = [0.80, 0.85, 0.83, 0.90]  # far from the bounds, nothing is cut
    assert t_interval(inside, bounds=FRACTION) == pytest.approx(_t(inside))
    assert mean_interval([0.95, 0.99, 1.0], bounds=FRACTION, scale=100).endswith("100.0] (n=3)")  # the upper end cut at 100


def test_a_paired_interval_never_leaves_the_range_of_a_difference():
    c = paired_comparison([1.0, 0.0, 1.0], [0.0, 1.0, 0.0], bounds=FRACTION_DIFFERENCE)  # differences +1, -1, +1
    assert _t(c.differences)[0] < -1 and _t(c.differences)[1] > 1
    assert (c.low, c.high) == pytest.approx((-1.0, 1.0)) and c.verdict == "no clear difference"
    rng = np.random.default_rng(0)
    for _ in range(200):  # random fractions: every interval inside [-1, 1], and it holds the mean
        n = int(rng.integers(2, 6))
        c = paired_comparison(list(rng.random(n)), list(rng.random(n)), bounds=FRACTION_DIFFERENCE)
        assert -1.0 <= c.low <= c.mean <= c.high <= 1.0


def test_cutting_at_the_range_keeps_the_t_intervals_coverage():
    # The true mean lies in the range, so it lies in the cut interval exactly when it lies in the t-interval: on
    # simulated seeds near a bound, the cut interval covers exactly as often as the t-interval does.
    rng = np.random.default_rng(1)
    draw = lambda size: np.clip(rng.normal(0.97, 0.05, size=size), 0, 1)  # accuracies near 100%
    expected = draw(1_000_000).mean()
    covered_t = covered_cut = cut_something = 0
    for _ in range(2000):
        values = draw(3)
        (low, high), cut = _t(values), t_interval(values, bounds=FRACTION)
        assert 0.0 <= cut[0] <= values.mean() <= cut[1] <= 1.0
        covered_t += low <= expected <= high
        covered_cut += cut[0] <= expected <= cut[1]
        cut_something += high > 1
    assert cut_something > 500  # the range does cut, often
    assert covered_t == covered_cut and covered_cut / 2000 > 0.85


def test_clearly_needs_a_difference_beyond_the_resolution():
    # "-0.0, -0.0, -0.0 labels: clearly lower" (issue 20): zero variance, negligible size
    tiny = paired_comparison([0.5001, 0.5001, 0.5001], [0.5, 0.5, 0.5], bounds=FRACTION_DIFFERENCE)
    assert tiny.low > 0 and tiny.verdict == "no clear difference" and tiny.resolution == RESOLUTION == 0.005
    words = comparison_sentence(tiny, what="accuracy", ours="a", reference="b")
    assert "within the resolution (0.5 points)" in words and "clearly" not in words
    exactly = paired_comparison([0.505, 0.505, 0.505], [0.5, 0.5, 0.5])  # at the resolution is not beyond it
    assert exactly.verdict == "no clear difference"
    beyond = paired_comparison([0.51, 0.511, 0.512], [0.5, 0.5, 0.5])
    assert beyond.verdict == "clearly higher"
    assert "resolution 0.5 points" in comparison_sentence(beyond, what="accuracy", ours="a", reference="b")
    coarse = paired_comparison([0.51, 0.511, 0.512], [0.5, 0.5, 0.5], resolution=0.02)  # a stated, coarser resolution
    assert coarse.verdict == "no clear difference"
    assert "resolution 2 points" in comparison_sentence(coarse, what="accuracy", ours="a", reference="b")
    lower = paired_comparison([0.4, 0.41, 0.39], [0.5, 0.5, 0.5])
    assert lower.verdict == "clearly lower"


def test_the_sentence_says_why_there_is_no_clear_difference():
    straddles = paired_comparison([0.6, 0.4, 0.55], [0.5, 0.5, 0.5])
    assert "the interval includes zero" in comparison_sentence(straddles, what="w", ours="a", reference="b")


def test_infinite_values_and_values_outside_the_range_are_refused_by_name():
    with pytest.raises(ValueError, match=r"ours must be finite .* inf at seed 1"):
        paired_comparison({0: 0.5, 1: math.inf, 2: 0.4}, {0: 0.4, 1: 0.4, 2: 0.4})
    with pytest.raises(ValueError, match=r"reference must be finite .* -inf at seed 0"):
        paired_comparison([0.5, 0.6, 0.7], [-math.inf, 0.4, 0.4])
    with pytest.raises(ValueError, match=r"ours - reference must lie in the metric's range \[-1, 1\] \(bounds\), got 57"):
        paired_comparison([57.8, 60.1, 55.0], [0.5, 0.4, 0.5], bounds=FRACTION_DIFFERENCE)  # percentages against fractions
    with pytest.raises(ValueError, match="values must lie in the metric's range"):
        mean_interval([0.5, 57.8], bounds=FRACTION)
    with pytest.raises(ValueError, match="values must be finite"):
        mean_interval([0.5, math.inf], bounds=FRACTION)
    with pytest.raises(ValueError, match="bounds"):
        paired_comparison([0.1] * 3, [0.2] * 3, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="resolution"):
        paired_comparison([0.1] * 3, [0.2] * 3, resolution=-0.1)
    # NaN stays what it was: a seed without a value, left out (e.g. a group absent in that seed)
    c = paired_comparison({0: 0.5, 1: math.nan, 2: 0.6, 3: 0.7}, {0: 0.4, 1: 0.4, 2: 0.5, 3: 0.6})
    assert c.n == 3 and c.seeds == (0, 2, 3)
