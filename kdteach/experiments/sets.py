"""Notebook 06's experiments: prediction sets at every exit, split conformal vs anytime-valid (Jazbec et al. 2024).

Classification: the multi-exit ResNet of notebook 05 (kdteach.experiments.exits, reloaded from the cache) makes
logits at each exit for the held-out digits. Each comparison splits them at random into a calibration part (20%)
and an evaluation part; every threshold is fitted on the calibration part only. Methods:
    "LAC", "RAPS"     split conformal at each exit on its own (RAPS: lambda 0.01, k_reg 5, randomized);
    "LAC ∩", "RAPS ∩" their running intersections over exits;
    "AVCS"            anytime-valid sets (Dirichlet ratios, running intersection), thresholds from calibration
                      (coverage of each candidate averaged over 10 Dirichlet draws, so the search cannot tune
                      the thresholds to one draw).
repeated_comparison() averages the per-exit metrics over several random calibration splits.

Regression: the "wiggle" data, a 15-block residual MLP with a head per block, Bayesian linear regression heads on
each block's features, per-exit credible intervals (and their running intersection) vs AVCS intervals, in
distribution and on a grid reaching far outside the training inputs.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdteach import runtime
from kdteach.data.batches import Batches
from kdteach.exits import MultiExit, ResidualMLP, exit_feature_vectors, exit_logits, multi_exit_mse
from kdteach.experiments import exits as exit_experiment
from kdteach.report import markdown_table, write_report
from kdteach.sets import (
    avcs_intervals,
    avcs_sets,
    class_conditional_coverage,
    conformal_sets,
    coverage,
    credible_intervals,
    fit_avcs_thresholds,
    fit_bayesian_linear_regression,
    fit_conformal_thresholds,
    interval_metrics,
    interval_running_intersection,
    running_intersection,
    set_metrics,
    wiggle_data,
)
from kdteach.train import fit

ALPHA = 0.05
CALIB_FRACTION = 0.2
METHODS = ("LAC", "LAC ∩", "RAPS", "RAPS ∩", "AVCS")
RAPS_OPTIONS = {"lam": 0.01, "k_reg": 5, "randomized": True}
AVCS_CALIBRATION_DRAWS = 10  # Dirichlet draws averaged per threshold candidate (see fit_avcs_thresholds)


# ----------------------------------------------------------------------------------------------------------------
# Classification


def calibration_split(n: int, fraction: float = CALIB_FRACTION, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of n examples into calibration and evaluation indices.

    Args:
        n: number of examples.
        fraction: share of calibration examples, in (0, 1).
        seed: seed of the permutation.

    Returns:
        calibration indices and evaluation indices (disjoint, together 0..n-1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    n_calib = int(round(fraction * n))
    if not 0 < n_calib < n:
        raise ValueError(f"n = {n} is too small to split with fraction {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_calib], order[n_calib:]


def held_out_logits(mode: str | None = None, *, seed: int = 0, device: torch.device | str | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Notebook 05's exit-distilled multi-exit ResNet (reloaded from the cache, trained if absent), run on the
    held-out digits.

    Args:
        mode: "smoke", "full" or None (the runtime's mode).
        seed: the model's seed.
        device: where to run; None picks one.
        progress: progress bars if it has to train.

    Returns:
        exit logits (exits, N, C) and labels (N,), on the device (the AVCS draws run there too), and the data's name.
    """
    cfg = exit_experiment.config(mode)
    device = torch.device(device) if device is not None else runtime.pick_device()
    data = exit_experiment.load_digits(cfg, device, verbose=False)
    model, _ = exit_experiment.trained_exit_model(cfg, data, distill_weight=0.5, seed=seed, device=device, progress=progress)
    return exit_logits(model, data.test_x), data.test_y, data.source


