"""Notebook 05's experiments: a multi-exit ResNet on digits, with and without exit distillation.

- load_digits(): MNIST (or scikit-learn's digits stand-in when MNIST is absent), subsampled in smoke mode;
- trained_exit_model(): a CIFAR-style ResNet with an exit after the stem, layer1, layer2 and the final pool,
  trained on the mean of the exit losses, optionally distilling the last exit into the earlier ones; checkpointed in
  kd.runtime.cache_dir() under a name that holds its configuration, so a rerun (and notebook 06) reloads it;
- exit_report(): accuracy, calibration error, multiply-accumulates and parameters per exit on the test split;
- run(): both models, the table and the accuracy-vs-compute figure, headless (`python -m kdteach exits`).

Exits in the accuracy table are read from one full forward pass (simulated); kd.exits.early_exit_predict is the
path that really stops, and the notebook checks that both give the same answers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdteach import runtime
from kdteach.data.batches import Batches
from kdteach.data.mnist import load_mnist_or_standin, to_float
from kdteach.exits import MultiExit, MultiExitLoss, calibration_error, exit_accuracy, exit_costs, exit_logits, threshold_curve
from kdteach.report import markdown_table, write_report
from kdteach.models.resnet import CifarResNet
from kdteach.train import History, fit

EXITS = ("stem", "layer1", "layer2", "pooled")


@dataclass(frozen=True)
class ExitConfig:
    """Sizes and schedule of notebook 05 (and of the classifier notebook 06 reuses).

    Attributes:
        train_size: training digits used (None: all).
        test_size: test digits used (None: all).
        depth, width: the CIFAR-style ResNet (depth 6n + 2, base width).
        epochs: training epochs.
        batch_size: minibatch size.
        lr: peak learning rate of the one-cycle AdamW schedule.
        weight_decay: AdamW's decoupled weight decay.
        temperature: T of exit distillation.
        head_pool: feature maps are pooled to head_pool x head_pool cells before an exit's linear head.
    """

    train_size: int | None = None
    test_size: int | None = None
    depth: int = 14
    width: int = 16
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.0
    temperature: float = 3.0
    head_pool: int = 4

    def key(self) -> str:
        """A short hash of the configuration, used in checkpoint file names."""
        return config_key(self)


SMOKE_CONFIG = ExitConfig(train_size=2000, test_size=1000, depth=8, width=8, epochs=12, batch_size=64)


def config_key(cfg: Any) -> str:
    """A short hash of a dataclass configuration, so checkpoints of different configurations never mix."""
    return hashlib.sha1(repr(dataclasses.astuple(cfg)).encode()).hexdigest()[:10]


def pick_config(mode: str | None, smoke: Any, full: Any) -> Any:
    """smoke or full by mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    return smoke if mode == "smoke" else full


def config(mode: str | None = None) -> ExitConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return pick_config(mode, SMOKE_CONFIG, ExitConfig())


