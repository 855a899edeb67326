"""Notebook 01's experiments: Hinton, Vinyals & Dean (2015) on MNIST.

- headline(): teacher 784-1200-1200-10 (dropout, max-norm, 2-pixel jitter) vs student 784-800-800-10 alone vs the
  same student distilled at T = 20, as test errors out of 10,000 beside the paper's 67 / 146 / 74;
- temperature_sweep(): distilled students of 800 and 30 units per layer over a range of T;
- omitted_class(): a student that never sees a 3, before and after raising the class-3 bias by a shift tuned on a
  validation split (the paper tuned it on the test set);
- soft_target_regularizer(): hard vs soft targets on 3% of the training set, test accuracy per epoch.

Every model goes through common.train_or_load, keyed by every value that decides it, so a rerun reloads it. The
tables and sentences about each result (hinton_*_rows, hinton_*_sentences) follow the protocol, typed by its results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdteach import report, runtime
from kdteach.report import comparison_sentence, mean_std, paired_comparison
from kdteach.data.batches import Batches, translate_by
from kdteach.data.mnist import DigitSplits, load_digit_splits
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.experiments import common
from kdteach.models.mlp import MLP
from kdteach.plots.soft_targets import plot_learning_curves
from kdteach.train import History, evaluate, predict

PAPER_ERRORS = (67, 146, 74)  # test errors of 10,000: teacher, student alone, distilled student
ONE_ERROR = 1.0  # the comparison rule's resolution on error counts: "clearly" needs a mean beyond one test example


@dataclass(frozen=True)
class HintonConfig:
    """Sizes and schedules of notebook 01 (every model: one-cycle SGD). config() picks the smoke or the full one."""

    train_size: int | None = None  # training digits used (None: all 60,000)
    test_size: int | None = None  # test digits used (None: all 10,000)
    val_size: int = 5000  # digits held out of the omitted-class transfer set, to tune its bias shift on
    batch_size: int = 128
    # The jittered, dropout-regularised teacher keeps improving long after the student has converged: in our CPU
    # runs (seed 0) it made 87 test errors after 60 epochs and 75 after 150.
    teacher_epochs: int = 150
    student_epochs: int = 40  # the headline students and the omitted-class one
    teacher_lr: float = 0.1  # peak learning rates
    student_lr: float = 0.05
    temperature: float = 20.0  # T of the headline distillation
    soft_weight: float = 0.9  # weight of the soft term; the hard term gets 1 - soft_weight
    sweep_temperatures: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 8.0, 20.0)
    sweep_widths: tuple[int, ...] = (800, 30)  # units per hidden layer of the swept students
    sweep_epochs: int = 20
    regularizer_fraction: float = 0.03  # the share of the training set the 3% students see
    regularizer_epochs: int = 60
    # The headline's students at each of these seeds, all distilled from the first seed's teacher (the question is
    # about students; a teacher costs half an hour on a CPU). The other experiments use the first seed only.
    seeds: tuple[int, ...] = (0, 1, 2)


SMOKE_CONFIG = HintonConfig(
    train_size=3000, test_size=2000, val_size=500, teacher_epochs=3, student_epochs=3,
    sweep_temperatures=(1.0, 4.0, 20.0), sweep_epochs=2, regularizer_epochs=6, seeds=(0,),
)
FULL_CONFIG = HintonConfig()


def config(mode: str | None = None) -> HintonConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


def load_data(cfg: HintonConfig, device: torch.device | str, *, verbose: bool = True) -> DigitSplits:
    """MNIST (or the sklearn-digits stand-in when MNIST is absent), cut to cfg's sizes, on device."""
    return load_digit_splits(cfg.train_size, cfg.test_size, device, verbose=verbose)


def _train(model: MLP, train: Batches, path: Path, *, epochs: int, lr: float, device: torch.device | str, desc: str,
           progress: bool, **fit_kwargs: Any) -> History:
    # Every model of the notebook: one-cycle SGD (Nesterov momentum 0.9), checkpointed and resumed at `path`.
    optimizer, scheduler = common.optimizer_and_schedule(model, total_steps=epochs * len(train), lr=lr, kind="sgd", schedule="onecycle")
    return common.train_or_load(model, train, path=path, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
                                device=device, progress=progress, desc=desc, **fit_kwargs)


