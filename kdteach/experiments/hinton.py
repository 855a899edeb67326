"""Notebook 01's experiments: Hinton, Vinyals & Dean (2015) on MNIST.

- headline(): teacher 784-1200-1200-10 (dropout, max-norm, 2-pixel jitter) vs student 784-800-800-10 alone vs the
  same student distilled at T = 20, as test errors out of 10,000 beside the paper's 67 / 146 / 74;
- temperature_sweep(): distilled students of 800 and 30 units per layer over a range of T;
- omitted_class(): a student that never sees a 3, before and after raising the class-3 bias by a shift tuned on a
  validation split (the paper tuned it on the test set);
- soft_target_regularizer(): hard vs soft targets on 3% of the training set, test accuracy per epoch.

Every trained model is checkpointed in kd.runtime.cache_dir(), keyed by its configuration, so a rerun reloads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdteach import runtime
from kdteach.data.batches import Batches, translate_by
from kdteach.data.mnist import load_mnist_or_standin, to_float
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.report import markdown_table, write_report
from kdteach.models.mlp import MLP
from kdteach.train import History, evaluate, fit, predict

PAPER_ERRORS = {"teacher": 67, "student alone": 146, "distilled student": 74}


@dataclass(frozen=True)
class HintonConfig:
    """Sizes and schedules of notebook 01. config() picks the smoke or the full one.

    Attributes:
        train_size: training digits used (None: all 60,000).
        test_size: test digits used (None: all 10,000).
        val_size: digits held out of the training set for tuning (omitted-class bias shift).
        batch_size: minibatch size of every run.
        teacher_epochs, student_epochs: epochs of the headline models.
        teacher_lr, student_lr: peak learning rates of the one-cycle SGD schedule.
        temperature: T of the headline distillation.
        soft_weight: weight of the soft term (the hard term gets 1 - soft_weight).
        sweep_temperatures, sweep_widths, sweep_epochs: the temperature sweep.
        regularizer_fraction, regularizer_epochs: the 3% experiment.
    """

    train_size: int | None = None
    test_size: int | None = None
    val_size: int = 5000
    batch_size: int = 128
    # The jittered, dropout-regularised teacher keeps improving long after the student has converged: in our CPU
    # runs (seed 0) it made 87 test errors after 60 epochs and 75 after 150.
    teacher_epochs: int = 150
    student_epochs: int = 40
    teacher_lr: float = 0.1
    student_lr: float = 0.05
    temperature: float = 20.0
    soft_weight: float = 0.9
    sweep_temperatures: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 8.0, 20.0)
    sweep_widths: tuple[int, ...] = (800, 30)
    sweep_epochs: int = 20
    regularizer_fraction: float = 0.03
    regularizer_epochs: int = 60

    def key(self) -> str:
        """A short hash of the configuration, used in checkpoint file names."""
        return hashlib.sha1(repr(dataclasses.astuple(self)).encode()).hexdigest()[:10]


SMOKE_CONFIG = HintonConfig(
    train_size=3000, test_size=2000, val_size=500, teacher_epochs=3, student_epochs=3,
    sweep_temperatures=(1.0, 4.0, 20.0), sweep_epochs=2, regularizer_epochs=6,
)


def config(mode: str | None = None) -> HintonConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    return SMOKE_CONFIG if mode == "smoke" else HintonConfig()


@dataclass
class MnistSplits:
    """Float images in [0, 1] (N, 1, 28, 28) and labels, already on the device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def batches(self, split: str, batch_size: int, **kwargs: Any) -> Batches:
        """Batches over "train" or "test"."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return Batches({"x": x, "y": y}, batch_size, **kwargs)


def load_data(cfg: HintonConfig, device: torch.device | str, *, verbose: bool = True) -> MnistSplits:
    """MNIST (or the sklearn-digits stand-in when MNIST is absent), subsampled as cfg says, on device.

    Args:
        cfg: the configuration (train_size, test_size).
        device: where the tensors go (they stay there for the whole notebook).
        verbose: say which data is used.

    Returns:
        MnistSplits.
    """
    train_x, train_y = load_mnist_or_standin("train", verbose=verbose)
    test_x, test_y = load_mnist_or_standin("test", verbose=verbose)
    source = "MNIST" if len(train_y) == 60_000 else "sklearn digits stand-in"

    def subset(x: torch.Tensor, y: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if size is None or size >= len(y):
            return x, y
        rows = torch.as_tensor(np.random.default_rng(0).permutation(len(y))[:size])
        return x[rows], y[rows]

    train_x, train_y = subset(train_x, train_y, cfg.train_size)
    test_x, test_y = subset(test_x, test_y, cfg.test_size)
    if verbose and (cfg.train_size or cfg.test_size):
        print(f"kdteach: using a subset: {len(train_y)} training and {len(test_y)} test digits")
    return MnistSplits(to_float(train_x).to(device), train_y.to(device), to_float(test_x).to(device), test_y.to(device), source)


def teacher_model() -> MLP:
    """Hinton et al.'s teacher: 784-1200-1200-10 with dropout (0.2 on inputs, 0.5 on hidden units) and max-norm."""
    return MLP((784, 1200, 1200, 10), dropout=0.5, input_dropout=0.2, max_norm=3.5)


