"""Notebook 02's experiment on a tiny configuration: every model trains and is scored, every model is checkpointed
under a key of the fields that decide it and reloaded, probes read a pooled grid, the headless command writes its
report."""
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from kdteach.__main__ import main
from kdteach.data.grouped import GroupedData
from kdteach.experiments import spurious
from kdteach.experiments.spurious import MODEL_NAMES

TINY = dataclasses.replace(
    spurious.SMOKE_CONFIG, n_train=160, n_val=80, n_test=80, image_size=8, teacher_depth=8, teacher_width=4,
    student_depth=8, student_width=2, teacher_epochs=1, student_epochs=1, batch_size=40, seeds=(0, 1), probe_rows=80,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture lives in conftest.py


@pytest.fixture(scope="module")
def result(one_thread):
    return spurious.run_experiment(TINY, progress=False)


def test_every_model_and_seed_is_scored(result):
    assert [(r.model, r.seed) for r in result.runs] == [(key, seed) for seed in TINY.seeds for key in MODEL_NAMES]
    for run in result.runs:
        test = run.test
        assert 0 <= test.worst_group <= test.mean_over_groups <= 1
        assert test.worst_group == min(a for a in test.per_group if not math.isnan(a))
        assert test.group_names == result.group_names and run.epoch_kept == 1
    rows = result.summary_rows()
    assert [row["model"] for row in rows] == list(MODEL_NAMES.values())
    assert rows[0]["worst-group"].endswith("(n=2)") and rows[0]["epochs kept"] == "1, 1"
    assert "training group proportions" in result.table() and "| teacher (ERM) |" in result.table()
    assert result.per_seed("teacher_erm") == {r.seed: r.test.worst_group for r in result.runs if r.model == "teacher_erm"}


def test_every_model_is_checkpointed_and_reloaded_unchanged(result):
    splits = spurious.load_splits(TINY)
    for key in MODEL_NAMES:
        path = spurious.checkpoint(TINY, key, 0)
        assert path.exists(), key
        before = path.stat().st_mtime_ns
        again, history = spurious.train_or_load_model(TINY, key, 0, splits=splits, progress=False)
        assert path.stat().st_mtime_ns == before  # a finished run is loaded, not retrained
        assert len(history.epochs) == (TINY.teacher_epochs if key.startswith("teacher") else TINY.student_epochs)
        scores = spurious.common.score_groups(again, splits["test"], splits["train"].group_counts())
        assert scores == next(r.test for r in result.runs if r.model == key and r.seed == 0)
    with pytest.raises(ValueError, match="model"):
        spurious.checkpoint(TINY, "teacher_dro", 0)


def test_every_config_field_decides_a_model_or_is_named_as_not_deciding():
    fields = {f.name for f in dataclasses.fields(spurious.SpuriousConfig)}
    assert fields == set(spurious.TEACHER_FIELDS) | set(spurious.STUDENT_FIELDS) | set(spurious.NOT_DECIDING)
    assert not set(spurious.NOT_DECIDING) & (set(spurious.TEACHER_FIELDS) | set(spurious.STUDENT_FIELDS))

    def paths(**change):
        cfg = dataclasses.replace(TINY, **change)
        return {key: spurious.checkpoint(cfg, key, 0) for key in MODEL_NAMES}

    base = paths()
    # A student's schedule changes the students only; the teacher's width changes the teachers and the students
    # distilled from them, not the student trained alone; the probe settings change no model.
    assert [k for k, v in paths(student_epochs=2).items() if v != base[k]] == ["student_alone", "student_kd_erm", "student_kd_balanced"]
    assert [k for k, v in paths(teacher_width=8).items() if v != base[k]] == ["teacher_erm", "teacher_balanced", "student_kd_erm", "student_kd_balanced"]
    assert paths(probe_rows=7, probe_grid=1, n_test=50) == base
    assert spurious.checkpoint(spurious.config("smoke"), "teacher_erm", 0) != spurious.checkpoint(spurious.config("full"), "teacher_erm", 0)


def test_same_seed_gives_the_same_student(tmp_path, monkeypatch):
    splits = spurious.load_splits(TINY)
    a, _ = spurious.train_or_load_model(TINY, "student_kd_erm", 3, splits=splits, progress=False)
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path))  # an empty cache: trained again from scratch
    b, _ = spurious.train_or_load_model(TINY, "student_kd_erm", 3, splits=splits, progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y)


def test_probes_cover_every_spatial_stage(result):
    rows = result.probes[MODEL_NAMES["teacher_erm"]]
    assert [row.stage for row in rows] == ["stem", "layer1", "layer2", "layer3"]  # "pooled" repeats layer3: left out
    assert all(0 <= row.label <= 1 and 0 <= row.spurious <= 1 for row in rows)
    # The background is a colour: even one epoch of a tiny network exposes it linearly at some stage.
    assert max(row.spurious for row in rows) > 0.9


class _Identity(nn.Module):
    """A 'network' whose only stage is its input image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def features(self, x):
        return {"stem": x * self.scale}


def _left_or_right(n, seed):
    # A bright square in the left or the right half (the label) of an otherwise dark image: its mean is the same.
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    for i, side in enumerate(labels.tolist()):
        images[i, 0, 2:6, 4 * side:4 * side + 4] = 200
    spurious_attr = torch.randint(0, 2, (n,), generator=generator)
    return GroupedData(images, labels, spurious_attr, 2 * labels + spurious_attr, 2, 4, list("abcd"), "sides")


def test_probes_on_a_grid_see_where_global_pooling_cannot():
    fit_data, eval_data = _left_or_right(80, 0), _left_or_right(80, 1)
    (global_pool,) = spurious.probe_stages(_Identity(), fit_data, eval_data, grid=1)
    (grid,) = spurious.probe_stages(_Identity(), fit_data, eval_data, grid=2)
    assert grid.label == 1.0  # the 2x2 grid keeps which half is bright
    assert global_pool.label == pytest.approx(0.5, abs=0.1)  # the global mean cannot tell: chance
    with pytest.raises(ValueError, match="max_rows"):
        spurious.probe_stages(_Identity(), fit_data, eval_data, max_rows=1)


def test_config_modes():
    assert spurious.config("smoke") is spurious.SMOKE_CONFIG and spurious.config("full") is spurious.FULL_CONFIG
    assert len(spurious.config("full").seeds) >= 5  # the main comparison is paired over at least 5 seeds
    with pytest.raises(ValueError, match="mode"):
        spurious.config("medium")


def test_headless_command_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(spurious, "SMOKE_CONFIG", dataclasses.replace(TINY, seeds=(0,)))
    assert main(["spurious", "--mode", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    written = json.loads((tmp_path / "spurious.json").read_text())
    assert [row["model"] for row in written["rows"]] == list(MODEL_NAMES.values())
    assert {"commit", "date", "device", "torch", "wall_seconds", "seeds", "config"} <= set(written["meta"])
    assert written["meta"]["mode"] == "smoke" and "training group proportions" in written["meta"]["average"]
    assert [r["model"] for r in written["result"]["runs"]] == list(MODEL_NAMES)
    assert (tmp_path / "spurious_groups.png").stat().st_size > 1000 and (tmp_path / "spurious_probes.png").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_a_gpu_with_amp_and_channels_last(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path))
    result = spurious.run_experiment(dataclasses.replace(TINY, seeds=(0,)), device="cuda", probes=True, progress=False)
    assert len(result.runs) == 5 and all(0 <= r.test.worst_group <= 1 for r in result.runs)
