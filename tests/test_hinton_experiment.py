"""Notebook 01's experiment: the bias shift tuned on validation data, configurations, the digit splits, the
train-or-load keys of its students, and its tables and sentences on constructed results."""
import dataclasses

import pytest
import torch

from kdteach import report
from kdteach.data.mnist import load_digit_splits
from kdteach.experiments import hinton


def test_best_bias_shift_by_hand():
    # Three class-1 examples whose class-1 logit trails class 0 by 0.3, 0.6 and 0.9, and one class-0 example that
    # class 1 trails by 1.2. A shift of 1.0 fixes all three (0.9 < 1.0 < 1.2); 0.5 fixes one, 2.0 breaks the fourth.
    logits = torch.tensor([[1.0, 0.7], [1.0, 0.4], [1.0, 0.1], [1.2, 0.0]])
    labels = torch.tensor([1, 1, 1, 0])
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([0.0, 0.5, 1.0, 2.0])) == 1.0
    # Ties go to the first candidate (the smallest, for ascending candidates): 1.0 and 1.1 both make no error.
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([1.1, 1.0])) == pytest.approx(1.1)
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([1.0, 1.1])) == 1.0


def test_config_modes():
    assert hinton.config("smoke").train_size == 3000 and hinton.config("full").train_size is None
    assert hinton.config("smoke") != hinton.config("full")
    with pytest.raises(ValueError, match="mode"):
        hinton.config("fast")


def test_digit_splits_are_a_fixed_subset_with_their_source():
    first = load_digit_splits(200, 100, "cpu", verbose=False)
    again = load_digit_splits(200, 100, "cpu", verbose=False)
    assert first.train_x.shape == (200, 1, 28, 28) and first.test_y.shape == (100,)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)  # same rows every call
    assert 0.0 <= float(first.train_x.min()) and float(first.train_x.max()) <= 1.0
    assert first.source in ("MNIST", "sklearn digits stand-in")
    assert len({int(y) for y in first.train_y}) == 10  # a random subset, not the first digits of one class
    assert first.batches("test", 64).n == 100
    with pytest.raises(ValueError, match="split"):
        first.batches("val", 64)


@pytest.fixture
def tiny(one_thread):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=generator)
    y = torch.arange(64) % 10
    cfg = dataclasses.replace(hinton.SMOKE_CONFIG, batch_size=32, student_epochs=2)
    return cfg, x, y, torch.randn(64, 10, generator=generator)


def _checkpoints():
    from kdteach import runtime

    return set((runtime.cache_dir() / "hinton").glob("*.pt"))


def test_a_student_is_trained_once_and_keyed_by_what_decides_it(tiny):
    cfg, x, y, logits = tiny
    before = _checkpoints()
    model, history = hinton.train_student(cfg, x, y, "cpu", teacher_logits=logits, width=8, seed=3, name="key-test", progress=False)
    written = _checkpoints() - before
    assert len(written) == 1 and len(history.epochs) == 2
    again, history_again = hinton.train_student(cfg, x, y, "cpu", teacher_logits=logits, width=8, seed=3, name="key-test", progress=False)
    assert _checkpoints() - before == written  # reloaded: no new file
    assert history_again.epochs == history.epochs
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # Another teacher, temperature or seed decides another model: each gets its own file.
    hinton.train_student(cfg, x, y, "cpu", teacher_logits=logits + 1, width=8, seed=3, name="key-test", progress=False)
    hinton.train_student(cfg, x, y, "cpu", teacher_logits=logits, temperature=2.0, width=8, seed=3, name="key-test", progress=False)
    hinton.train_student(cfg, x, y, "cpu", teacher_logits=logits, width=8, seed=4, name="key-test", progress=False)
    assert len(_checkpoints() - before) == 4


def _headline(alone: int, distilled: int) -> hinton.Headline:
    return hinton.Headline(test_size=1000, teacher_errors=20, alone_errors=alone, distilled_errors=distilled, temperature=20.0, soft_weight=0.9)