def compare_sets(
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = ALPHA,
    calib_fraction: float = CALIB_FRACTION,
    seed: int = 0,
    num_parallel: int = 1,
) -> dict[str, Any]:
    """Every method's sets on one random calibration/evaluation split.

    Args:
        exit_logits: (exits, N, C) held-out logits.
        labels: (N,) their labels.
        alpha: miscoverage level.
        calib_fraction: share of calibration examples.
        seed: seed of the split and of every random draw.
        num_parallel: AVCS's parallel copies.

    Returns:
        {"sets": {method: (exits, n_eval, C) bool}, "labels": (n_eval,), "thresholds": {"LAC", "RAPS", "AVCS":
        (exits,)}, "metrics": {method: set_metrics(...) plus "worst_class_coverage"}}; metrics["AVCS"] also holds
        "floor_calibration_coverage": per exit, the calibration split's coverage with every tau = 1, the most any
        threshold search can reach.
    """
    calib, evaluation = calibration_split(len(labels), calib_fraction, seed=seed)
    cal_logits, cal_labels = exit_logits[:, calib], labels[calib]
    eval_logits, eval_labels = exit_logits[:, evaluation], labels[evaluation]
    draws = torch.Generator().manual_seed(seed)
    thresholds = {
        "LAC": fit_conformal_thresholds(cal_logits, cal_labels, alpha, score="lac"),
        "RAPS": fit_conformal_thresholds(cal_logits, cal_labels, alpha, score="raps", generator=draws, **RAPS_OPTIONS),
    }
    with warnings.catch_warnings():
        # The "coverage below 1 - alpha even at tau = 1" warning is reported as a number instead:
        # metrics["AVCS"]["floor_calibration_coverage"] below.
        warnings.simplefilter("ignore", UserWarning)
        thresholds["AVCS"] = fit_avcs_thresholds(cal_logits, cal_labels, alpha, num_parallel=num_parallel, seed=seed, draws=AVCS_CALIBRATION_DRAWS)
    sets = {"LAC": conformal_sets(eval_logits, thresholds["LAC"], score="lac")}
    sets["LAC ∩"] = running_intersection(sets["LAC"])
    sets["RAPS"] = conformal_sets(eval_logits, thresholds["RAPS"], score="raps", generator=draws, **RAPS_OPTIONS)
    sets["RAPS ∩"] = running_intersection(sets["RAPS"])
    # A different seed from the calibration draws: the evaluation sets must not reuse the draws the thresholds saw.
    sets["AVCS"] = avcs_sets(eval_logits, thresholds["AVCS"], alpha, generator=torch.Generator().manual_seed(seed + 10_000), num_parallel=num_parallel)
    # AVCS at its smallest thresholds (tau = 1 everywhere) on the calibration split: no threshold search can do better
    # than this, since a true label whose logit is below 1 at some exit is out for good. One draw.
    floor_sets = avcs_sets(cal_logits, torch.ones(exit_logits.shape[0]), alpha, generator=torch.Generator().manual_seed(seed), num_parallel=num_parallel)
    metrics = {}
    for method, s in sets.items():
        metrics[method] = set_metrics(s, eval_labels)
        per_class = class_conditional_coverage(s, eval_labels)
        metrics[method]["worst_class_coverage"] = per_class.nan_to_num(nan=math.inf).min(dim=-1).values
    metrics["AVCS"]["floor_calibration_coverage"] = coverage(floor_sets, cal_labels)
    return {"sets": sets, "labels": eval_labels, "thresholds": thresholds, "metrics": metrics}


