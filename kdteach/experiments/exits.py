"""Notebook 05's experiment: a multi-exit ResNet on digits, with and without exit distillation.

A CIFAR-style ResNet with an exit after the stem, layer1, layer2 and the final pool is trained on the mean of the
exit losses, optionally distilling the last exit into the earlier ones (every model through common.train_or_load,
so a rerun and notebook 06 reload it). Per model and seed: accuracy, calibration error, MACs and parameters per
exit and the confidence-threshold policy, all read from one full pass (simulated exits); then the real early-exit
path (kd.exits.measure_early_exit), checked against the simulated one, with its MACs counted and its time measured.
exit_sentences words an ExitsResult through kdteach.report's one comparison rule; overthinking, exits_beating_last
and overthinking_sentence say where an earlier exit beats the last one (Kaya et al. 2019).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdteach import report, runtime
from kdteach.data.mnist import DigitSplits, load_digit_splits
from kdteach.exits import (ECE_BINS, EarlyExitRun, MultiExit, MultiExitLoss, PolicyPoint, calibration_error, exit_accuracy, exit_costs,
                           exit_logits, measure_early_exit, threshold_curve)
from kdteach.experiments import common
from kdteach.models.resnet import CifarResNet
from kdteach.plots.sets import plot_accuracy_vs_compute
from kdteach.report import FRACTION_DIFFERENCE, comparison_sentence, paired_comparison, smoke_note

EXITS = ("stem", "layer1", "layer2", "pooled")
MODELS = (("mean of exit losses", 0.0), ("+ exit distillation", 0.5))  # (name, distill_weight)
EARLY_EXIT_THRESHOLD = 0.9  # the confidence at which the real early-exit path lets an example leave


@dataclass(frozen=True)
class ExitConfig:
    """Notebook 05 (and the classifier notebook 06 reuses): digits kept per split (None: all), the ResNet (depth
    6n + 2, base width), AdamW with a one-cycle schedule peaking at lr, T of exit distillation, exit heads' pooling
    (head_pool x head_pool cells), the seeds of each model (paired comparisons need 3), timed early-exit runs."""

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
    seeds: tuple[int, ...] = (0, 1, 2)
    timing_repeats: int = 5


SMOKE_CONFIG = ExitConfig(train_size=2000, test_size=1000, depth=8, width=8, epochs=12, batch_size=64, seeds=(0,), timing_repeats=3)
# Full mode sized for a 2-core laptop CPU (about 1 ms per digit and epoch on one thread at this size): 5,000 MNIST
# digits, ResNet-8 of width 8, 6 epochs, 5 seeds of each model. The GPU-sized run is ExitConfig() (all of MNIST,
# ResNet-14 of width 16, 15 epochs).
FULL_CONFIG = ExitConfig(train_size=5000, test_size=5000, depth=8, width=8, epochs=6, seeds=(0, 1, 2, 3, 4))


def config(mode: str | None = None) -> ExitConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


def load_data(cfg: ExitConfig, device: torch.device | str = "cpu", *, verbose: bool = True) -> DigitSplits:
    """MNIST (or the scikit-learn digits stand-in), cut to cfg's sizes, on device."""
    return load_digit_splits(cfg.train_size, cfg.test_size, device, verbose=verbose)


def build_model(cfg: ExitConfig, num_classes: int = 10) -> MultiExit:
    """A CIFAR-style ResNet for 1-channel images with exits after the stem, layer1, layer2 and the final pool."""
    backbone = CifarResNet(cfg.depth, cfg.width, num_classes, in_channels=1)
    return MultiExit(backbone, num_classes, example_input=torch.zeros(1, 1, 28, 28), exits=EXITS, head_pool=cfg.head_pool)


def trained_exit_model(cfg: ExitConfig, data: DigitSplits, *, distill_weight: float = 0.0, seed: int = 0,
                       device: torch.device | str | None = None, progress: bool = True) -> MultiExit:
    """Trains (or reloads, through common.train_or_load) a multi-exit ResNet on data's training split; distill_weight
    is the weight of the last exit's soft targets for the earlier exits (0: plain cross-entropy). Returns it in eval
    mode on device (None: data's device)."""
    device = torch.device(device) if device is not None else data.train_x.device
    torch.manual_seed(seed)
    model = build_model(cfg, int(data.train_y.max()) + 1).to(device)
    train = data.batches("train", cfg.batch_size, shuffle=True, seed=seed)
    optimizer, scheduler = common.optimizer_and_schedule(model, total_steps=cfg.epochs * len(train), lr=cfg.lr,
                                                         weight_decay=cfg.weight_decay, kind="adamw", schedule="onecycle")
    decides = (dataclasses.replace(cfg, test_size=None, seeds=(), timing_repeats=0), data.source, data.train_y, distill_weight, seed)
    common.train_or_load(model, train, path=common.checkpoint_path("exits", f"distill{distill_weight:g}", *decides),
                         epochs=cfg.epochs, optimizer=optimizer, scheduler=scheduler, device=device, progress=progress,
                         desc=f"multi-exit ResNet (distill {distill_weight:g}, seed {seed})",
                         loss_fn=MultiExitLoss(distill_weight=distill_weight, temperature=cfg.temperature))
    return model