@dataclass
class Digits:
    """Float images in [0, 1] (N, 1, 28, 28) and labels, on one device, and where they came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str


def load_digits(cfg: ExitConfig, device: torch.device | str = "cpu", *, verbose: bool = True) -> Digits:
    """MNIST, or the scikit-learn digits stand-in when MNIST is absent, cut to cfg's sizes (a fixed random subset).

    Args:
        cfg: the configuration (train_size, test_size).
        device: where the tensors go.
        verbose: say which data is used.

    Returns:
        Digits.
    """
    parts, source = [], "sklearn digits stand-in"
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        x, y = load_mnist_or_standin(split, verbose=verbose)
        if split == "train" and len(y) == 60_000:
            source = "MNIST"
        if size is not None and size < len(y):
            rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:size]
            x, y = x[rows], y[rows]
        parts += [to_float(x).to(device), y.to(device)]
    return Digits(*parts, source=source)


def build_model(cfg: ExitConfig, num_classes: int = 10) -> MultiExit:
    """A CIFAR-style ResNet for 1-channel images with exits after the stem, layer1, layer2 and the final pool."""
    backbone = CifarResNet(cfg.depth, cfg.width, num_classes, in_channels=1)
    return MultiExit(backbone, num_classes, example_input=torch.zeros(1, 1, 28, 28), exits=EXITS, head_pool=cfg.head_pool)


def checkpoint_path(cfg: ExitConfig, data: Digits, *, distill_weight: float, seed: int) -> Path:
    """Where a trained model is cached: the name holds the configuration, the data and the seed."""
    source = "mnist" if data.source == "MNIST" else "digits"
    name = f"exits_{cfg.key()}_{source}_n{len(data.train_y)}_distill{distill_weight:g}_seed{seed}.pt"
    return runtime.cache_dir() / "exits" / name


def trained_exit_model(
    cfg: ExitConfig,
    data: Digits,
    *,
    distill_weight: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[MultiExit, History]:
    """Trains (or reloads from the cache) a multi-exit ResNet on data's training split.

    Args:
        cfg: the configuration.
        data: the digits (train split used).
        distill_weight: weight of the last exit's soft targets for the earlier exits (0: plain cross-entropy).
        seed: seed of the initialisation and the shuffling.
        device: where to train; None uses data's device.
        progress: progress bars.

    Returns:
        The model (eval mode, on device) and its History.
    """
    device = torch.device(device) if device is not None else data.train_x.device
    torch.manual_seed(seed)
    model = build_model(cfg, int(data.train_y.max()) + 1).to(device)
    train = Batches({"x": data.train_x, "y": data.train_y}, cfg.batch_size, shuffle=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(train))
    with runtime.cpu_threads(runtime.threads_for_rows(train.n, device)):
        history = fit(
            model,
            train,
            epochs=cfg.epochs,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=MultiExitLoss(distill_weight=distill_weight, temperature=cfg.temperature),
            device=device,
            checkpoint=checkpoint_path(cfg, data, distill_weight=distill_weight, seed=seed),
            resume=True,
            progress=progress,
            desc=f"multi-exit ResNet (distill {distill_weight:g})",
        )
    return model.eval(), history


def exit_report(model: MultiExit, data: Digits) -> dict[str, Any]:
    """Everything notebook 05 shows about one model, on the test split.

    Args:
        model: a trained MultiExit classifier.
        data: the digits.

    Returns:
        {"logits": (exits, N, C), "accuracy": (exits,), "ece": (exits,), "costs": exit_costs(...),
         "curve": threshold_curve(...)}.
    """
    logits = exit_logits(model, data.test_x)
    costs = exit_costs(model, data.test_x[:1])
    return {
        "logits": logits,
        "accuracy": exit_accuracy(logits, data.test_y),
        "ece": calibration_error(logits, data.test_y),
        "costs": costs,
        "curve": threshold_curve(logits, data.test_y, [c["macs"] for c in costs]),
    }


def exit_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per (model, exit): accuracy, ECE, MACs and parameters to reach the exit.

    Args:
        reports: model name -> exit_report(...).

    Returns:
        Rows for markdown_table.
    """
    rows = []
    for name, report in reports.items():
        for t, cost in enumerate(report["costs"]):
            rows.append({
                "model": name,
                "exit": f"{t + 1} ({cost['stage']})",
                "accuracy %": 100 * float(report["accuracy"][t]),
                "ECE %": 100 * float(report["ece"][t]),
                "kMACs": cost["macs"] / 1e3,
                "params": int(cost["params"]),
            })
    return rows