def test_headline_table_and_its_one_seed_comparison():
    rows = hinton.hinton_headline_rows(_headline(50, 30))
    assert [r["test errors"] for r in rows] == [20, 50, 30]
    assert [r["paper (of 10,000)"] for r in rows] == [67, 146, 74] and all(r["out of"] == 1000 for r in rows)
    # One seed: the comparison rule gives no verdict, however large the difference.
    assert report.paired_comparison([30], [50]).verdict == "too few seeds"
    text = " ".join(hinton.hinton_headline_sentences(_headline(50, 30)))
    assert "-20" in text and "clearly" not in text


def test_sweep_rows_and_best_temperature_per_width():
    sweep = hinton.TemperatureSweep(test_size=500, widths=(800, 30), temperatures=(1.0, 4.0, 20.0), errors=((40, 35, 36), (90, 60, 75)))
    assert hinton.hinton_sweep_rows(sweep) == [{"hidden units": 800, "T=1": 40, "T=4": 35, "T=20": 36},
                                               {"hidden units": 30, "T=1": 90, "T=4": 60, "T=20": 75}]
    lines = hinton.hinton_sweep_sentences(sweep)
    assert "T=4 (35 of 500)" in lines[0] and "T=4 (60 of 500)" in lines[1]


def test_omitted_and_regularizer_sentences_carry_their_numbers():
    omitted = hinton.OmittedClass(omitted=3, shift=2.5, transfer_size=900, val_size=100, test_size=1000, test_count=101,
                                  errors=(150, 60), class_errors=(101, 20))
    rows = hinton.hinton_omitted_rows(omitted)
    assert [r["test errors"] for r in rows] == [150, 60] and [r["errors on 3s"] for r in rows] == [101, 20]
    assert "+2.5" in " ".join(hinton.hinton_omitted_sentences(omitted))
    curves = hinton.RegularizerCurves(n_train=90, hard=(0.5, 0.7, 0.6), soft=(0.4, 0.6, 0.8))
    hard, soft = hinton.hinton_regularizer_sentences(curves)
    assert "0.7000 (epoch 2)" in hard and "final 0.6000" in hard and "0.8000 (epoch 3)" in soft


def test_seed_table_and_the_comparison_over_three_seeds():
    seeds = hinton.SeedErrors(test_size=10000, seeds=(0, 1, 2), alone_errors=(165, 166, 167), distilled_errors=(93, 91, 102))
    rows = hinton.hinton_seed_rows(seeds)
    assert [r["distilled - alone"] for r in rows[:3]] == [-72, -75, -65]
    # By hand: differences -72, -75, -65 have mean -70.67 and sd 5.13; the last row says so.
    assert rows[3]["distilled - alone"].startswith("-70.7 ± 5.1") and rows[3]["student alone"].startswith("166.0 ± 1.0")
    text = " ".join(hinton.hinton_seed_sentences(seeds))
    assert "clearly lower" in text and "-70.7" in text
    # The same numbers at one seed give no verdict.
    one = hinton.SeedErrors(test_size=10000, seeds=(0,), alone_errors=(165,), distilled_errors=(93,))
    assert "clearly" not in " ".join(hinton.hinton_seed_sentences(one))


def test_headline_seeds_reuses_one_teacher_and_trains_each_seed(one_thread, monkeypatch):
    cfg = dataclasses.replace(hinton.SMOKE_CONFIG, train_size=120, test_size=60, batch_size=32, student_epochs=1, seeds=(5, 6))
    data = load_digit_splits(cfg.train_size, cfg.test_size, "cpu", verbose=False)
    teacher = hinton.MLP((784, 16, 16, 10)).eval()
    trained = []
    real = hinton.train_student
    monkeypatch.setattr(hinton, "train_student", lambda *a, **k: trained.append((k["seed"], k["name"])) or real(*a, **k))
    result = hinton.headline_seeds(cfg, data, teacher, "cpu", progress=False)
    assert result.seeds == (5, 6) and trained == [(5, "student alone"), (5, "distilled"), (6, "student alone"), (6, "distilled")]
    assert all(0 <= e <= 60 for e in result.alone_errors + result.distilled_errors) and result.test_size == 60