@dataclass(frozen=True)
class ExitResult:
    """One model at one exit, on the test split (one row of notebook 05's table)."""
    model: str
    seed: int
    exit: int
    stage: str
    accuracy: float
    ece: float
    macs: float
    params: int


@dataclass(frozen=True)
class ModelResult:
    """One trained model: its exits and its confidence-threshold policy (from full-pass logits)."""
    model: str
    seed: int
    exits: tuple[ExitResult, ...]
    policy: tuple[PolicyPoint, ...]


@dataclass(frozen=True)
class ExitsResult:
    """Notebook 05's result: every model and seed, and the real early-exit path of the first plain model."""
    source: str
    models: tuple[ModelResult, ...]
    early_exit: EarlyExitRun

    def rows(self) -> list[ExitResult]:
        """Every (model, seed, exit) row, for the table."""
        return [row for m in self.models for row in m.exits]


def measure_model(name: str, model: MultiExit, data: DigitSplits, *, seed: int) -> ModelResult:
    """Accuracy, ECE, cost per exit and the threshold policy of one model on the test split."""
    logits = exit_logits(model, data.test_x)
    costs = exit_costs(model, data.test_x[:1])
    accuracy, ece = exit_accuracy(logits, data.test_y), calibration_error(logits, data.test_y)
    exits = tuple(ExitResult(name, seed, c.exit + 1, c.stage, float(accuracy[c.exit]), float(ece[c.exit]), c.macs, c.params) for c in costs)
    return ModelResult(name, seed, exits, tuple(threshold_curve(logits, data.test_y, [c.macs for c in costs])))


def experiment(cfg: ExitConfig, data: DigitSplits, *, seeds: tuple[int, ...] | None = None, device: torch.device | str | None = None,
               progress: bool = True) -> tuple[ExitsResult, dict[str, MultiExit]]:
    """Both models at every seed (default cfg.seeds), measured, and the real early-exit path of the first seed's
    plain model. Returns the ExitsResult and the first seed's models by name (for figures)."""
    seeds, results, first = tuple(seeds or cfg.seeds), [], {}
    for seed in seeds:
        for name, weight in MODELS:
            model = trained_exit_model(cfg, data, distill_weight=weight, seed=seed, device=device, progress=progress)
            results.append(measure_model(name, model, data, seed=seed))
            first.setdefault(name, model)
    early = measure_early_exit(first[MODELS[0][0]], data.test_x, EARLY_EXIT_THRESHOLD, repeats=cfg.timing_repeats)
    return ExitsResult(data.source, tuple(results), early), first


# The findings, chosen by paired_comparison's verdict or by a plain threshold stated in the sentence.