def repeated_comparison(
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    splits: int = 10,
    alpha: float = ALPHA,
    calib_fraction: float = CALIB_FRACTION,
    num_parallel: int = 1,
) -> dict[str, dict[str, torch.Tensor]]:
    """compare_sets over several random calibration splits (seeds 0..splits-1): per-exit means and std.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).
        splits: number of random splits.
        alpha, calib_fraction, num_parallel: as in compare_sets.

    Returns:
        {method: {metric: (exits,) mean, metric + "_std": (exits,) std over splits}}.
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    runs = [compare_sets(exit_logits, labels, alpha=alpha, calib_fraction=calib_fraction, seed=s, num_parallel=num_parallel)["metrics"] for s in range(splits)]
    summary: dict[str, dict[str, torch.Tensor]] = {}
    for method in runs[0]:
        summary[method] = {}
        for metric in runs[0][method]:
            values = torch.stack([run[method][metric] for run in runs])
            summary[method][metric] = values.mean(dim=0)
            summary[method][metric + "_std"] = values.std(dim=0) if splits > 1 else torch.zeros_like(values[0])
    return summary


def per_exit_rows(summary: dict[str, dict[str, torch.Tensor]], metric: str) -> list[dict[str, Any]]:
    """One metric per exit, one column per method.

    Args:
        summary: method -> {metric: (exits,)} (compare_sets(...)["metrics"] or repeated_comparison(...)).
        metric: e.g. "coverage", "size", "empty_rate", "nestedness".

    Returns:
        Rows for markdown_table: {"exit": t, method: value, ...}.
    """
    exits = len(next(iter(summary.values()))[metric])
    return [{"exit": t + 1, **{method: float(m[metric][t]) for method, m in summary.items()}} for t in range(exits)]


def summary_rows(summary: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """One row per method: coverage at the first and last exit and its minimum over exits, the fraction covered at
    every exit, mean set size and empty rate over exits, the smallest N(t), and the worst class's coverage at the
    last exit.

    Args:
        summary: repeated_comparison(...) (or one compare_sets(...)["metrics"]).

    Returns:
        Rows for markdown_table.
    """
    return [{**_method_row(method, m, "mean size"), "worst-class coverage (last exit)": float(m["worst_class_coverage"][-1])} for method, m in summary.items()]


def _method_row(method: str, m: dict[str, torch.Tensor], size_name: str) -> dict[str, Any]:
    # The columns the classification and regression tables share.
    return {
        "method": method,
        "coverage exit 1": float(m["coverage"][0]),
        "coverage last exit": float(m["coverage"][-1]),
        "min coverage over exits": float(m["coverage"].min()),
        "covered at every exit": float(m["all_exit_coverage"][-1]),
        size_name: float(m["size"].mean()),
        "empty rate": float(m["empty_rate"].mean()),
        "min N(t)": float(m["nestedness"].min()),
    }


# ----------------------------------------------------------------------------------------------------------------
# Regression


@dataclass(frozen=True)
class WiggleConfig:
    """Sizes and schedule of the regression experiment.

    Attributes:
        n: points drawn (80% train, 20% test).
        noise_std: noise of the targets.
        width, depth: the residual MLP (depth = number of blocks = number of exits).
        epochs, batch_size, lr: Adam training on the mean of the exits' squared errors.
        ood_reach: the grid of inputs spans +- this many training standard deviations.
    """

    n: int = 900
    noise_std: float = 0.25
    width: int = 64
    depth: int = 15
    epochs: int = 400
    batch_size: int = 128
    lr: float = 3e-3
    ood_reach: float = 6.0

    def key(self) -> str:
        """A short hash of the configuration, used in checkpoint file names."""
        return exit_experiment.config_key(self)


SMOKE_WIGGLE = WiggleConfig(width=32, epochs=120)


def wiggle_config(mode: str | None = None) -> WiggleConfig:
    """The regression configuration of a mode: "smoke", "full", or None for the runtime's mode."""
    return exit_experiment.pick_config(mode, SMOKE_WIGGLE, WiggleConfig())


