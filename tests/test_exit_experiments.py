"""Notebooks 05 and 06 headless, on tiny configurations: the tables, figures and findings get written, the trained
models are cached and reloaded, and the numbers in the tables are the ones the metrics compute."""
from __future__ import annotations

import json

import pytest
import torch

from kdteach.experiments import exits as exit_experiment
from kdteach.experiments import sets as set_experiment

TINY_EXITS = exit_experiment.ExitConfig(train_size=128, test_size=100, depth=8, width=4, epochs=1, batch_size=64)
TINY_WIGGLE = set_experiment.WiggleConfig(n=150, width=8, depth=3, epochs=2, batch_size=64)


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(exit_experiment, "SMOKE_CONFIG", TINY_EXITS)
    monkeypatch.setattr(set_experiment, "SMOKE_WIGGLE", TINY_WIGGLE)
    return tmp_path


def test_exits_run_writes_the_per_exit_table_and_reloads_from_the_cache(tiny):
    rows = exit_experiment.run(mode="smoke", out=tiny / "out", progress=False)
    written = json.loads((tiny / "out" / "exits.json").read_text())
    assert [r["exit"] for r in written["rows"]][:4] == ["1 (stem)", "2 (layer1)", "3 (layer2)", "4 (pooled)"]
    assert len(rows) == 8 and all(0 <= r["accuracy %"] <= 100 for r in rows)
    assert (tiny / "out" / "accuracy_vs_compute.png").stat().st_size > 1000
    data = exit_experiment.load_digits(TINY_EXITS, verbose=False)
    path = exit_experiment.checkpoint_path(TINY_EXITS, data, distill_weight=0.0, seed=0)
    assert path.exists()
    model, _ = exit_experiment.trained_exit_model(TINY_EXITS, data, distill_weight=0.0, progress=False)  # from the cache
    report = exit_experiment.exit_report(model, data)
    assert rows[0]["accuracy %"] == pytest.approx(100 * float(report["accuracy"][0]))
    lines = exit_experiment.exit_findings({"plain": report, "again": report}, smoke=True)
    assert any("Smoke mode" in line for line in lines) and any("exit 1 +0.0" in line for line in lines)


def test_sets_run_writes_both_tables_and_findings_follow_the_numbers(tiny):
    rows = set_experiment.run(mode="smoke", out=tiny / "out", progress=False)
    assert [r["method"] for r in rows] == list(set_experiment.METHODS)
    for name in ("sets", "regression"):
        assert json.loads((tiny / "out" / f"{name}.json").read_text())["rows"]
    assert (tiny / "out" / "set_metrics.png").exists() and (tiny / "out" / "wiggle_intervals.png").exists()
    by_method = {r["method"]: r for r in rows}
    assert by_method["AVCS"]["min N(t)"] == 1.0 and by_method["RAPS ∩"]["min N(t)"] == 1.0
    assert by_method["RAPS ∩"]["coverage last exit"] == by_method["RAPS ∩"]["covered at every exit"]

    logits, labels, _ = set_experiment.held_out_logits("smoke", progress=False)
    summary = set_experiment.repeated_comparison(logits, labels, splits=3)
    lines = set_experiment.classification_findings(summary)
    raps_line = next(line for line in lines if line.startswith("RAPS ∩"))
    kept = float(summary["RAPS ∩"]["coverage"][-1])
    assert f"{kept:.1%}" in raps_line and (("below" in raps_line.split("coverage is")[1]) == (kept < 0.95))

    regression = set_experiment.regression_experiment("smoke", progress=False)
    assert set(regression["metrics"]) == {"Bayes", "Bayes ∩", "AVCS"}
    assert torch.equal(regression["metrics"]["AVCS"]["nestedness"], torch.ones(TINY_WIGGLE.depth, dtype=torch.float64))
    assert len(set_experiment.regression_findings(regression, smoke=True)) == 5


def test_calibration_split_is_a_partition_and_refuses_bad_fractions():
    calib, evaluation = set_experiment.calibration_split(50, 0.2, seed=3)
    assert len(calib) == 10 and sorted(torch.cat([calib, evaluation]).tolist()) == list(range(50))
    with pytest.raises(ValueError, match="fraction"):
        set_experiment.calibration_split(50, 1.0)
