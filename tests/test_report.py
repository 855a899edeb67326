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
