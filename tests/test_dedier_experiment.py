"""kdteach.experiments.dedier on a tiny configuration: every method runs, selection uses validation, the
conclusions follow the numbers."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdteach.experiments import dedier, spurious

TINY = dataclasses.replace(
    dedier.SMOKE_CONFIG, student_width=4, epochs=2, batch_size=32, seeds=(0,), sweep_settings=((1.0, 2.0),), stages=("layer1", "layer2"),
)
# Notebook 02's smoke data and teacher, smaller still.
TINY_SPURIOUS = dataclasses.replace(spurious.SMOKE_CONFIG, n_train=96, n_val=48, n_test=48, image_size=8, teacher_width=4, teacher_epochs=1)


@pytest.fixture(scope="module")
def prep():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spurious, "config", lambda mode=None: TINY_SPURIOUS)
        yield dedier.prepare("waterbirds_like", TINY, "cpu", progress=False)


def test_prepare_uses_notebook02_data_and_caches_teacher_outputs(prep):
    assert len(prep.train) == 96 and prep.train.images.shape[-1] == 8
    assert prep.teacher_logits.shape == (96, 2)
    assert prep.teacher_features.shape == (96, 4 * TINY_SPURIOUS.teacher_width)
    assert not prep.teacher.training
    assert prep.augment is None  # TINY.augment is False: cached teacher outputs
    assert torch.equal(prep.minority, prep.train.spurious != prep.train.labels)


def test_augmented_students_run_the_teacher_every_step(prep):
    augmented = dataclasses.replace(prep, augment=spurious.flip_and_shift(1))
    for method in ("KD", "SimKD-style"):
        run = dedier.train_student(method, augmented, dataclasses.replace(TINY, epochs=1), progress=False)
        assert 0 <= run.row[dedier.WORST] <= 1


def test_every_method_runs_and_selects_on_validation(prep):
    rows = dedier.compare(prep, TINY, progress=False)
    assert [r["method"] for r in rows] == list(dedier.METHODS)
    for row in rows:
        if row.get("note") == "empty error set":
            continue
        # The train-weighted average is a convex combination of group accuracies, so never below the worst group.
        assert 0 <= row[dedier.WORST] <= row[dedier.AVERAGE] + 1e-9 <= 1 + 1e-9
        assert row["best epoch"] in range(TINY.epochs)


def test_selected_epoch_is_the_best_validation_epoch(prep):
    run = dedier.train_student("DeDiER", prep, TINY, seed=1, progress=False)
    values = run.history.column(TINY.select)
    assert run.history.best_epoch == values.index(max(values))
    assert run.row["val metric"] == max(values)
    # DeDiER's callback recorded the readout and the weights after every epoch.
    assert "upweighted_fraction" in run.history.epochs[0]
    assert run.reweighting.weights.shape == (96,)


def test_ablations_reuse_the_main_rows(prep):
    main = dedier.compare(prep, TINY, methods=("DeDiER",), progress=False)
    stages = dedier.stage_ablation(prep, TINY, reuse=main, progress=False)
    assert stages[0] is main[0]  # layer1 is the default: not trained again
    assert stages[1]["readout stage"] == "layer2"


def test_jtt_empty_error_set_is_a_row_with_a_note(prep, monkeypatch):
    monkeypatch.setattr(dedier, "jtt_error_set", lambda model, batches: torch.zeros(len(prep.train), dtype=torch.bool))
    run = dedier.train_student("JTT", prep, TINY, progress=False)
    assert run.model is None and "error set is empty" in run.note
    assert math.isnan(run.row[dedier.WORST]) and run.row["note"] == "empty error set"
    summary = dedier.summarize([run.row])
    assert summary[0]["worst-group"] == "n/a" and "empty error set" in summary[0]["note"]


def _row(method, worst, average, seed):
    return {"dataset": "d", "method": method, "seed": seed, dedier.WORST: worst, dedier.AVERAGE: average}


def test_summarize_mean_and_std_by_hand():
    rows = [_row("KD", 0.5, 0.9, 0), _row("KD", 0.7, 0.8, 1), _row("KD", 0.6, 0.85, 2)]
    (summary,) = dedier.summarize(rows)
    assert summary["worst mean"] == pytest.approx(60.0)
    assert summary["worst std"] == pytest.approx(10.0)
    assert summary["worst-group"] == "60.0 ± 10.0 (n=3)"
    assert summary["seeds"] == 3


def test_conclusions_follow_the_numbers():
    clear = [_row("KD", w, 0.9, s) for s, w in enumerate((0.50, 0.52, 0.51))]
    clear += [_row("DeDiER", w, 0.88, s) for s, w in enumerate((0.70, 0.71, 0.69))]
    clear += [_row("Group DRO", w, 0.85, s) for s, w in enumerate((0.80, 0.81, 0.79))]
    ahead = clear + [_row(m, 0.75, 0.9, s) for m in ("JTT", "SimKD-style") for s in range(3)]
    assert "DeDiER does not win here: Group DRO, JTT and SimKD-style reach" in " ".join(dedier.conclusions(dedier.summarize(ahead), mode="full"))
    lines = dedier.conclusions(dedier.summarize(clear), mode="full")
    text = " ".join(lines)
    assert "+19.0 points, larger than the seed spread" in text
    assert "Best worst-group accuracy: Group DRO" in text and "group labels" in text
    assert "DeDiER does not win here: Group DRO reaches" in text
    assert not text.startswith("Smoke")
    text = " ".join(dedier.conclusions(dedier.summarize(clear), mode="full", rows=clear))
    assert "DeDiER - KD worst-group = +20.0, +19.0, +18.0 points: DeDiER ahead in 3 of 3 seeds." in text

    noisy = [_row("KD", w, 0.9, s) for s, w in enumerate((0.40, 0.60, 0.50))]
    noisy += [_row("DeDiER", w, 0.9, s) for s, w in enumerate((0.45, 0.65, 0.55))]
    text = " ".join(dedier.conclusions(dedier.summarize(noisy), mode="smoke"))
    assert text.startswith("Smoke mode") and "within the seed spread" in text
    assert "Best worst-group accuracy: DeDiER" in text and "does not win" not in text


def test_config_modes():
    assert dedier.config("smoke").seeds == (0,)
    assert len(dedier.config("full").seeds) >= 3
    with pytest.raises(ValueError, match="mode"):
        dedier.config("medium")
    with pytest.raises(ValueError, match="method"):
        dedier.train_student("DeDiER++", None, TINY)


def test_ablation_sentence():
    rows = [_row("DeDiER", w, 0.9, s) | {"readout stage": stage} for stage, ws in (("layer1", (0.6, 0.62)), ("layer2", (0.4, 0.41)))
            for s, w in enumerate(ws)]
    summary = dedier.summarize(rows, by=("readout stage",))
    sentence = dedier.ablation_sentence(summary, "readout stage", what="readout stage")
    assert "from 40.5% (readout stage layer2) to 61.0% (readout stage layer1)" in sentence
    assert "larger than the largest seed std" in sentence
    tie = dedier.summarize([_row("DeDiER", 0.5, 0.9, 0) | {"readout stage": s} for s in ("layer1", "layer2")], by=("readout stage",))
    assert dedier.ablation_sentence(tie, "readout stage", what="readout stage") == "Every readout stage gives the same worst-group accuracy (50.0%)."


def test_readout_findings_from_hand_made_diagnostics():
    from types import SimpleNamespace

    from kdteach.debias import confident_error_retrieval

    # 2 bias-conflicting examples, both wrong with margin 0.8; 8 aligned examples, all right.
    probs = torch.tensor([[0.9, 0.1]] * 2 + [[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)
    labels = torch.tensor([1, 1] + [0] * 4 + [1] * 4)
    minority = torch.tensor([True, True] + [False] * 8)
    logits = probs.log()
    diag = {"logits": logits, "stage": "layer1",
            "retrieval": [confident_error_retrieval(logits, labels, minority, margin=m) for m in (0.0, 0.5)]}
    prep = SimpleNamespace(train=SimpleNamespace(labels=labels), minority=minority)
    lines = dedier.readout_findings(diag, prep)
    assert lines[0].startswith("On the bias-conflicting training examples (2), the readout at layer1 is right on 0.0%")
    assert "mean margin of its errors there is 0.80" in lines[0]
    assert "right on 100.0%" in lines[1] and "n/a (no errors)" in lines[1]
    # A lift of exactly 5 is "enriched"; "strongly" needs more than 5x.
    assert lines[2] == ("Errors with margin >= 0.50 are enriched in the minority groups: precision 100.0% against a "
                        "base rate of 20.0% (5.0x), recall 100.0%.")


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