def student_model(width: int = 800) -> MLP:
    """The student: 784-width-width-10, no regularisation."""
    return MLP((784, width, width, 10))


def _sgd(model: torch.nn.Module, lr: float, epochs: int, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    return optimizer, scheduler


def _checkpoint(name: str, cfg: HintonConfig, seed: int, source: str) -> Path:
    # The key hashes the whole configuration, so smoke and full runs (and edits to either) never share a file.
    tag = "mnist" if source == "MNIST" else "digits"
    return runtime.cache_dir() / "hinton" / f"{name}-{tag}-{cfg.key()}-seed{seed}.pt"


def train_mlp(
    model: MLP,
    train: Batches,
    *,
    epochs: int,
    lr: float,
    device: torch.device | str,
    name: str,
    checkpoint: Path | None,
    loss_fn: Any = None,
    metrics: Any = None,
    progress: bool = True,
) -> History:
    """Trains one MLP with one-cycle SGD (momentum 0.9, Nesterov), checkpointed and resumable.

    Args:
        model: the network.
        train: training Batches (with "teacher_logits" for cached distillation).
        epochs: number of epochs.
        lr: peak learning rate.
        device: where to train.
        name: progress-bar label.
        checkpoint: file to checkpoint to and resume from (None: no checkpoint).
        loss_fn: fit's loss function (default cross-entropy).
        metrics: fit's per-epoch metrics.
        progress: show progress bars.

    Returns:
        fit()'s History.
    """
    optimizer, scheduler = _sgd(model, lr, epochs, len(train))
    kwargs = {"loss_fn": loss_fn} if loss_fn is not None else {}
    with runtime.cpu_threads(runtime.threads_for_rows(train.n, device)):
        return fit(
            model, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler, device=device, metrics=metrics,
            checkpoint=checkpoint, resume=checkpoint is not None, progress=progress, desc=name, **kwargs,
        )


def train_teacher(cfg: HintonConfig, data: MnistSplits, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> MLP:
    """Trains (or reloads from the cache) the 1200-1200 teacher on jittered digits."""
    torch.manual_seed(seed)
    model = teacher_model()
    train = data.batches("train", cfg.batch_size, shuffle=True, seed=seed, augment=translate_by(2))
    train_mlp(model, train, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, device=device, name="teacher",
              checkpoint=_checkpoint("teacher", cfg, seed, data.source), progress=progress)
    return model.eval()


def train_student(
    cfg: HintonConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    device: torch.device | str,
    *,
    teacher_logits: torch.Tensor | None = None,
    temperature: float | None = None,
    width: int = 800,
    epochs: int | None = None,
    seed: int = 0,
    name: str = "student",
    source: str = "MNIST",
    metrics: Any = None,
    progress: bool = True,
) -> tuple[MLP, History]:
    """Trains a student on hard labels (teacher_logits None) or by distillation from cached teacher logits.

    The transfer set is the training set without jitter, as in the paper, so the teacher's logits are computed
    once (cache_teacher_logits) rather than in every step.

    Args:
        cfg: the configuration (batch size, lr, soft weight; epochs unless given).
        train_x, train_y: the transfer set.
        device: where to train.
        teacher_logits: (N, 10) cached logits of the teacher on train_x, or None for hard-label training.
        temperature: T of the soft term (default cfg.temperature).
        width: units per hidden layer.
        epochs: default cfg.student_epochs.
        seed: seed of the initialisation and the shuffling.
        name: progress-bar label and checkpoint name.
        source: the data's name, part of the checkpoint key.
        metrics: fit's per-epoch metrics (e.g. test accuracy for a learning curve).
        progress: show progress bars.

    Returns:
        The trained student and its History.
    """
    epochs = epochs or cfg.student_epochs
    temperature = temperature or cfg.temperature
    torch.manual_seed(seed)
    model = student_model(width)
    tensors = {"x": train_x, "y": train_y}
    loss_fn = None
    if teacher_logits is not None:
        tensors["teacher_logits"] = teacher_logits
        loss_fn = KDLoss(temperature=temperature, soft_weight=cfg.soft_weight)
    train = Batches(tensors, cfg.batch_size, shuffle=True, seed=seed)
    tag = f"{name}-w{width}-T{temperature:g}-e{epochs}-n{len(train_y)}" if teacher_logits is not None else f"{name}-w{width}-e{epochs}-n{len(train_y)}"
    history = train_mlp(model, train, epochs=epochs, lr=cfg.student_lr, device=device, name=name, loss_fn=loss_fn,
                        checkpoint=_checkpoint(tag, cfg, seed, source), metrics=metrics, progress=progress)
    return model.eval(), history


def test_errors(model: MLP, data: MnistSplits) -> int:
    """Test errors of a model (out of len(data.test_y))."""
    return int(evaluate(model, data.batches("test", 1000))["errors"])


def headline(cfg: HintonConfig, data: MnistSplits, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> tuple[list[dict[str, Any]], MLP]:
    """Teacher vs student alone vs distilled student: test errors beside the paper's.

    Returns:
        The table rows and the trained teacher (reused by the later experiments).
    """
    started = time.perf_counter()
    teacher = train_teacher(cfg, data, device, seed=seed, progress=progress)
    logits = cache_teacher_logits(teacher, data.batches("train", 1024))
    alone, _ = train_student(cfg, data.train_x, data.train_y, device, seed=seed, name="student alone", source=data.source, progress=progress)
    distilled, _ = train_student(cfg, data.train_x, data.train_y, device, teacher_logits=logits, seed=seed, name="distilled", source=data.source, progress=progress)
    n = len(data.test_y)
    rows = [
        {"model": name, "architecture": arch, "test errors": test_errors(model, data), "out of": n, "paper (of 10,000)": PAPER_ERRORS[name]}
        for name, arch, model in (
            ("teacher", "784-1200-1200-10, dropout, max-norm, jitter", teacher),
            ("student alone", "784-800-800-10, hard labels", alone),
            ("distilled student", f"784-800-800-10, T={cfg.temperature:g}, soft weight {cfg.soft_weight}", distilled),
        )
    ]
    rows[0]["seconds (all three)"] = round(time.perf_counter() - started, 1)
    return rows, teacher


def temperature_sweep(cfg: HintonConfig, data: MnistSplits, teacher: MLP, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Test errors of distilled students of each width in cfg.sweep_widths at each T in cfg.sweep_temperatures.

    The test set is used to draw the curve, not to choose T for any other result.
    """
    logits = cache_teacher_logits(teacher, data.batches("train", 1024))
    rows = []
    for width in cfg.sweep_widths:
        row: dict[str, Any] = {"hidden units": width}
        for t in cfg.sweep_temperatures:
            student, _ = train_student(cfg, data.train_x, data.train_y, device, teacher_logits=logits, temperature=t, width=width,
                                       epochs=cfg.sweep_epochs, seed=seed, name="sweep", source=data.source, progress=progress)
            row[f"T={t:g}"] = test_errors(student, data)
        rows.append(row)
    return rows


def best_bias_shift(logits: torch.Tensor, labels: torch.Tensor, target_class: int, shifts: torch.Tensor) -> float:
    """The shift added to one class's logit (its output bias) that gives the fewest errors on (logits, labels).

    Args:
        logits: (N, C) validation logits.
        labels: (N,) validation labels.
        target_class: the class whose bias is shifted.
        shifts: candidate shifts.

    Returns:
        The best shift; among ties, the first candidate (the smallest, for ascending shifts as the notebook uses).
    """
    errors = []
    for shift in shifts:
        shifted = logits.clone()
        shifted[:, target_class] += shift
        errors.append(int((shifted.argmax(1) != labels).sum()))
    return float(shifts[int(np.argmin(errors))])


def omitted_class(cfg: HintonConfig, data: MnistSplits, teacher: MLP, device: torch.device | str, *, omitted: int = 3, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Distils into a student whose transfer set has no example of one class, then corrects that class's bias.

    The last cfg.val_size training digits are held out of the transfer set; the bias shift is chosen on them
    (the paper chose it on the test set) and then applied once to the test set.

    Returns:
        {"shift", "before": {...}, "after": {...}} with test errors overall and on the omitted class.
    """
    n_val = cfg.val_size
    transfer_x, transfer_y = data.train_x[:-n_val], data.train_y[:-n_val]
    val_x, val_y = data.train_x[-n_val:], data.train_y[-n_val:]
    keep = transfer_y != omitted
    transfer_x, transfer_y = transfer_x[keep], transfer_y[keep]
    logits = cache_teacher_logits(teacher, Batches({"x": transfer_x}, 1024))
    student, _ = train_student(cfg, transfer_x, transfer_y, device, teacher_logits=logits, seed=seed, name=f"no-{omitted}s",
                               source=data.source, progress=progress)
    val_logits = predict(student, Batches({"x": val_x}, 1000))
    shift = best_bias_shift(val_logits, val_y, omitted, torch.arange(0.0, 10.01, 0.25))
    test_logits = predict(student, data.batches("test", 1000))
    is_omitted = data.test_y == omitted

    def summary(logits: torch.Tensor) -> dict[str, int]:
        wrong = logits.argmax(1) != data.test_y
        return {"test errors": int(wrong.sum()), f"errors on {omitted}s": int(wrong[is_omitted].sum()), f"test {omitted}s": int(is_omitted.sum())}

    shifted = test_logits.clone()
    shifted[:, omitted] += shift
    return {"shift": shift, "before": summary(test_logits), "after": summary(shifted), "val_size": n_val, "transfer_size": len(transfer_y)}


def soft_target_regularizer(cfg: HintonConfig, data: MnistSplits, teacher: MLP, device: torch.device | str, *, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Hard vs soft targets on a small fraction of the training set: test accuracy after every epoch.

    The teacher was trained on the full set; the students see only cfg.regularizer_fraction of it. Hard targets
    overfit and need early stopping; soft targets carry enough information per example that they do not.

    Returns:
        {"hard": [test accuracy per epoch], "soft": [...], "n_train": [size]}.
    """
    n = max(int(cfg.regularizer_fraction * len(data.train_y)), 10)
    rows = torch.as_tensor(np.random.default_rng(seed).permutation(len(data.train_y))[:n], device=data.train_y.device)
    x, y = data.train_x[rows], data.train_y[rows]
    test = data.batches("test", 1000)

    def test_accuracy(model: torch.nn.Module) -> dict[str, float]:
        return {"test_acc": evaluate(model, test)["accuracy"]}

    curves: dict[str, list[float]] = {"n_train": [float(n)]}
    logits = cache_teacher_logits(teacher, Batches({"x": x}, 1024))
    for name, teacher_logits in (("hard", None), ("soft", logits)):
        _, history = train_student(cfg, x, y, device, teacher_logits=teacher_logits, epochs=cfg.regularizer_epochs, seed=seed,
                                   name=f"3%-{name}", source=data.source, metrics=test_accuracy, progress=progress)
        curves[name] = history.column("test_acc")
    return curves


def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Runs notebook 01's headline experiment (and, in the same run, the sweep, omitted-3 and 3% experiments).

    Args:
        mode: "smoke" or "full".
        out: folder for hinton.json / hinton.md and the figures (None: write nothing).
        seed: seed of every model.
        progress: show progress bars.

    Returns:
        {"headline": rows, "sweep": rows, "omitted": dict, "regularizer": curves, "meta": dict}.
    """
    from kdteach.plots.soft_targets import plot_learning_curves

    cfg = config(mode)
    device = runtime.setup(seed, run_mode=mode)
    data = load_data(cfg, device)
    started = time.perf_counter()
    rows, teacher = headline(cfg, data, device, seed=seed, progress=progress)
    print(markdown_table(rows))
    sweep = temperature_sweep(cfg, data, teacher, device, seed=seed, progress=progress)
    print(markdown_table(sweep))
    omitted = omitted_class(cfg, data, teacher, device, seed=seed, progress=progress)
    print(omitted)
    curves = soft_target_regularizer(cfg, data, teacher, device, seed=seed, progress=progress)
    meta = {"mode": mode, "seed": seed, "data": data.source, "device": str(device), "config": dataclasses.asdict(cfg),
            "seconds": round(time.perf_counter() - started, 1)}
    result = {"headline": rows, "sweep": sweep, "omitted": omitted, "regularizer": curves, "meta": meta}
    if out is not None:
        figure = plot_learning_curves({"hard targets": curves["hard"], "soft targets": curves["soft"]},
                                      title=f"Student on {int(curves['n_train'][0])} training digits")
        write_report(out, "hinton", rows=rows, meta=meta, figures={"regularizer": figure}, title="Hinton et al. (2015) on MNIST")
        write_report(out, "hinton_sweep", rows=sweep, meta=meta, title="Temperature sweep (test errors)")
        write_report(out, "hinton_omitted", rows=[{"": k, **v} for k, v in omitted.items() if isinstance(v, dict)],
                     meta={**meta, "shift": omitted["shift"]}, title="Omitted class, bias shift tuned on validation data")
    return result