def run(mode: str = "full", out: str | Path = "runs/exits", seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Notebook 05's headline, headless: plain and exit-distilled multi-exit ResNets, per-exit table and figure.

    Args:
        mode: "full" or "smoke".
        out: folder for exits.json, exits.md and the figure.
        seed: seed of both models.
        progress: progress bars.

    Returns:
        The table rows.
    """
    from kdteach.plots.sets import plot_accuracy_vs_compute

    cfg = config(mode)
    device = runtime.pick_device()
    started = time.perf_counter()
    data = load_digits(cfg, device)
    reports = {}
    for name, weight in (("mean of exit losses", 0.0), ("+ exit distillation", 0.5)):
        model, _ = trained_exit_model(cfg, data, distill_weight=weight, seed=seed, device=device, progress=progress)
        reports[name] = exit_report(model, data)
    rows = exit_rows(reports)
    figure = plot_accuracy_vs_compute({name: r["curve"] for name, r in reports.items()}, {name: r["costs"] for name, r in reports.items()}, {name: r["accuracy"] for name, r in reports.items()})
    meta = {"mode": mode, "data": data.source, "config": dataclasses.asdict(cfg), "seed": seed, "device": str(device), "seconds": round(time.perf_counter() - started, 1)}
    write_report(out, "exits", rows=rows, meta=meta, figures={"accuracy_vs_compute": figure}, title="Multi-exit ResNet: accuracy and compute per exit")
    print(markdown_table(rows))
    return rows


def exit_findings(reports: dict[str, dict[str, Any]], *, smoke: bool = False, tolerance: float = 0.005) -> list[str]:
    """Sentences about the per-exit numbers, written from them (never asserted in advance).

    Args:
        reports: model name -> exit_report(...); the first is the reference model, the second (if any) a variant.
        smoke: add the caveat that smoke-mode numbers are noisy.
        tolerance: accuracy gap (fraction) within which the threshold policy counts as matching the last exit.

    Returns:
        A list of sentences.
    """
    names = list(reports)
    ref = reports[names[0]]
    acc, ece, macs = ref["accuracy"], ref["ece"], [c["macs"] for c in ref["costs"]]
    last = len(acc) - 1
    lines = [
        f"{names[0]}: exit 1 needs {macs[0] / macs[-1]:.1%} of the last exit's multiply-accumulates and is right on "
        f"{float(acc[0]):.1%} of the test digits; the last exit on {float(acc[-1]):.1%}."
    ]
    best = int(acc.argmax())
    n = ref["logits"].shape[1]
    noise = 2 * math.sqrt(max(float(acc[-1]) * (1 - float(acc[-1])), 1e-12) / n)  # two binomial standard errors
    if best == last:
        lines.append(f"The last exit is the most accurate ({float(acc[-1]):.1%}).")
    elif float(acc[best] - acc[-1]) > noise:
        lines.append(f"Exit {best + 1} ({float(acc[best]):.1%}) beats the last exit ({float(acc[-1]):.1%}) by more than two standard errors ({noise:.1%}): deeper is not always better here.")
    else:
        lines.append(f"Exit {best + 1} scores {float(acc[best]):.1%} and the last exit {float(acc[-1]):.1%}: the gap is within two standard errors of the test set ({noise:.1%}), so exit {best + 1} is not clearly better than the last.")
    worst = int(ece.argmax())
    lines.append(f"Calibration differs by exit: ECE ranges from {float(ece.min()):.1%} to {float(ece.max()):.1%} (worst: exit {worst + 1}).")
    matching = [row for row in ref["curve"] if row["accuracy"] >= float(acc[-1]) - tolerance]
    if matching:
        cheapest = min(matching, key=lambda row: row["mean_macs"])
        lines.append(
            f"The confidence-threshold policy at threshold {cheapest['threshold']:.2f} is within {100 * tolerance:.1f} points of the "
            f"last exit ({cheapest['accuracy']:.1%}) at {cheapest['mean_macs'] / macs[-1]:.0%} of its compute on average."
        )
    if len(names) > 1:
        other = reports[names[1]]["accuracy"]
        changes = ", ".join(f"exit {t + 1} {100 * float(other[t] - acc[t]):+.1f}" for t in range(len(acc)))
        lines.append(f"{names[1]} vs {names[0]}, accuracy change in points: {changes}.")
    if smoke:
        lines.append("Smoke mode: a small training set, few epochs and one seed; differences of a point or two are noise. Full mode gives the numbers to read.")
    return lines