def exit_sentences(result: ExitsResult, *, mode: str = "full", match_points: float = 0.5) -> list[str]:
    """The findings of notebook 05, from an ExitsResult.

    Exit-vs-exit and distilled-vs-plain differences go through paired_comparison over the training seeds; the
    threshold policy is compared with the last exit by a stated margin; the early-exit path's spent MACs are set
    beside the ideal count.

    Args:
        result: the ExitsResult (models: per model and seed, exits with accuracy, ece, macs; policy; early_exit).
        mode: "smoke" adds the smoke-mode note.
        match_points: how close (in accuracy points) the policy must come to the last exit to count as matching it.

    Returns:
        The sentences.
    """
    names = list(dict.fromkeys(m.model for m in result.models))
    by_name = {name: [m for m in result.models if m.model == name] for name in names}
    ref = by_name[names[0]]
    first, exits = ref[0], len(ref[0].exits)
    acc0, acc_last, macs = first.exits[0].accuracy, first.exits[-1].accuracy, [e.macs for e in first.exits]
    lines = [f"{names[0]} (seed {first.seed}): exit 1 costs {macs[0] / macs[-1]:.1%} of the last exit's multiply-accumulates "
             f"and is right on {acc0:.1%} of the test digits; the last exit on {acc_last:.1%}."]
    mean_accuracy = [float(np.mean([m.exits[t].accuracy for m in ref])) for t in range(exits)]
    best = int(np.argmax(mean_accuracy))
    if best == exits - 1:
        lines.append(f"The last exit has the highest accuracy ({mean_accuracy[-1]:.1%}, mean over {len(ref)} seed(s)).")
    else:
        c = paired_comparison({m.seed: m.exits[best].accuracy for m in ref}, {m.seed: m.exits[-1].accuracy for m in ref}, bounds=FRACTION_DIFFERENCE)
        lines.append(comparison_sentence(c, what="test accuracy", ours=f"exit {best + 1}", reference="the last exit"))
    ece = [e.ece for e in first.exits]
    lines.append(f"ECE ({ECE_BINS} equal-width bins) ranges from {min(ece):.1%} to {max(ece):.1%} "
                 f"over exits (worst: exit {int(np.argmax(ece)) + 1}).")
    matching = [p for p in first.policy if p.accuracy >= acc_last - match_points / 100]
    if matching:
        cheapest = min(matching, key=lambda p: p.mean_macs)
        lines.append(f"The confidence-threshold policy at {cheapest.threshold:.2f} is within {match_points:g} points of the last exit "
                     f"({cheapest.accuracy:.1%}) at {cheapest.mean_macs / macs[-1]:.0%} of its compute per example on average.")
    for name in names[1:]:
        other = {m.seed: m for m in by_name[name]}
        for t in range(exits):
            c = paired_comparison({s: m.exits[t].accuracy for s, m in other.items()}, {m.seed: m.exits[t].accuracy for m in ref},
                                  bounds=FRACTION_DIFFERENCE)
            lines.append(comparison_sentence(c, what=f"exit {t + 1} accuracy", ours=name, reference=names[0]))
    run = result.early_exit
    shares = ", ".join(f"{s:.0%}" for s in run.exit_shares)
    same = math.isclose(run.spent_macs, run.ideal_macs, rel_tol=1e-9)
    lines.append(f"Really stopping at confidence {run.threshold:g} (exits taken: {shares}): {run.spent_macs / 1e3:.1f}k MACs spent per "
                 f"example, {run.spent_macs / run.full_macs:.0%} of the full network; the ideal count for these exits is "
                 f"{run.ideal_macs / 1e3:.1f}k" + (", the same: no stage ran twice." if same else f", so {run.spent_macs - run.ideal_macs:.0f} MACs were spent beyond it.")
                 + (" Its exits and predictions are the simulated policy's." if run.matches_simulated else " Its exits or predictions DIFFER from the simulated policy's."))
    lines.append(f"Wall time here (median of {run.repeats} runs after a warm-up): {run.early_seconds * 1e3:.1f} ms stopping early, "
                 f"{run.full_seconds * 1e3:.1f} ms for one full pass with every exit.")
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])



# Overthinking (Kaya et al. 2019, arXiv:1810.07052): an earlier exit right where the last exit is wrong. Presentation
# helpers for notebook 05: they read a model's exit logits, or the (model, seed, exit, accuracy) rows of a result.


@dataclass(frozen=True)
class Overthinking:
    """How often the earlier exits of one model are right where its last exit is wrong, on one labelled split.

    Attributes:
        right_then_wrong: per exit, the share of examples it gets right and the last exit gets wrong (0 at the last).
        wrong_then_right: per exit, the share it gets wrong and the last exit gets right (0 at the last).
        last_errors: the share of examples the last exit gets wrong.
        rescued: the share of the last exit's errors that at least one earlier exit got right (Kaya et al.'s
            destructive overthinking, as a share of misclassifications); NaN when the last exit makes no error.
    """

    right_then_wrong: tuple[float, ...]
    wrong_then_right: tuple[float, ...]
    last_errors: float
    rescued: float


def overthinking(exit_logits: torch.Tensor, labels: torch.Tensor) -> Overthinking:
    """Counts, from one model's exit logits, where an earlier exit is right and the last exit wrong (and back).

    Args:
        exit_logits: (exits, N, classes) logits, as kd.exits.exit_logits returns them.
        labels: (N,) class indices.

    Returns:
        Overthinking.
    """
    exit_accuracy(exit_logits, labels)  # the package's checks of shapes and labels, naming the argument
    right = exit_logits.argmax(dim=-1) == labels.to(exit_logits.device)  # (exits, N)
    last_wrong = ~right[-1]
    errors = int(last_wrong.sum())
    rescued = float(right[:-1, last_wrong].any(dim=0).double().mean()) if errors else math.nan
    return Overthinking(tuple(float(v) for v in (right & last_wrong).double().mean(dim=1)),
                        tuple(float(v) for v in (~right & ~last_wrong).double().mean(dim=1)), errors / right.shape[1], rescued)


