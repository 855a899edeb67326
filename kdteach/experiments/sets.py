"""Notebook 06's experiments: prediction sets at every exit, split conformal and Bayes vs anytime-valid (Jazbec et al.).

Classification: notebook 05's exit-distilled ResNet (reloaded through the same train-or-load) makes logits at each
exit for the held-out digits. Each split draws a random calibration part (20%); every threshold is fitted on it
only, and the sets are measured on the rest (kd.sets.method_sets: LAC, APS, RAPS with fresh, shared and no u, Bayes
credible sets, their running intersections, AVCS). Over many splits: each method's MethodSummary, and the parallel
AVCS variant (S copies intersected) with what it costs and buys.

Regression: the "wiggle" data, a residual MLP with a head per block, Bayesian linear regression heads on each block's
features, per-exit credible intervals (and their running intersection) vs AVCS intervals, in distribution and on a
grid reaching far outside the training inputs.

The tables and sentences about these results (set_summary_rows, per_exit_rows, set_sentences, regression_rows,
regression_sentences, the Monte Carlo standard errors) live in kdteach.experiments.sets_report, split from this module
for size; they are imported here, so notebook 06 reaches them as experiment.* as before.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdteach import report, runtime
from kdteach.exits import MultiExit, ResidualMLP, exit_accuracy, exit_feature_vectors, exit_logits, multi_exit_mse
from kdteach.data.batches import Batches
from kdteach.experiments import common
from kdteach.experiments import exits as exit_experiment
from kdteach.experiments.sets_report import (error_per_exit_rows, error_summary_rows, monte_carlo_error, parallel_rows,  # noqa: F401
                                             per_exit_rows, regression_rows, regression_sentences, set_sentences,  # re-exported:
                                             set_summary_rows, target_rows, target_sentences)  # notebook 06 calls experiment.*
from kdteach.plots.sets import plot_set_metrics, plot_wiggle_intervals
from kdteach.sets import (AvcsFit, MethodSets, MethodSummary, SetMetrics, WiggleSplits, avcs_sets, bayesian_exit_predictive,
                          calibration_split, empty_share_by_region, fit_avcs_thresholds, interval_metrics, method_sets,
                          regression_intervals, set_metrics, summarize_splits, wiggle_splits)


@dataclass(frozen=True)
class SetsConfig:
    """The classification comparison: miscoverage alpha, the calibration share of the held-out digits, how many
    random splits, Dirichlet draws per calibration example for AVCS's threshold, the parallel copies to try and on
    how many splits."""

    alpha: float = 0.05
    calib_fraction: float = 0.2
    splits: int = 200
    avcs_draws: int = 10
    # The smallest tau the threshold rule may pick. At the paper's tau >= 1 the rule could not reach its rank in 155
    # of 200 full-mode splits (coverage 94.4%, every split below 95%); from 0.25 it reached it in 20 of 20 (95.8%).
    avcs_start: float = 0.25
    parallel: tuple[int, ...] = (1, 2, 4)
    parallel_splits: int = 100


SMOKE_SETS = SetsConfig(splits=100, parallel_splits=20)
FULL_SETS = SetsConfig()


@dataclass(frozen=True)
class WiggleConfig:
    """The regression experiment: points drawn (80% train, 20% test), their noise, the residual MLP (depth = blocks
    = exits), Adam on the mean of the exits' squared errors, and the grid's reach in training standard deviations."""

    n: int = 900
    noise_std: float = 0.25
    width: int = 64
    depth: int = 15
    epochs: int = 400
    batch_size: int = 128
    lr: float = 3e-3
    ood_reach: float = 6.0


SMOKE_WIGGLE = WiggleConfig(width=32, epochs=120)
FULL_WIGGLE = WiggleConfig()


def config(mode: str | None = None) -> SetsConfig:
    """The classification configuration of a mode: "smoke", "full", or None for the runtime's mode."""
    return common.config_for(mode, smoke=SMOKE_SETS, full=FULL_SETS)


def wiggle_config(mode: str | None = None) -> WiggleConfig:
    """The regression configuration of a mode: "smoke", "full", or None for the runtime's mode."""
    return common.config_for(mode, smoke=SMOKE_WIGGLE, full=FULL_WIGGLE)


