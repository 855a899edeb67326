"""Shared result helpers: per-seed paired differences, and the text track's sentences built from them."""
import math

import pytest

from kdteach.experiments.report import mean_std, paired_differences


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


def test_text_findings_compare_kd_and_dedier_seed_by_seed():
    from kdteach.experiments import text

    rows = [{"model": m, "seed": s, "worst-group": w, "average (test)": 0.9}
            for s, (k, d) in enumerate([(0.1, 0.9), (0.2, 0.1), (0.0, 0.6)]) for m, w in (("KD student", k), ("DeDiER student", d))]
    lines = text.findings(text.summarize(rows), [], mode="full", rows=rows)
    line = next(x for x in lines if x.startswith("DeDiER raises"))
    # differences +80, -10, +60: mean +43.3, sample std 47.3 -> within the spread
    assert "+80.0, -10.0, +60.0" in line and "ahead in 2 of 3 seeds" in line
    assert "raises worst-group accuracy from 10.0% (KD) to 53.3%" in line and "within its seed-to-seed spread of 47.3" in line
