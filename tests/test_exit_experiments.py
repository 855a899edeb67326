"""Notebooks 05 and 06 headless, on tiny configurations: the typed results, tables, figures and findings get
written, every model goes through one train-or-load (and reloads), the seed moves the calibration splits, and the
numbers in the tables are the ones the metrics compute."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kdteach import sets as S
from kdteach.experiments import exits as exit_experiment
from kdteach.experiments import sets as set_experiment

TINY_EXITS = exit_experiment.ExitConfig(train_size=128, test_size=100, depth=8, width=4, epochs=1, batch_size=64, seeds=(0,), timing_repeats=1)
TINY_SETS = set_experiment.SetsConfig(splits=4, avcs_draws=2, parallel=(1, 2), parallel_splits=2)
TINY_WIGGLE = set_experiment.WiggleConfig(n=150, width=8, depth=3, epochs=2, batch_size=64)


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(exit_experiment, "SMOKE_CONFIG", TINY_EXITS)
    monkeypatch.setattr(set_experiment, "SMOKE_SETS", TINY_SETS)
    monkeypatch.setattr(set_experiment, "SMOKE_WIGGLE", TINY_WIGGLE)
    return tmp_path


def test_exits_run_writes_the_typed_result_and_reloads_every_model_from_the_cache(tiny):
    result = exit_experiment.run(mode="smoke", out=tiny / "out", progress=False)
    written = json.loads((tiny / "out" / "exits.json").read_text())
    assert [r["stage"] for r in written["rows"]][:4] == list(exit_experiment.EXITS)
    assert written["result"]["early_exit"]["spent_macs"] == pytest.approx(written["result"]["early_exit"]["ideal_macs"])
    assert {"commit", "seeds", "config", "wall_seconds"} <= set(written["meta"])
    assert len(result.rows()) == 8 and all(0 <= r.accuracy <= 1 for r in result.rows())
    assert (tiny / "out" / "accuracy_vs_compute.png").stat().st_size > 1000
    assert len(list((tiny / "cache" / "exits").glob("distill*.pt"))) == 2  # both models through train_or_load
    data = exit_experiment.load_data(TINY_EXITS, verbose=False)
    model = exit_experiment.trained_exit_model(TINY_EXITS, data, distill_weight=0.0, progress=False)  # from the cache
    again = exit_experiment.measure_model("mean of exit losses", model, data, seed=0)
    assert again == result.models[0]
    lines = exit_experiment.exit_sentences(result, mode="smoke")
    assert any("cannot decide" in line for line in lines)  # one seed: no verdict on distilled vs plain
    assert any("the same: no stage ran twice" in line for line in lines)


def test_sets_run_writes_both_results_and_its_seed_moves_the_calibration_splits(tiny):
    classification, regression = set_experiment.run(mode="smoke", out=tiny / "out", progress=False)
    for name in ("sets", "regression"):
        assert json.loads((tiny / "out" / f"{name}.json").read_text())["result"]
    assert (tiny / "out" / "set_metrics.png").exists() and (tiny / "out" / "wiggle_intervals.png").exists()
    by = {s.method: s for s in classification.summaries}
    assert list(by) == list(classification.splits[0].methods) and "RAPS shared u ∩" in by and "Bayes" in by
    assert min(by["AVCS"].nestedness) == 1.0 and min(by["RAPS ∩"].nestedness) == 1.0
    assert by["RAPS ∩"].coverage[-1] == pytest.approx(by["RAPS ∩"].all_exit_coverage)
    assert [p.copies for p in classification.parallel] == [1, 2]
    assert [sp.seed for sp in classification.splits] == [0, 1, 2, 3]
    # the table is the summary, and the summary is the mean of the splits
    row = set_experiment.set_summary_rows(classification.summaries)[list(by).index("LAC")]
    lac = [sp.metrics[sp.methods.index("LAC")] for sp in classification.splits]
    assert row["coverage last exit"] == pytest.approx(sum(m.coverage[-1] for m in lac) / 4)
    assert set(regression.methods) == {"Bayes", "Bayes ∩", "AVCS"}
    assert regression.metrics[regression.methods.index("AVCS")].nestedness == (1.0,) * TINY_WIGGLE.depth
    assert len(set_experiment.regression_sentences(regression, alpha=0.05, mode="smoke")) == 5

    logits, labels, _ = set_experiment.held_out_logits("smoke", progress=False)  # from the cache
    moved = set_experiment.classification_experiment(logits, labels, dataclasses.replace(TINY_SETS, splits=2, parallel=(1,)), seed=1)
    assert [sp.seed for sp in moved.splits] == [10_000, 10_001]
    calib0, _ = S.calibration_split(len(labels), 0.2, seed=0)
    calib1, _ = S.calibration_split(len(labels), 0.2, seed=10_000)
    assert not torch.equal(calib0, calib1)


def test_one_split_reports_thresholds_in_their_own_units(tiny):
    logits, labels = 6 * torch.nn.functional.one_hot(torch.arange(200) % 5, 5).float().expand(3, 200, 5) + torch.randn(3, 200, 5), torch.arange(200) % 5
    result, found, eval_labels = set_experiment.one_split(logits, labels, TINY_SETS, seed=0)
    assert len(result.quantiles) == len(S.CONFORMAL_METHODS) and all(len(q) == 3 for q in result.quantiles)
    assert result.avcs.tau >= 1.0 and len(eval_labels) == 160
    assert result.metrics[result.methods.index("AVCS")] == S.set_metrics(found.sets["AVCS"], eval_labels)