# Classification


def held_out_logits(mode: str | None = None, *, seed: int = 0, device: torch.device | str | None = None,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Notebook 05's exit-distilled multi-exit ResNet (reloaded, trained if absent) on the held-out digits.

    Returns:
        exit logits (exits, N, C) and labels (N,) on the device, and the data's name.
    """
    cfg = exit_experiment.config(mode)
    device = torch.device(device) if device is not None else runtime.pick_device()
    data = exit_experiment.load_data(cfg, device, verbose=False)
    model = exit_experiment.trained_exit_model(cfg, data, distill_weight=0.5, seed=seed, device=device, progress=progress)
    return exit_logits(model, data.test_x), data.test_y, data.source


@dataclass(frozen=True)
class SplitResult:
    """Every method on one random calibration/evaluation split.

    Attributes:
        seed: the split's seed (it also seeds every draw).
        methods, metrics: each method's name and SetMetrics on the evaluation part, in table order.
        avcs: AVCS's threshold (logit units) and its calibration numbers.
        quantiles: per conformal method (kd.sets.CONFORMAL_METHODS order), its score threshold at each exit (score
            units: 1 - p for LAC, probability mass for APS/RAPS; not comparable with AVCS's tau).
    """

    seed: int
    methods: tuple[str, ...]
    metrics: tuple[SetMetrics, ...]
    avcs: AvcsFit
    quantiles: tuple[tuple[float, ...], ...]


def one_split(logits: torch.Tensor, labels: torch.Tensor, cfg: SetsConfig, *, seed: int) -> tuple[SplitResult, MethodSets, torch.Tensor]:
    """Every method on the random split `seed`: its SplitResult, the sets themselves and the evaluation labels."""
    calib, evaluation = calibration_split(len(labels), cfg.calib_fraction, seed=seed)
    with warnings.catch_warnings():  # an infeasible AVCS threshold is reported by AvcsFit.feasible instead
        warnings.simplefilter("ignore", UserWarning)
        found = method_sets(logits[:, calib], labels[calib], logits[:, evaluation], cfg.alpha, seed=seed, avcs_draws=cfg.avcs_draws, avcs_start=cfg.avcs_start)
    eval_labels = labels[evaluation]
    metrics = tuple(set_metrics(s, eval_labels) for s in found.sets.values())
    quantiles = tuple(tuple(float(v) for v in q) for q in found.quantiles.values())
    return SplitResult(seed, tuple(found.sets), metrics, found.avcs, quantiles), found, eval_labels


@dataclass(frozen=True)
class ParallelResult:
    """AVCS with `copies` parallel copies intersected (thresholds fitted for the intersection), over splits, and the
    mean seconds per split to fit the threshold and to make the evaluation sets."""

    copies: int
    summary: MethodSummary
    fit_seconds: float
    eval_seconds: float


def parallel_variant(logits: torch.Tensor, labels: torch.Tensor, cfg: SetsConfig, *, copies: int, seeds: list[int]) -> ParallelResult:
    """AVCS with `copies` parallel copies on the splits `seeds`: coverage and size over splits, and the time it takes."""
    metrics, fit_seconds, eval_seconds = [], 0.0, 0.0
    for seed in seeds:
        calib, evaluation = calibration_split(len(labels), cfg.calib_fraction, seed=seed)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fit = fit_avcs_thresholds(logits[:, calib], labels[calib], cfg.alpha, start=cfg.avcs_start, num_parallel=copies, seed=seed, draws=cfg.avcs_draws)
        fitted = time.perf_counter()
        sets = avcs_sets(logits[:, evaluation], fit.thresholds, cfg.alpha, generator=torch.Generator().manual_seed(seed + 10_000), num_parallel=copies)
        eval_seconds += time.perf_counter() - fitted
        fit_seconds += fitted - started
        metrics.append(set_metrics(sets, labels[evaluation]))
    return ParallelResult(copies, summarize_splits(f"AVCS, {copies} cop{'y' if copies == 1 else 'ies'}", metrics, cfg.alpha),
                          fit_seconds / len(seeds), eval_seconds / len(seeds))


@dataclass(frozen=True)
class ClassificationResult:
    """Notebook 06's classification comparison: every split, each method's summary over them, the parallel variant,
    the exits' accuracy and the data's name."""

    source: str
    alpha: float
    accuracy: tuple[float, ...]
    splits: tuple[SplitResult, ...]
    summaries: tuple[MethodSummary, ...]
    parallel: tuple[ParallelResult, ...]


def classification_experiment(logits: torch.Tensor, labels: torch.Tensor, cfg: SetsConfig, *, seed: int = 0,
                              source: str = "") -> ClassificationResult:
    """Every method over cfg.splits random splits (seeds seed * 10000 + 0, 1, ...), and the parallel AVCS variant.

    Args:
        logits: (exits, N, C) held-out logits.
        labels: (N,) their labels.
        cfg: the configuration.
        seed: moves every calibration split (and every draw).
        source: the data's name, for the record.

    Returns:
        ClassificationResult.
    """
    seeds = [seed * 10_000 + s for s in range(cfg.splits)]
    with runtime.cpu_threads(1 if logits.device.type == "cpu" else None):  # tiny tensors: 4x faster on one thread
        splits = [one_split(logits, labels, cfg, seed=s)[0] for s in seeds]
        parallel = tuple(parallel_variant(logits, labels, cfg, copies=c, seeds=seeds[: cfg.parallel_splits]) for c in cfg.parallel)
    summaries = tuple(summarize_splits(m, [sp.metrics[i] for sp in splits], cfg.alpha) for i, m in enumerate(splits[0].methods))
    accuracy = tuple(float(a) for a in exit_accuracy(logits, labels))
    return ClassificationResult(source, cfg.alpha, accuracy, tuple(splits), summaries, parallel)


# Regression


def trained_wiggle_model(cfg: WiggleConfig, data: WiggleSplits, *, seed: int = 0, device: torch.device | str | None = None,
                         progress: bool = True) -> MultiExit:
    """Trains (or reloads, through common.train_or_load) the residual MLP with a head on every block."""
    device = torch.device(device) if device is not None else runtime.pick_device()
    torch.manual_seed(seed)
    model = MultiExit(ResidualMLP(1, cfg.width, cfg.depth, 1), 1, example_input=torch.zeros(2, 1)).to(device)
    # The target is called "target": fit() treats "y" as class labels.
    train = Batches({"x": data.train_x.to(device), "target": data.train_y.to(device)}, cfg.batch_size, shuffle=True, seed=seed)
    optimizer, _ = common.optimizer_and_schedule(model, total_steps=cfg.epochs * len(train), lr=cfg.lr, kind="adam", schedule="constant")
    common.train_or_load(model, train, path=common.checkpoint_path("sets", "wiggle", cfg, seed), epochs=cfg.epochs, optimizer=optimizer,
                         device=device, progress=progress, desc=f"residual MLP, {cfg.depth} exits", loss_fn=multi_exit_mse)
    return model


@dataclass(frozen=True)
class RegressionResult:
    """The wiggle comparison on the test split (methods "Bayes", "Bayes ∩", "AVCS"), and each method's last-exit
    empty rate on grid points inside and outside the training inputs' range."""

    methods: tuple[str, ...]
    metrics: tuple[SetMetrics, ...]
    empty_inside: tuple[float, ...]
    empty_outside: tuple[float, ...]


@dataclass(frozen=True)
class WiggleCurves:
    """What the interval figure draws: the splits, the grid and every method's (lower, upper) on it, (exits, G)."""

    data: WiggleSplits
    grid_x: torch.Tensor
    intervals: dict[str, tuple[torch.Tensor, torch.Tensor]]


def regression_experiment(mode: str | None = None, *, seed: int = 0, alpha: float = 0.05, device: torch.device | str | None = None,
                          progress: bool = True) -> tuple[RegressionResult, WiggleCurves]:
    """The whole regression case: data, model, Bayesian heads, intervals on the test split and on a wide grid."""
    cfg = wiggle_config(mode)
    data = wiggle_splits(cfg.n, noise_std=cfg.noise_std, seed=seed)
    model = trained_wiggle_model(cfg, data, seed=seed, device=device, progress=progress)
    on = next(model.parameters()).device
    train_features = exit_feature_vectors(model, data.train_x.to(on))

    def intervals(x: torch.Tensor, draw_seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        predictive = bayesian_exit_predictive(train_features, data.train_y, exit_feature_vectors(model, x.to(on)))
        return regression_intervals(predictive, alpha, seed=draw_seed)

    test = intervals(data.test_x, seed)
    grid_x = torch.linspace(-cfg.ood_reach, cfg.ood_reach, 400)
    grid = intervals(grid_x[:, None], seed + 1)
    regions = [empty_share_by_region(grid_x, *grid[m], data.train_x) for m in grid]
    result = RegressionResult(tuple(test), tuple(interval_metrics(*test[m], data.test_y) for m in test),
                              tuple(r[0] for r in regions), tuple(r[1] for r in regions))
    return result, WiggleCurves(data, grid_x, grid)


# Reading a committed result back


def splits_from_reference(result: dict[str, Any]) -> tuple[SplitResult, ...]:
    """The per-split results stored in a committed results/sets/sets.json (its "result" field), typed again.

    Args:
        result: the "result" of kd.results.load_reference("sets") (sets.run writes the ClassificationResult there).

    Returns:
        One SplitResult per calibration split.

    Raises:
        ValueError: naming result when it holds no splits.
    """
    if not result or not result.get("splits"):
        raise ValueError("result holds no 'splits': pass kd.results.load_reference('sets').result")

    def metrics(m: dict[str, Any]) -> SetMetrics:
        return SetMetrics(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.items()})

    return tuple(SplitResult(int(sp["seed"]), tuple(sp["methods"]), tuple(metrics(m) for m in sp["metrics"]),
                             AvcsFit(**{k: tuple(v) if isinstance(v, list) else v for k, v in sp["avcs"].items()}),
                             tuple(tuple(q) for q in sp["quantiles"])) for sp in result["splits"])


# Headless run


def run(mode: str = "full", out: str | Path = "runs/sets", seed: int = 0, progress: bool = True) -> tuple[ClassificationResult, RegressionResult]:
    """Notebook 06's tables and figures, headless (`python -m kdteach sets`): sets.* and regression.* in out.

    `seed` seeds the run, the classifier and the wiggle model, and moves every calibration split.
    """
    started, device, cfg = time.perf_counter(), runtime.setup(seed, verbose=False, run_mode=mode), config(mode)
    logits, labels, source = held_out_logits(mode, seed=seed, device=device, progress=progress)
    result = classification_experiment(logits, labels, cfg, seed=seed, source=source)
    regression, curves = regression_experiment(mode, seed=seed, alpha=cfg.alpha, device=device, progress=progress)
    configs = {"sets": cfg, "wiggle": wiggle_config(mode), "exits": exit_experiment.config(mode)}
    title = f"Prediction sets per exit (means over {cfg.splits} calibration splits)"
    findings = set_sentences(result, mode=mode) + regression_sentences(regression, alpha=cfg.alpha, mode=mode)
    meta = {"mode": mode, "title": title, "findings": findings, "data": source, **report.provenance(experiment="sets", config=configs, seeds=[seed], wall_seconds=time.perf_counter() - started, device=str(device))}
    rows = set_summary_rows(result.summaries)
    report.write_report(out, "sets", rows=rows, meta=meta, figures={"set_metrics": plot_set_metrics(result.summaries, alpha=cfg.alpha)},
                        title=title, result=result)
    reg_summaries = [summarize_splits(m, [metrics], cfg.alpha) for m, metrics in zip(regression.methods, regression.metrics)]
    figures = {"wiggle_intervals": plot_wiggle_intervals(curves), "wiggle_metrics": plot_set_metrics(reg_summaries, alpha=cfg.alpha)}
    report.write_report(out, "regression", rows=regression_rows(regression), meta=meta, figures=figures,
                        title="Wiggle regression: intervals per exit", result=regression)
    for table in (rows, regression_rows(regression)):
        print(report.markdown_table(table))
    print("\n".join(findings))
    return result, regression