@dataclass
class WiggleSplits:
    """Standardised wiggle data (by the training split's mean and std) and the standardisation itself."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    x_mean: float
    x_std: float
    y_mean: float
    y_std: float


def wiggle_splits(cfg: WiggleConfig, *, seed: int = 0) -> WiggleSplits:
    """Draws the wiggle data, splits it 80/20 and standardises x and y by the training split.

    Args:
        cfg: the configuration.
        seed: seed of the data.

    Returns:
        WiggleSplits (CPU tensors: x (N, 1), y (N,)).
    """
    x, y = wiggle_data(cfg.n, noise_std=cfg.noise_std, seed=seed)
    test, train = calibration_split(cfg.n, 0.2, seed=seed)  # the first 20% of a random permutation are held out
    xm, xs, ym, ys = float(x[train].mean()), float(x[train].std()), float(y[train].mean()), float(y[train].std())
    return WiggleSplits((x[train] - xm) / xs, (y[train] - ym) / ys, (x[test] - xm) / xs, (y[test] - ym) / ys, xm, xs, ym, ys)


def trained_wiggle_model(cfg: WiggleConfig, data: WiggleSplits, *, seed: int = 0, device: torch.device | str | None = None, progress: bool = True) -> MultiExit:
    """Trains (or reloads from the cache) the residual MLP with a head on every block.

    Args:
        cfg: the configuration.
        data: the standardised splits.
        seed: seed of the initialisation and the shuffling.
        device: where to train; None picks one.
        progress: progress bars.

    Returns:
        The model, in eval mode.
    """
    device = torch.device(device) if device is not None else runtime.pick_device()
    torch.manual_seed(seed)
    model = MultiExit(ResidualMLP(1, cfg.width, cfg.depth, 1), 1, example_input=torch.zeros(2, 1)).to(device)
    # The target is called "target": fit() treats "y" as class labels.
    train = Batches({"x": data.train_x.to(device), "target": data.train_y.to(device)}, cfg.batch_size, shuffle=True, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    path = runtime.cache_dir() / "sets" / f"wiggle_{cfg.key()}_seed{seed}.pt"
    with runtime.cpu_threads(runtime.threads_for_rows(train.n, device)):
        fit(model, train, epochs=cfg.epochs, optimizer=optimizer, loss_fn=multi_exit_mse, device=device, checkpoint=path, resume=True,
            progress=progress, desc="residual MLP, 15 exits")
    return model.eval()


def exit_predictive(model: MultiExit, data: WiggleSplits, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bayesian linear regression heads on every exit's features (fitted on the training split), evaluated at x.

    Args:
        model: the trained multi-exit regression network.
        data: the splits (the heads are fitted on train_x, train_y).
        x: (N, 1) standardised inputs to predict at.

    Returns:
        {"mean": (exits, N), "epistemic_var": (exits, N), "noise_var": (exits,), "prior_std": (exits,)}.
    """
    device = next(model.parameters()).device
    train_features = exit_feature_vectors(model, data.train_x.to(device))
    features = exit_feature_vectors(model, x.to(device))
    heads = [fit_bayesian_linear_regression(h.cpu(), data.train_y) for h in train_features]
    means, epistemic = zip(*(head.predictive(h.cpu()) for head, h in zip(heads, features)))
    return {
        "mean": torch.stack(means),
        "epistemic_var": torch.stack(epistemic),
        "noise_var": torch.tensor([head.noise_std**2 for head in heads], dtype=torch.float64),
        "prior_std": torch.tensor([head.prior_std for head in heads], dtype=torch.float64),
    }


