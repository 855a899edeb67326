"""kdteach.experiments.dedier on a tiny configuration: every method runs through its builder, every student is
checkpointed under a key of what decides it, selection uses validation and never keeps an epoch before DeDiER's
first reweighting, and a comparison killed in the middle of a student resumes it and ends with the same table."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdteach import train
from kdteach.experiments import common, dedier, spurious

TINY = dataclasses.replace(
    dedier.SMOKE_CONFIG, student_width=4, epochs=3, batch_size=32, seeds=(0,), sweep_settings=((1.0, 2.0),), stages=("layer1", "layer2"),
)
# Notebook 02's smoke data and teacher, smaller still.
TINY_SPURIOUS = dataclasses.replace(spurious.SMOKE_CONFIG, n_train=96, n_val=48, n_test=48, image_size=8, teacher_width=4, teacher_epochs=1)

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture lives in conftest.py


@pytest.fixture(scope="module")
def prep(one_thread):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spurious, "config", lambda mode=None: TINY_SPURIOUS)
        yield dedier.prepare("waterbirds_like", TINY, "cpu", progress=False)


@pytest.fixture
def epochs_run(monkeypatch):
    """Counts the training epochs fit() actually runs (a reloaded model runs none)."""
    calls = []
    real = train.train_one_epoch

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", counting)
    return calls


def test_prepare_uses_notebook02_data_and_teacher(prep):
    assert len(prep.train) == 96 and prep.train.images.shape[-1] == 8
    assert prep.teacher_logits.shape == (96, 2) and prep.teacher_features.shape == (96, 4 * TINY_SPURIOUS.teacher_width)
    assert not prep.teacher.training and prep.augment is None  # TINY.augment is False: cached teacher outputs
    assert prep.key == spurious.checkpoint(TINY_SPURIOUS, "teacher_balanced", 0).stem
    assert 0 <= prep.teacher_test.worst_group <= 1


def test_every_method_runs_and_selects_on_validation(prep):
    results = dedier.compare(prep, TINY, progress=False)
    assert [r.method for r in results] == list(dedier.METHODS)
    for r in results:
        if r.test is None:
            assert r.method == "JTT" and "error set is empty" in r.note
            continue
        # The train-weighted average is a convex combination of group accuracies, so never below the worst group.
        assert 0 <= r.test.worst_group <= r.test.average_train_weighted + 1e-9 <= 1 + 1e-9
        assert r.first_eligible <= r.epoch_kept <= TINY.epochs
    (kd,) = [r for r in results if r.method == "KD"]
    (deder,) = [r for r in results if r.method == "DeDiER"]
    assert kd.first_eligible == 1 and deder.first_eligible == TINY.start_after + 1
    assert deder.setting == dedier.Setting(TINY.alpha, TINY.beta, TINY.readout_stage)


def test_dedier_keeps_no_epoch_before_its_first_reweighting_and_ties_go_to_the_later_epoch(prep, monkeypatch):
    # Every epoch scores the same on validation: the tie must go to the last epoch, never to epoch 0.
    monkeypatch.setattr(common, "group_val_metrics", lambda *args: lambda model: {"val_worst_group": 0.0, "val_mean_group": 0.5})
    monkeypatch.setenv("KDTEACH_CACHE", str(common.runtime.cache_dir() / "ties"))
    run = dedier.train_student("DeDiER", prep, TINY, seed=1, progress=False)
    scores = run.history.column(common.SELECTION)
    assert scores[0] == -math.inf  # epoch 0 is plain KD: not eligible
    assert run.history.best_epoch == TINY.epochs - 1 and run.result.epoch_kept == TINY.epochs
    assert "upweighted_fraction" in run.history.epochs[-1]  # the readout reweighted after the epochs that count
    kd = dedier.train_student("KD", prep, TINY, seed=1, progress=False)
    assert kd.result.epoch_kept == TINY.epochs  # ties go to the later epoch for every method


def test_selected_epoch_is_the_best_eligible_validation_epoch(prep):
    run = dedier.train_student("DeDiER", prep, TINY, seed=2, progress=False)
    values = run.history.column(TINY.select)
    eligible = range(TINY.start_after, TINY.epochs)
    best = max(values[e] for e in eligible)
    assert run.history.best_epoch == max(e for e in eligible if values[e] == best)
    assert run.result.selection_value == best and run.result.epoch_kept == run.history.best_epoch + 1


def test_selection_rule_by_hand():
    val = spurious.load_splits(TINY_SPURIOUS)["val"]
    batches = val.batches(16)
    metrics = common.selection_metrics(val, batches, by="val_mean_group", first_epoch=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    scores = []
    for epoch in range(4):
        batches.set_epoch(epoch)
        row = metrics(model)
        scores.append(row[common.SELECTION])
    assert scores[:2] == [-math.inf, -math.inf]
    assert scores[2] == row["val_mean_group"] + 2 * common.TIE_BREAK and scores[3] > scores[2]  # same model: later wins
    with pytest.raises(ValueError, match="by"):
        common.selection_metrics(val, batches, by="val_acc")


def test_every_config_field_decides_a_student_or_is_named_as_not_deciding():
    fields = {f.name for f in dataclasses.fields(dedier.DeDiERConfig)}
    deciding = set(dedier.STUDENT_FIELDS).union(*map(set, dedier.METHOD_FIELDS.values()))
    assert fields == deciding | set(dedier.NOT_DECIDING) and not deciding & set(dedier.NOT_DECIDING)
    assert set(dedier.METHOD_FIELDS) == set(dedier.BUILDERS) == set(dedier.METHODS)


def test_students_are_checkpointed_and_reloaded_not_retrained(prep, epochs_run):
    first = dedier.compare(prep, TINY, methods=("KD", "Group DRO"), progress=False)
    epochs_run.clear()
    again = dedier.compare(prep, TINY, methods=("KD", "Group DRO"), progress=False)
    assert epochs_run == [] and again == first
    # A setting that decides the student is a different checkpoint: trained, not reloaded.
    dedier.compare(prep, dataclasses.replace(TINY, temperature=2.0), methods=("KD",), progress=False)
    assert len(epochs_run) == TINY.epochs


def test_a_killed_comparison_resumes_the_student_it_was_in_and_ends_with_the_same_table(prep, tmp_path, monkeypatch):
    real, calls, kill_at = train.train_one_epoch, [], None

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            raise KeyboardInterrupt  # a Colab disconnect in the middle of the last (DeDiER) student, after its 2nd epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", killed)
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "straight"))
    straight = dedier.compare(prep, TINY, progress=False)  # the uninterrupted run, in its own cache
    kill_at, calls[:] = len(calls), []  # its last epoch is the DeDiER student's 3rd
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        dedier.compare(prep, TINY, progress=False)
    calls.clear()
    kill_at = -1
    resumed = dedier.compare(prep, TINY, progress=False)
    assert len(calls) == 1  # the five finished students are loaded; DeDiER resumes for its one missing epoch
    assert resumed == straight
    assert dedier.dedier_summary_rows(resumed) == dedier.dedier_summary_rows(straight)


def test_jtt_empty_error_set_is_a_result_with_a_note(prep, monkeypatch):
    monkeypatch.setattr(dedier, "jtt_error_set", lambda model, batches: torch.zeros(len(prep.train), dtype=torch.bool))
    run = dedier.train_student("JTT", prep, TINY, progress=False)
    assert run.model is None and run.result.test is None and "error set is empty" in run.result.note
    (row,) = dedier.dedier_summary_rows([run.result])
    assert row["worst-group"] == "n/a" and row["seeds"] == 0 and "error set is empty" in row["note"]


def test_ablations_start_from_the_reference_setting(prep, epochs_run):
    dedier.compare(prep, TINY, methods=("DeDiER",), progress=False)
    epochs_run.clear()
    stages = dedier.ablation(prep, TINY, "stage", progress=False)
    assert [r.setting.stage for r in stages] == ["layer1", "layer2"]
    assert len(epochs_run) == TINY.epochs  # layer1 is the default: reloaded, only layer2 trained
    sweep = dedier.ablation(prep, TINY, "alpha, beta", progress=False)
    assert [(r.setting.alpha, r.setting.beta) for r in sweep] == [(TINY.alpha, TINY.beta), (1.0, 2.0)]
    with pytest.raises(ValueError, match="by"):
        dedier.ablation(prep, TINY, "temperature")


def test_ablations_use_the_few_seeds_and_compare_takes_seeds(prep):
    # The main comparison runs cfg.seeds; the ablations (and colored_digits' table) cfg.few_seeds.
    cfg = dataclasses.replace(TINY, seeds=(0, 1), few_seeds=(1,))
    assert [r.seed for r in dedier.ablation(prep, cfg, "stage", progress=False)] == [1, 1]
    assert [(r.method, r.seed) for r in dedier.compare(prep, cfg, methods=("ERM",), progress=False)] == [("ERM", 0), ("ERM", 1)]
    assert [r.seed for r in dedier.compare(prep, cfg, methods=("ERM",), seeds=cfg.few_seeds, progress=False)] == [1]
    full = dedier.config("full")
    assert len(full.seeds) >= 5 and len(full.few_seeds) >= 3 and set(full.few_seeds) <= set(full.seeds)


def test_readout_diagnostics_by_group(prep):
    kd = dedier.train_student("KD", prep, TINY, progress=False)
    diag, logits = dedier.readout_diagnostics(prep, TINY, kd.model)
    assert logits.shape == (96, 2) and diag.stage == TINY.readout_stage
    assert [row["group"] for row in diag.by_group] == prep.train.group_names
    minority = prep.train.spurious != prep.train.labels
    assert diag.conflicting[0] == int(minority.sum()) and diag.aligned[0] == int((~minority).sum())
    assert [r["margin"] for r in diag.retrieval] == list(TINY.margins)


def test_config_modes_and_bad_arguments(prep):
    assert dedier.config("smoke").seeds == (0,) and len(dedier.config("full").seeds) >= 3
    assert dedier.config("smoke").select == dedier.config("full").select == "val_mean_group"  # as in notebook 02
    with pytest.raises(ValueError, match="mode"):
        dedier.config("medium")
    with pytest.raises(ValueError, match="method"):
        dedier.train_student("DeDiER++", prep, TINY)
    with pytest.raises(ValueError, match="variant"):
        dedier.Setting(0.1, 1.0, "layer1", "official code")
    with pytest.raises(ValueError, match="start_after"):
        dedier.train_student("DeDiER", prep, dataclasses.replace(TINY, epochs=1))


def test_full_mode_takes_notebook02_full_data_and_real_data_says_where_to_put_it(tmp_path, monkeypatch):
    full = dedier.config("full")
    assert dedier.notebook02_config("waterbirds_like", full) == spurious.config("full")  # so its teacher is reused
    digits = dedier.notebook02_config("colored_digits", full)
    assert (digits.dataset, digits.n_train) == ("colored_digits", full.digits_sizes[0])
    monkeypatch.setenv("KDTEACH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Waterbirds|waterbird"):
        dedier.prepare("waterbirds", dedier.real_config("smoke"), "cpu", progress=False)
    with pytest.raises(ValueError, match="dataset"):
        dedier.notebook02_config("imagenet", full)