def train_teacher(cfg: HintonConfig, data: DigitSplits, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> MLP:
    """Trains (or reloads from the cache) the paper's teacher on jittered digits; returns it in eval mode.

    784-1200-1200-10 with dropout (0.2 on the inputs, 0.5 on the hidden units) and max-norm 3.5 on each unit's weights.
    """
    torch.manual_seed(seed)
    model = MLP((784, 1200, 1200, 10), dropout=0.5, input_dropout=0.2, max_norm=3.5)
    train = data.batches("train", cfg.batch_size, shuffle=True, seed=seed, augment=translate_by(2))
    path = common.checkpoint_path("hinton", "teacher", data.source, cfg.train_size, cfg.batch_size, cfg.teacher_epochs, cfg.teacher_lr, seed)
    _train(model, train, path, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, device=device, desc="teacher", progress=progress)
    return model.eval()


def train_student(cfg: HintonConfig, train_x: torch.Tensor, train_y: torch.Tensor, device: torch.device | str, *,
                  teacher_logits: torch.Tensor | None = None, temperature: float | None = None, width: int = 800,
                  epochs: int | None = None, seed: int = 0, name: str = "student", source: str = "MNIST", metrics: Any = None,
                  progress: bool = True) -> tuple[MLP, History]:
    """Trains (or reloads) a 784-width-width-10 student on hard labels, or distilled from cached teacher logits.

    The transfer set is not jittered, as in the paper, so the teacher's logits are computed once, not every step.

    Args:
        cfg, device: the configuration (batch size, lr, soft weight; epochs unless given); where to train.
        train_x, train_y: the transfer set; teacher_logits: the teacher's (N, 10) logits on it, None: hard labels.
        temperature, width, epochs, seed: T (default cfg.temperature), units per layer, epochs (default
            cfg.student_epochs), seed of the initialisation and the shuffling.
        name, source: progress-bar label and checkpoint role; the data's name (both part of the key).
        metrics, progress: fit's per-epoch metrics (e.g. test accuracy for a learning curve); progress bars.

    Returns:
        The trained student (eval mode) and its History.
    """
    epochs = epochs or cfg.student_epochs
    distilled = teacher_logits is not None
    temperature = (temperature or cfg.temperature) if distilled else None
    soft_weight = cfg.soft_weight if distilled else None
    torch.manual_seed(seed)
    model = MLP((784, width, width, 10))
    tensors = {"x": train_x, "y": train_y, **({"teacher_logits": teacher_logits} if distilled else {})}
    train = Batches(tensors, cfg.batch_size, shuffle=True, seed=seed)
    # The transfer set enters the key by its labels and the teacher's logits on it: another subset or another
    # teacher changes them. The source and train_size name the digits themselves.
    path = common.checkpoint_path("hinton", name, source, cfg.train_size, len(train_y), train_y, teacher_logits, temperature,
                                  soft_weight, width, epochs, cfg.student_lr, cfg.batch_size, seed)
    kwargs = {"loss_fn": KDLoss(temperature=temperature, soft_weight=soft_weight)} if distilled else {}
    history = _train(model, train, path, epochs=epochs, lr=cfg.student_lr, device=device, desc=name, progress=progress,
                     metrics=metrics, **kwargs)
    return model.eval(), history


def test_errors(model: MLP, data: DigitSplits) -> int:
    """Test errors of a model (out of len(data.test_y))."""
    return int(evaluate(model, data.batches("test", 1000))["errors"])


@dataclass(frozen=True)
class Headline:
    """Test errors (out of test_size) of one seed's teacher, student alone and distilled student, and the paper's."""

    test_size: int
    teacher_errors: int
    alone_errors: int
    distilled_errors: int
    temperature: float
    soft_weight: float
    paper_errors: tuple[int, int, int] = PAPER_ERRORS  # teacher, alone, distilled, out of 10,000


def headline(cfg: HintonConfig, data: DigitSplits, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> tuple[Headline, MLP]:
    """Teacher vs student alone vs distilled student; returns the Headline and the teacher (reused by the rest)."""
    teacher = train_teacher(cfg, data, device, seed=seed, progress=progress)
    logits = cache_teacher_logits(teacher, data.batches("train", 1024))
    alone, _ = train_student(cfg, data.train_x, data.train_y, device, seed=seed, name="student alone", source=data.source, progress=progress)
    distilled, _ = train_student(cfg, data.train_x, data.train_y, device, teacher_logits=logits, seed=seed, name="distilled",
                                 source=data.source, progress=progress)
    errors = (test_errors(m, data) for m in (teacher, alone, distilled))
    return Headline(len(data.test_y), *errors, cfg.temperature, cfg.soft_weight), teacher


@dataclass(frozen=True)
class SeedErrors:
    """Test errors (out of test_size) of the headline's two students at several seeds, all from one teacher."""

    test_size: int
    seeds: tuple[int, ...]
    alone_errors: tuple[int, ...]
    distilled_errors: tuple[int, ...]


def headline_seeds(cfg: HintonConfig, data: DigitSplits, teacher: MLP, device: torch.device | str, *, seeds: tuple[int, ...] | None = None,
                   progress: bool = True) -> SeedErrors:
    """The student alone and the distilled student at every seed of cfg.seeds (or seeds), distilled from one teacher.

    The headline's own seed reloads its students from the cache; a seed moves the students' initialisation and shuffling.
    """
    seeds = tuple(seeds if seeds is not None else cfg.seeds)
    logits = cache_teacher_logits(teacher, data.batches("train", 1024))
    errors: dict[str, list[int]] = {"student alone": [], "distilled": []}
    for seed in seeds:
        for name, teacher_logits in (("student alone", None), ("distilled", logits)):
            model, _ = train_student(cfg, data.train_x, data.train_y, device, teacher_logits=teacher_logits, seed=seed, name=name,
                                     source=data.source, progress=progress)
            errors[name].append(test_errors(model, data))
    return SeedErrors(len(data.test_y), seeds, tuple(errors["student alone"]), tuple(errors["distilled"]))


@dataclass(frozen=True)
class TemperatureSweep:
    """Test errors (out of test_size) of distilled students: errors[w][t] for widths[w] and temperatures[t]."""

    test_size: int
    widths: tuple[int, ...]
    temperatures: tuple[float, ...]
    errors: tuple[tuple[int, ...], ...]


def temperature_sweep(cfg: HintonConfig, data: DigitSplits, teacher: MLP, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> TemperatureSweep:
    """Distilled students of each width in cfg.sweep_widths at each T in cfg.sweep_temperatures (the test set draws
    the curves; it chooses nothing)."""
    logits = cache_teacher_logits(teacher, data.batches("train", 1024))
    errors = []
    for width in cfg.sweep_widths:
        students = [train_student(cfg, data.train_x, data.train_y, device, teacher_logits=logits, temperature=t, width=width,
                                  epochs=cfg.sweep_epochs, seed=seed, name="sweep", source=data.source, progress=progress)[0]
                    for t in cfg.sweep_temperatures]
        errors.append(tuple(test_errors(student, data) for student in students))
    return TemperatureSweep(len(data.test_y), tuple(cfg.sweep_widths), tuple(cfg.sweep_temperatures), tuple(errors))


def best_bias_shift(logits: torch.Tensor, labels: torch.Tensor, target_class: int, shifts: torch.Tensor) -> float:
    """The shift of one class's logit (its output bias), among `shifts`, with the fewest errors on (logits, labels).

    Ties go to the first candidate (the smallest, for ascending shifts as the notebook uses).
    """
    errors = []
    for shift in shifts:
        shifted = logits.clone()
        shifted[:, target_class] += shift
        errors.append(int((shifted.argmax(1) != labels).sum()))
    return float(shifts[int(np.argmin(errors))])


@dataclass(frozen=True)
class OmittedClass:
    """A student distilled without one class, before and after its bias shift (test errors, overall and on it)."""

    omitted: int  # the class the transfer set lacks
    shift: float  # chosen on the validation digits
    transfer_size: int
    val_size: int
    test_size: int
    test_count: int  # test examples of the omitted class
    errors: tuple[int, int]  # test errors before and after the shift
    class_errors: tuple[int, int]  # of them, on the omitted class


def omitted_class(cfg: HintonConfig, data: DigitSplits, teacher: MLP, device: torch.device | str, *, omitted: int = 3, seed: int = 0, progress: bool = True) -> OmittedClass:
    """Distils into a student whose transfer set has no example of one class, then corrects that class's bias.

    The last cfg.val_size training digits are held out of the transfer set; the bias shift is chosen on them
    (the paper chose it on the test set) and then applied once to the test set.
    """
    n_val = cfg.val_size
    keep = data.train_y[:-n_val] != omitted
    transfer_x, transfer_y = data.train_x[:-n_val][keep], data.train_y[:-n_val][keep]
    val_x, val_y = data.train_x[-n_val:], data.train_y[-n_val:]
    logits = cache_teacher_logits(teacher, Batches({"x": transfer_x}, 1024))
    student, _ = train_student(cfg, transfer_x, transfer_y, device, teacher_logits=logits, seed=seed, name=f"no-{omitted}s",
                               source=data.source, progress=progress)
    shift = best_bias_shift(predict(student, Batches({"x": val_x}, 1000)), val_y, omitted, torch.arange(0.0, 10.01, 0.25))
    test_logits = predict(student, data.batches("test", 1000))
    shifted = test_logits.clone()
    shifted[:, omitted] += shift
    is_omitted = data.test_y == omitted
    before, after = (z.argmax(1) != data.test_y for z in (test_logits, shifted))
    return OmittedClass(omitted, shift, len(transfer_y), n_val, len(data.test_y), int(is_omitted.sum()), (int(before.sum()), int(after.sum())),
                        (int(before[is_omitted].sum()), int(after[is_omitted].sum())))


@dataclass(frozen=True)
class RegularizerCurves:
    """Test accuracy after every epoch of two students on n_train digits: hard targets and soft targets."""

    n_train: int
    hard: tuple[float, ...]
    soft: tuple[float, ...]


def soft_target_regularizer(cfg: HintonConfig, data: DigitSplits, teacher: MLP, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> RegularizerCurves:
    """Hard vs soft targets on a small fraction of the training set: test accuracy after every epoch.

    The teacher was trained on the full set; the students see only cfg.regularizer_fraction of it.
    """
    n = max(int(cfg.regularizer_fraction * len(data.train_y)), 10)
    rows = torch.as_tensor(np.random.default_rng(seed).permutation(len(data.train_y))[:n], device=data.train_y.device)
    x, y = data.train_x[rows], data.train_y[rows]
    test = data.batches("test", 1000)
    curves = {}
    logits = cache_teacher_logits(teacher, Batches({"x": x}, 1024))
    for name, teacher_logits in (("hard", None), ("soft", logits)):
        _, history = train_student(cfg, x, y, device, teacher_logits=teacher_logits, epochs=cfg.regularizer_epochs, seed=seed,
                                   name=f"3%-{name}", source=data.source, progress=progress,
                                   metrics=lambda model: {"test_acc": evaluate(model, test)["accuracy"]})
        curves[name] = tuple(history.column("test_acc"))
    return RegularizerCurves(n, curves["hard"], curves["soft"])


@dataclass(frozen=True)
class HintonResult:
    """Everything run() measured, for one seed, on one data source."""

    seed: int
    source: str
    headline: Headline
    seeds: SeedErrors
    sweep: TemperatureSweep
    omitted: OmittedClass
    regularizer: RegularizerCurves


# Tables and sentences. Every result but SeedErrors is one seed: the sentences print the numbers, and where two numbers
# are compared they say one seed cannot decide (paired_comparison's verdict).


def hinton_headline_rows(headline: Headline) -> list[dict[str, Any]]:
    """The headline's table: each model's test errors beside the paper's (of 10,000).

    Args:
        headline: a Headline.

    Returns:
        Three rows: model, architecture, test errors, out of, paper (of 10,000).
    """
    h = headline
    models = (("teacher", "784-1200-1200-10, dropout, max-norm, jitter", h.teacher_errors),
              ("student alone", "784-800-800-10, hard labels", h.alone_errors),
              ("distilled student", f"784-800-800-10, T={h.temperature:g}, soft weight {h.soft_weight}", h.distilled_errors))
    return [{"model": name, "architecture": arch, "test errors": errors, "out of": h.test_size, "paper (of 10,000)": paper}
            for (name, arch, errors), paper in zip(models, h.paper_errors)]


def hinton_sweep_rows(sweep: TemperatureSweep) -> list[dict[str, Any]]:
    """The temperature sweep as one row per width: "hidden units" and a "T=..." column of test errors per T."""
    return [{"hidden units": w, **{f"T={t:g}": e for t, e in zip(sweep.temperatures, row)}} for w, row in zip(sweep.widths, sweep.errors)]


def hinton_omitted_rows(omitted: OmittedClass) -> list[dict[str, Any]]:
    """The omitted-class table: test errors, and errors on the omitted class, before and after the bias shift."""
    c = omitted.omitted
    return [{"": when, "test errors": total, f"errors on {c}s": on_class, f"test {c}s": omitted.test_count}
            for when, total, on_class in zip(("before", "after"), omitted.errors, omitted.class_errors)]


def hinton_headline_sentences(headline: Headline) -> list[str]:
    """The headline in words: the three error counts, and distilled against alone through paired_comparison."""
    h = headline
    c = paired_comparison([h.distilled_errors], [h.alone_errors], bounds=(-h.test_size, h.test_size), resolution=ONE_ERROR)
    return [f"Test errors out of {h.test_size}: teacher {h.teacher_errors}, student alone {h.alone_errors}, distilled student "
            f"{h.distilled_errors} (the paper, out of 10,000: {' / '.join(map(str, h.paper_errors))}).",
            comparison_sentence(c, what="test errors", ours="distilled student", reference="student alone", scale=1.0, unit=" errors")]


def hinton_seed_rows(seeds: SeedErrors) -> list[dict[str, Any]]:
    """The headline's students at several seeds: one row per seed, then the mean ± std.

    Args:
        seeds: a SeedErrors.

    Returns:
        Rows: seed, student alone, distilled student, distilled - alone (test errors).
    """
    rows = [{"seed": s, "student alone": a, "distilled student": d, "distilled - alone": d - a}
            for s, a, d in zip(seeds.seeds, seeds.alone_errors, seeds.distilled_errors)]
    diffs = [d - a for a, d in zip(seeds.alone_errors, seeds.distilled_errors)]
    return rows + [{"seed": "mean ± std", "student alone": mean_std(seeds.alone_errors), "distilled student": mean_std(seeds.distilled_errors),
                    "distilled - alone": mean_std(diffs)}]


def hinton_seed_sentences(seeds: SeedErrors) -> list[str]:
    """The headline's students over seeds, in words: distilled against alone by paired_comparison."""
    c = paired_comparison(list(seeds.distilled_errors), list(seeds.alone_errors), bounds=(-seeds.test_size, seeds.test_size), resolution=ONE_ERROR)
    return [f"Over seeds {list(seeds.seeds)} (one teacher): student alone {mean_std(seeds.alone_errors)}, distilled "
            f"{mean_std(seeds.distilled_errors)} test errors out of {seeds.test_size}.",
            comparison_sentence(c, what="test errors", ours="distilled student", reference="student alone", scale=1.0, unit=" errors")]


def hinton_sweep_sentences(sweep: TemperatureSweep) -> list[str]:
    """Per width, the temperature with the fewest test errors; one seed, so it says the ranking is not decided."""
    lines = []
    for width, row in zip(sweep.widths, sweep.errors):
        best = min(range(len(row)), key=row.__getitem__)
        lines.append(f"{width} units per layer: fewest test errors at T={sweep.temperatures[best]:g} ({row[best]} of {sweep.test_size}); "
                     f"errors from {min(row)} to {max(row)} across T. One seed cannot decide which temperature is best.")
    return lines


def hinton_omitted_sentences(omitted: OmittedClass) -> list[str]:
    """The omitted-class experiment in numbers: the transfer set, the shift, errors before and after it."""
    o, c = omitted, omitted.omitted
    return [f"Transfer set: {o.transfer_size} digits without a {c}; bias shift chosen on {o.val_size} validation digits: {o.shift:+g}.",
            f"Before the shift: {o.errors[0]} test errors, {o.class_errors[0]} of them on the {o.test_count} test {c}s.",
            f"After the shift: {o.errors[1]} test errors, {o.class_errors[1]} of them on {c}s."]


def hinton_regularizer_sentences(curves: RegularizerCurves) -> list[str]:
    """Hard and soft targets on a few digits: each curve's best test accuracy (and its epoch) and its last."""
    lines = []
    for name, values in (("hard", curves.hard), ("soft", curves.soft)):
        best = max(range(len(values)), key=values.__getitem__)
        lines.append(f"{name} targets on {curves.n_train} digits: best test accuracy {values[best]:.4f} (epoch {best + 1}), "
                     f"final {values[-1]:.4f}.")
    return lines


def hinton_sentences(result: HintonResult) -> list[str]:
    """Every sentence about a HintonResult, in the notebook's order."""
    return (hinton_headline_sentences(result.headline) + hinton_seed_sentences(result.seeds) + hinton_sweep_sentences(result.sweep)
            + hinton_omitted_sentences(result.omitted) + hinton_regularizer_sentences(result.regularizer))


def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> HintonResult:
    """Notebook 01 headless: the headline (its students at every seed of the config), the sweep, the omitted 3s and the
    3% students (one seed).

    Args:
        mode, seed, progress: "smoke" or "full"; the seed of the teacher and of every model (added to cfg.seeds for the
            headline's students); progress bars.
        out: folder for hinton.json / .md, hinton_sweep.*, hinton_omitted.* and the figure (None: write nothing).

    Returns:
        HintonResult.
    """
    cfg = config(mode)
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started = time.perf_counter()
    data = load_data(cfg, device)
    top, teacher = headline(cfg, data, device, seed=seed, progress=progress)
    seeds = headline_seeds(cfg, data, teacher, device, seeds=tuple(s + seed for s in cfg.seeds), progress=progress)
    result = HintonResult(seed, data.source, top, seeds, temperature_sweep(cfg, data, teacher, device, seed=seed, progress=progress),
                          omitted_class(cfg, data, teacher, device, seed=seed, progress=progress),
                          soft_target_regularizer(cfg, data, teacher, device, seed=seed, progress=progress))
    print(report.markdown_table(hinton_headline_rows(top)))
    print("\n".join(hinton_sentences(result) + [report.smoke_note(mode)]))
    if out is not None:
        meta = {"mode": mode, "data": data.source, "findings": [line for line in hinton_sentences(result) if line],
                **report.provenance(experiment="hinton", config=cfg, seeds=list(seeds.seeds), wall_seconds=time.perf_counter() - started, device=str(device))}
        curves = result.regularizer
        figure = plot_learning_curves({"hard targets": curves.hard, "soft targets": curves.soft}, title=f"Student on {curves.n_train} training digits")
        report.write_report(out, "hinton", rows=hinton_headline_rows(top), meta=meta, figures={"regularizer": figure}, result=result,
                            title="Hinton et al. (2015) on MNIST")
        report.write_report(out, "hinton_seeds", rows=hinton_seed_rows(seeds), meta=meta,
                            title="The headline's students at several seeds, from one teacher (test errors)")
        report.write_report(out, "hinton_sweep", rows=hinton_sweep_rows(result.sweep), meta=meta, title="Temperature sweep (test errors)")
        report.write_report(out, "hinton_omitted", rows=hinton_omitted_rows(result.omitted), meta=meta,
                            title="Omitted class, bias shift tuned on validation data")
    return result