def regression_intervals(predictive: dict[str, torch.Tensor], *, alpha: float = ALPHA, seed: int = 0, num_parallel: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-exit credible intervals, their running intersection, and AVCS intervals.

    Args:
        predictive: exit_predictive(...).
        alpha: miscoverage level.
        seed: seed of AVCS's posterior draws.
        num_parallel: AVCS's parallel copies.

    Returns:
        {"Bayes": (lower, upper), "Bayes ∩": ..., "AVCS": ...}, each (exits, N).
    """
    pred_var = predictive["epistemic_var"] + predictive["noise_var"][:, None]
    bayes = credible_intervals(predictive["mean"], pred_var, alpha)
    avcs = avcs_intervals(predictive["mean"], predictive["epistemic_var"], predictive["noise_var"], alpha, generator=torch.Generator().manual_seed(seed), num_parallel=num_parallel)
    return {"Bayes": bayes, "Bayes ∩": interval_running_intersection(*bayes), "AVCS": avcs}


def regression_experiment(mode: str | None = None, *, seed: int = 0, alpha: float = ALPHA, device: torch.device | str | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole regression case: data, model, heads, intervals on the test split and on an out-of-distribution grid.

    Args:
        mode: "smoke", "full" or None (the runtime's mode).
        seed: seed of data, model and draws.
        alpha: miscoverage level.
        device: where to train.
        progress: progress bars.

    Returns:
        {"data": WiggleSplits, "test": {method: (lower, upper)}, "metrics": {method: interval_metrics(...)},
         "grid_x": (G,), "grid": {method: (lower, upper)}, "grid_predictive": exit_predictive(...) on the grid}.
    """
    cfg = wiggle_config(mode)
    data = wiggle_splits(cfg, seed=seed)
    model = trained_wiggle_model(cfg, data, seed=seed, device=device, progress=progress)
    test = regression_intervals(exit_predictive(model, data, data.test_x), alpha=alpha, seed=seed)
    grid_x = torch.linspace(-cfg.ood_reach, cfg.ood_reach, 400)
    grid_predictive = exit_predictive(model, data, grid_x[:, None])
    grid = regression_intervals(grid_predictive, alpha=alpha, seed=seed + 1)
    metrics = {method: interval_metrics(lo, up, data.test_y) for method, (lo, up) in test.items()}
    return {"data": data, "test": test, "metrics": metrics, "grid_x": grid_x, "grid": grid, "grid_predictive": grid_predictive}


def empty_rate_by_region(grid_x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, train_x: torch.Tensor) -> dict[str, float]:
    """The last exit's empty rate on grid points inside vs outside the training inputs' range.

    Args:
        grid_x: (G,) standardised grid.
        lower, upper: (exits, G) intervals on the grid.
        train_x: (N, 1) standardised training inputs.

    Returns:
        {"inside": rate, "outside": rate}.
    """
    inside = (grid_x >= train_x.min()) & (grid_x <= train_x.max())
    empty = lower[-1] > upper[-1]
    return {"inside": float(empty[inside].double().mean()), "outside": float(empty[~inside].double().mean())}


# ----------------------------------------------------------------------------------------------------------------
# Headless run


def run(mode: str = "full", out: str | Path = "runs/sets", seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Notebook 06's tables and figures, headless (`python -m kdteach sets`).

    Args:
        mode: "full" or "smoke".
        out: folder for sets.json, sets.md, regression.json, regression.md and the figures.
        seed: seed of the models and of the first calibration split.
        progress: progress bars.

    Returns:
        The classification summary rows.
    """
    from kdteach.plots.sets import plot_set_metrics, plot_wiggle_intervals

    started = time.perf_counter()
    device = runtime.pick_device()
    logits, labels, source = held_out_logits(mode, seed=seed, device=device, progress=progress)
    summary = repeated_comparison(logits, labels, splits=10)
    rows = summary_rows(summary)
    meta = {"mode": mode, "data": source, "alpha": ALPHA, "calibration": CALIB_FRACTION, "splits": 10, "held_out": len(labels), "device": str(device)}
    write_report(out, "sets", rows=rows, meta=meta, figures={"set_metrics": plot_set_metrics(summary, alpha=ALPHA)}, title="Prediction sets per exit (means over 10 calibration splits)")
    regression = regression_experiment(mode, seed=seed, device=device, progress=progress)
    reg_rows = summary_rows_regression(regression)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    figures = {"wiggle_intervals": plot_wiggle_intervals(regression), "wiggle_metrics": plot_set_metrics(regression["metrics"], alpha=ALPHA)}
    write_report(out, "regression", rows=reg_rows, meta=meta, figures=figures, title="Wiggle regression: intervals per exit")
    print(markdown_table(rows))
    print(markdown_table(reg_rows))
    return rows


def summary_rows_regression(regression: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per regression method: coverage (first, last, min over exits), covered at every exit, mean width,
    empty rate on the test split, smallest N(t), and the last exit's empty rate on the out-of-distribution part of
    the grid.

    Args:
        regression: regression_experiment(...).

    Returns:
        Rows for markdown_table.
    """
    rows = []
    for method, m in regression["metrics"].items():
        region = empty_rate_by_region(regression["grid_x"], *regression["grid"][method], regression["data"].train_x)
        rows.append({**_method_row(method, m, "mean width"), "empty rate, last exit, outside training range": region["outside"]})
    return rows


def classification_findings(summary: dict[str, dict[str, torch.Tensor]], *, alpha: float = ALPHA, smoke: bool = False, near: float = 0.02) -> list[str]:
    """Sentences about the classification comparison, written from its numbers.

    Args:
        summary: repeated_comparison(...) (or one compare_sets(...)["metrics"]).
        alpha: the target miscoverage.
        smoke: add the caveat that smoke-mode numbers are noisy.
        near: how far from 1 - alpha a coverage may be and still be called "near".

    Returns:
        A list of sentences.
    """
    target = 1 - alpha
    lines = []
    for method in ("RAPS", "LAC"):
        n = summary[method]["nestedness"]
        t = int(n.argmin())
        if float(n[t]) < 1:
            lines.append(f"Per-exit {method} sets are not nested: N(t) falls to {float(n[t]):.3f} at exit {t + 1}, i.e. labels ruled out earlier come back.")
        else:
            lines.append(f"Per-exit {method} sets happened to be nested on this data (N(t) = 1 at every exit).")
    for method in ("RAPS ∩", "LAC ∩"):
        kept = float(summary[method]["coverage"][-1])
        verdict = "below" if kept < target else "not below"
        lines.append(f"{method} is nested by construction, but its last-exit coverage is {kept:.1%}, {verdict} the target {target:.0%} (exit 1: {float(summary[method]['coverage'][0]):.1%}).")
    avcs = summary["AVCS"]
    low, high = float(avcs["coverage"].min()), float(avcs["coverage"].max())
    closeness = "near" if abs(low - target) <= near and abs(high - target) <= near else ("below" if low < target - near else "above")
    lines.append(
        f"AVCS: smallest N(t) {float(avcs['nestedness'].min()):.3f}; coverage between {low:.1%} and {high:.1%} over exits, "
        f"{closeness} the target {target:.0%} (within {near:.0%} counts as near); {float(avcs['all_exit_coverage'][-1]):.1%} of examples are covered at every exit."
    )
    if "floor_calibration_coverage" in avcs:
        floor = float(avcs["floor_calibration_coverage"][-1])
        lines.append(
            f"With its smallest thresholds (tau = 1 at every exit) AVCS keeps {floor:.1%} of calibration labels at every exit "
            + ("(mean over splits): below the target, so here the network's logits, not the threshold search, cap the coverage AVCS can reach."
               if floor < target else
               "(mean over splits): just above the target, so the search had little room to raise the thresholds."
               if floor < target + near else "(mean over splits), so the search had room to raise the thresholds.")
        )
    size_avcs, size_raps, size_inter = (float(summary[m]["size"].mean()) for m in ("AVCS", "RAPS", "RAPS ∩"))
    comparison = "larger" if size_avcs > size_raps else "not larger"
    lines.append(
        f"AVCS sets hold {size_avcs:.2f} labels on average over exits, {comparison} than per-exit RAPS sets ({size_raps:.2f}; ratio "
        f"{size_avcs / size_raps:.2f}); RAPS ∩ sets hold {size_inter:.2f}."
    )
    lines.append(f"Empty sets (abstentions), mean over exits: AVCS {float(avcs['empty_rate'].mean()):.1%}, RAPS {float(summary['RAPS']['empty_rate'].mean()):.1%}, RAPS ∩ {float(summary['RAPS ∩']['empty_rate'].mean()):.1%}.")
    if smoke:
        lines.append("Smoke mode: a small held-out set, so calibration splits hold a few hundred examples and these numbers move by a point or more between splits (the bands in the plot). Full mode gives the numbers to read.")
    return lines


def regression_findings(regression: dict[str, Any], *, alpha: float = ALPHA, smoke: bool = False) -> list[str]:
    """Sentences about the regression comparison, written from its numbers.

    Args:
        regression: regression_experiment(...).
        alpha: the target miscoverage.
        smoke: add the caveat that smoke-mode numbers are noisy.

    Returns:
        A list of sentences.
    """
    m = regression["metrics"]
    target = 1 - alpha
    bayes_n = m["Bayes"]["nestedness"]
    inter_cov = float(m["Bayes ∩"]["coverage"][-1])
    avcs = m["AVCS"]
    outside = {method: empty_rate_by_region(regression["grid_x"], *regression["grid"][method], regression["data"].train_x) for method in regression["grid"]}
    lines = [
        f"Per-exit credible intervals: smallest N(t) {float(bayes_n.min()):.3f} (exit {int(bayes_n.argmin()) + 1}); coverage from {float(m['Bayes']['coverage'].min()):.1%} to {float(m['Bayes']['coverage'].max()):.1%}.",
        f"Their running intersection keeps {inter_cov:.1%} of test targets to the last exit ({'below' if inter_cov < target else 'not below'} {target:.0%}).",
        f"AVCS intervals: smallest N(t) {float(avcs['nestedness'].min()):.3f}; coverage from {float(avcs['coverage'].min()):.1%} to {float(avcs['coverage'].max()):.1%}; "
        f"mean width {float(avcs['size'].mean()):.2f} against {float(m['Bayes']['size'].mean()):.2f} for the credible intervals.",
        f"Out of distribution (grid points outside the training inputs), the last AVCS interval is empty for {outside['AVCS']['outside']:.0%} of points, "
        f"inside the training range for {outside['AVCS']['inside']:.0%}; per-exit credible intervals cannot be empty ({outside['Bayes']['outside']:.0%} outside).",
    ]
    if smoke:
        lines.append("Smoke mode: a narrower network trained for fewer epochs; the test split has 180 points, so coverages move by a couple of points between seeds.")
    return lines
