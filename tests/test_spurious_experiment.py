"""Notebook 02's experiment on a tiny configuration: every model trains, teachers are cached and reloaded, findings
are worded from the numbers, probes read the stages, and the headless command writes its report."""
import dataclasses
import json

import pytest
import torch

from kdteach.__main__ import main
from kdteach.experiments import spurious
from kdteach.experiments.spurious import AVERAGE, MODEL_NAMES, WORST

TINY = dataclasses.replace(
    spurious.SMOKE_CONFIG, n_train=160, n_val=80, n_test=80, image_size=8, teacher_depth=8, teacher_width=4,
    student_depth=8, student_width=2, teacher_epochs=1, student_epochs=1, batch_size=40, seeds=(0, 1), probe_rows=80,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture lives in conftest.py


@pytest.fixture(scope="module")
def result(one_thread):
    return spurious.run_experiment(TINY, progress=False)


def test_every_model_and_seed_is_scored(result):
    assert len(result.rows) == 5 * len(TINY.seeds)
    assert [row["model"] for row in result.rows[:5]] == list(MODEL_NAMES.values())
    for row in result.rows:
        assert 0 <= row[WORST] <= row["average (uniform)"] <= 1
        assert row[WORST] == min(row[name] for name in result.group_names)
    assert [row["model"] for row in result.summary] == list(MODEL_NAMES.values())
    assert result.summary[0][WORST].endswith("(n=2)")
    table = result.table()
    assert "training group proportions" in table and "| teacher (ERM) |" in table


def test_teacher_is_cached_and_reloaded_unchanged(result):
    path = spurious.teacher_checkpoint(TINY, "erm", 0)
    assert path.exists() and TINY.teacher_key() in path.name
    before = path.stat().st_mtime_ns
    again, history = spurious.train_or_load_teacher(TINY, "erm", 0)
    assert path.stat().st_mtime_ns == before  # a finished run is loaded, not retrained
    assert len(history.epochs) == TINY.teacher_epochs
    for a, b in zip(again.state_dict().values(), result.models["teacher_erm"].state_dict().values()):
        torch.testing.assert_close(a, b)
    # The smoke and full configurations never share a teacher file.
    assert spurious.config("smoke").teacher_key() != spurious.config("full").teacher_key()


def test_same_seed_gives_the_same_student():
    splits = spurious.load_splits(TINY)
    a, _ = spurious.train_student(TINY, 3, splits=splits)
    b, _ = spurious.train_student(TINY, 3, splits=splits)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y)


def test_probes_cover_every_stage(result):
    rows = result.probes["teacher_erm"]
    assert [row["stage"] for row in rows] == list(result.models["teacher_erm"].stage_names)
    assert all(0 <= row["label"] <= 1 and 0 <= row["spurious"] <= 1 for row in rows)
    # The background is a colour: even one epoch of a tiny network exposes it linearly at some stage.
    assert max(row["spurious"] for row in rows) > 0.9
    assert len(spurious.probe_findings({"m": rows})) == 1


def _rows(teacher_worst, student_worst):
    rows = []
    for seed, (t, s) in enumerate(zip(teacher_worst, student_worst)):
        rows.append({"model": MODEL_NAMES["teacher_erm"], "seed": seed, AVERAGE: 0.95, WORST: t})
        rows.append({"model": MODEL_NAMES["student_kd_erm"], "seed": seed, AVERAGE: 0.95, WORST: s})
    return rows


def test_findings_follow_the_numbers():
    # Student 10 points worse on every seed: a clear difference.
    worse = spurious.findings(_rows([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]))
    assert len(worse) == 1 and "clearly worse" in worse[0] and "-10.0 points" in worse[0]
    assert "worst-group accuracy 60.0% vs 70.0%" in worse[0]
    # Better on one seed, worse on two, by amounts larger than the mean: within the spread.
    mixed = spurious.findings(_rows([0.6, 0.7, 0.8], [0.7, 0.65, 0.75]))
    assert "within the seed-to-seed spread" in mixed[0] and "clearly" not in mixed[0]
    better = spurious.findings(_rows([0.5, 0.6], [0.6, 0.72]))
    assert "clearly better" in better[0]
    assert "one seed" in spurious.findings(_rows([0.5], [0.4]))[0]
    assert "too small" in spurious.findings(_rows([0.5], [0.4]), smoke=True)[0]


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = _rows([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    summary = spurious.summarize(rows, metrics=[WORST])
    assert summary[0] == {"model": MODEL_NAMES["teacher_erm"], WORST: "70.0 ± 10.0 (n=3)"}
    with pytest.raises(ValueError, match="rows"):
        spurious.summarize([])
    with pytest.raises(ValueError, match="mode"):
        spurious.config("medium")
    with pytest.raises(ValueError, match="kind"):
        spurious.teacher_checkpoint(TINY, "dro", 0)


def test_headless_command_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(spurious, "SMOKE_CONFIG", dataclasses.replace(TINY, seeds=(0,)))
    assert main(["spurious", "--mode", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "spurious.json").read_text())
    assert [row["model"] for row in report["rows"]] == list(MODEL_NAMES.values())
    assert report["meta"]["mode"] == "smoke" and "training group proportions" in report["meta"]["average"]
    assert (tmp_path / "spurious_groups.png").stat().st_size > 1000 and (tmp_path / "spurious_probes.png").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_a_gpu_with_amp_and_channels_last(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path))
    result = spurious.run_experiment(dataclasses.replace(TINY, seeds=(0,)), device="cuda", probes=True, progress=False)
    assert len(result.rows) == 5 and next(result.models["student_alone"].parameters()).is_cuda
    assert all(0 <= row[WORST] <= 1 for row in result.rows)


def test_smoke_threads_one_thread_in_smoke_mode_on_a_cpu_only():
    import types

    before = torch.get_num_threads()
    with spurious.smoke_threads(types.SimpleNamespace(mode="smoke"), "cpu"):
        assert torch.get_num_threads() == 1
    with spurious.smoke_threads(types.SimpleNamespace(mode="full"), "cpu"):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