def _accuracy_by_seed(rows: Sequence[ExitResult] | Sequence[dict[str, Any]], model: str) -> dict[int, dict[int, float]]:
    # {seed: {exit number: accuracy}} of one model, from ExitResult rows or the committed JSON's dict rows.
    def field(row: ExitResult | dict[str, Any], name: str) -> Any:
        return row[name] if isinstance(row, dict) else getattr(row, name)

    by_seed: dict[int, dict[int, float]] = {}
    for row in rows:
        if field(row, "model") == model:
            by_seed.setdefault(int(field(row, "seed")), {})[int(field(row, "exit"))] = float(field(row, "accuracy"))
    if not by_seed:
        raise ValueError(f"model must be one of {sorted({str(field(r, 'model')) for r in rows})}, got {model!r}")
    return by_seed


def exits_beating_last(rows: Sequence[ExitResult] | Sequence[dict[str, Any]], model: str = MODELS[0][0]) -> dict[int, tuple[int, int, float]]:
    """In how many seeds each earlier exit of one model is more accurate than its last exit.

    Args:
        rows: ExitsResult.rows(), or the rows of the committed results/exits/exits.json (dicts with the same fields).
        model: the model's name (default: the plain model, "mean of exit losses").

    Returns:
        {exit number (1-based, earlier exits only): (seeds where it beats the last exit, seeds, mean accuracy
        difference exit - last exit)}.

    Raises:
        ValueError: naming model when no row has it.
    """
    by_seed = _accuracy_by_seed(rows, model)
    last = max(next(iter(by_seed.values())))
    return {e: (sum(acc[e] > acc[last] for acc in by_seed.values()), len(by_seed),
                float(np.mean([acc[e] - acc[last] for acc in by_seed.values()])))
            for e in range(1, last)}


def overthinking_sentence(rows: Sequence[ExitResult] | Sequence[dict[str, Any]], *, model: str = MODELS[0][0], where: str = "this run") -> str:
    """One sentence: per earlier exit, in how many seeds it beats the last exit (exits_beating_last), and the verdict
    of the course's one rule (report.paired_comparison over seeds) on the exit with the largest mean gain.

    Args:
        rows: as in exits_beating_last.
        model: the model's name.
        where: which run the rows come from, for the sentence ("this run", "the committed reference").

    Returns:
        The sentence.
    """
    beating = exits_beating_last(rows, model)
    parts = "; ".join(f"exit {e} in {wins} of {n} (mean {100 * diff:+.1f} points)" for e, (wins, n, diff) in beating.items())
    best = max(beating, key=lambda e: beating[e][2])
    by_seed = _accuracy_by_seed(rows, model)
    last = len(beating) + 1
    c = paired_comparison({s: acc[best] for s, acc in by_seed.items()}, {s: acc[last] for s, acc in by_seed.items()}, bounds=FRACTION_DIFFERENCE)
    verdict = {"clearly higher": f"exit {best} is clearly more accurate than the last exit: overthinking in the sense of Kaya et al. (2019)",
               "too few seeds": f"{c.n} seed(s) cannot decide whether exit {best} beats the last exit (the rule needs 3)",
               }.get(c.verdict, f"no earlier exit is clearly more accurate than the last exit (best: exit {best}, {c.verdict})")
    return f"In {where}, {model}: earlier exits more accurate than the last exit, seed by seed: {parts}. By the course's rule, {verdict}."

def run(mode: str = "full", out: str | Path = "runs/exits", seed: int = 0, progress: bool = True) -> ExitsResult:
    """Notebook 05's headline, headless (`python -m kdteach exits`): writes exits.json, exits.md and the figure to
    out and prints the table and findings. `seed` seeds the run; the config's seeds are offsets from it."""
    started, device, cfg = time.perf_counter(), runtime.setup(seed, verbose=False, run_mode=mode), config(mode)
    seeds = tuple(seed + s for s in cfg.seeds)
    result, _ = experiment(cfg, load_data(cfg, device), seeds=seeds, device=device, progress=progress)
    title, findings = "Multi-exit ResNet: accuracy and compute per exit", exit_sentences(result, mode=mode)
    meta = {"mode": mode, "title": title, "findings": findings, "data": result.source, **report.provenance(experiment="exits", config=cfg, seeds=seeds, wall_seconds=time.perf_counter() - started, device=str(device))}
    figures = {"accuracy_vs_compute": plot_accuracy_vs_compute([m for m in result.models if m.seed == seeds[0]])}
    report.write_report(out, "exits", rows=result.rows(), meta=meta, figures=figures,
                        title=title, result=result)
    print(report.markdown_table(result.rows()))
    print("\n".join(findings))
    return result
