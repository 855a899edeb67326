"""Notebook 07, the capstone: one distilled multi-exit student, both papers. Its early readout is its first exit.

DeDiER trusts an early readout of the student to find the examples it gets wrong for the wrong reason; Jazbec et
al. trust the student's early exits to give prediction sets that stay valid as computation goes on. Here one
multi-exit student (exits after layer1, layer2 and the pooled features) is distilled from notebook 02's debiased
teacher three ways, every seed from the same initial weights (a paired comparison):

- "KD": every exit distils from the teacher (the mean over exits of notebook 03's KD loss);
- "DeDiER, detached readout": the same loss, reweighted by DeDiER's weights from a readout on layer1 that is
  retrained on the student's frozen features after every epoch (as in notebook 03: it learns nothing into the student);
- "DeDiER, exit 1": the same, with the weights read off the student's own first exit, trained jointly with it.

Every student keeps its last epoch (no epoch selection, so no validation group label is used). On the test split,
per exit and per group: accuracy, and for split-conformal LAC and RAPS sets and AVCS sets, the coverage, size, empty
rate and nestedness, each calibrated on random calibration splits of the test set (as notebook 06 does), averaged
over the splits. The teacher's sets (one exit) are measured on the same splits. capstone_rows, capstone_accuracy_rows
and capstone_sentences present a DatasetResult, every comparison through kdteach.report's one rule.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kdteach import report, runtime
from kdteach.debias import DeDiERReweighting, student_left_as_is
from kdteach.distill import KDLoss
from kdteach.exits import MultiExit, exit_logits
from kdteach.experiments import common, dedier
from kdteach.groups import group_metrics
from kdteach.models.resnet import resnet_cifar
from kdteach.plots.sets import plot_group_coverage
from kdteach.report import comparison_sentence, mean_interval, mean_std, paired_comparison, smoke_note
from kdteach.sets import MethodSummary, calibration_split, method_sets, set_metrics, summarize_splits
from kdteach.train import predict

VARIANTS = ("KD", "DeDiER, detached readout", "DeDiER, exit 1")
SET_METHODS = ("LAC", "RAPS", "AVCS")
EXITS = ("layer1", "layer2", "pooled")  # the last exit is the student's own classifier on pooled features
DATASETS = dedier.DATASETS


@dataclass(frozen=True)
class CapstoneConfig:
    """What the capstone adds to notebook 03's student recipe (its config() of the same mode supplies the data, the
    teacher, the student's depth and width, epochs, optimiser, T, soft weight, alpha and beta of the weights, the
    readout and start_after).

    Attributes:
        mode: "smoke" or "full" (also picks notebook 03's configuration).
        datasets: the stand-ins to run (waterbirds_like on `seeds`, colored_digits on `few_seeds`).
        head_pool: the early exits' heads read their stage average-pooled to head_pool x head_pool cells.
        alpha: miscoverage of every set (0.1: a group's shortfall shows with a few hundred examples per group).
        calib_fraction, splits: the calibration share of the test split, and how many random splits per student.
        avcs_draws, avcs_start: AVCS's threshold rule (notebook 06's).
        seeds, few_seeds: student seeds of waterbirds_like and of colored_digits.
    """

    mode: str = "full"
    datasets: tuple[str, ...] = DATASETS
    head_pool: int = 2
    alpha: float = 0.1
    calib_fraction: float = 0.25
    splits: int = 10
    avcs_draws: int = 10
    avcs_start: float = 0.25
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    few_seeds: tuple[int, ...] = (0, 1, 2)


SMOKE_CONFIG = CapstoneConfig(mode="smoke", datasets=("waterbirds_like",), splits=3, seeds=(0,), few_seeds=(0,))
FULL_CONFIG = CapstoneConfig()
# What decides a student, besides the prepared data and teacher (Prepared.key), the variant and the seed.
STUDENT_FIELDS = dedier.STUDENT_FIELDS + dedier.READOUT_FIELDS + ("alpha", "beta", "readout_stage")


def config(mode: str | None = None) -> CapstoneConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


class MultiExitKDLoss:
    """fit()'s loss for a multi-exit student: the mean over exits of one KDLoss (the teacher's cached logits and,
    for DeDiER, the same instance weights at every exit)."""

    def __init__(self, kd: KDLoss) -> None:
        self.kd = kd

    def __call__(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if outputs.dim() != 3:
            raise ValueError(f"outputs must have shape (exits, N, C) (a MultiExit model), got {tuple(outputs.shape)}")
        return torch.stack([self.kd(logits, batch) for logits in outputs]).mean()


class ExitReadout:
    """DeDiER's readout taken from one of the student's own exits. Unlike EarlyReadout it is trained with the
    student by the student's loss, so fit() trains nothing; predict() reads the exit in eval mode.

    Args:
        exit_index: which exit (0: the first).
        stage: that exit's stage name (DeDiERReweighting's freeze_shared reads it).
    """

    def __init__(self, exit_index: int, stage: str) -> None:
        self.exit_index, self.stage = exit_index, stage

    def fit(self, student: nn.Module, batches: object) -> dict[str, float]:
        """Nothing to train: the exit learned with the student."""
        return {}

    def predict(self, student: MultiExit, batches) -> torch.Tensor:
        """The exit's (N, C) logits on batches, in dataset order, the student left as it was."""
        with student_left_as_is(student):
            return exit_logits(student, batches)[self.exit_index]

    def state_dict(self) -> dict:
        """Nothing of its own to save (the exit's weights are the student's)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


def multi_exit_student(prep: dedier.Prepared, dcfg: dedier.DeDiERConfig, cfg: CapstoneConfig, seed: int) -> MultiExit:
    """Notebook 03's CIFAR ResNet student with a head after each stage of EXITS, seeded (every variant of a seed
    starts from the same weights)."""
    torch.manual_seed(seed)
    backbone = resnet_cifar(dcfg.student_depth, dcfg.student_width, prep.train.num_classes, prep.train.images.shape[1])
    return MultiExit(backbone, prep.train.num_classes, example_input=torch.zeros(prep.train.images[:1].shape), exits=EXITS,
                     head_pool=cfg.head_pool).to(prep.device)


def train_student(variant: str, prep: dedier.Prepared, dcfg: dedier.DeDiERConfig, cfg: CapstoneConfig, *, seed: int = 0,
                  progress: bool = True) -> MultiExit:
    """Trains (or reloads) one multi-exit student by one of VARIANTS; returns it in eval mode at its last epoch.

    Args:
        variant: "KD", "DeDiER, detached readout" or "DeDiER, exit 1".
        prep: dedier.prepare()'s data and teacher (its cached logits are the soft targets).
        dcfg, cfg: notebook 03's configuration (the recipe) and the capstone's.
        seed, progress: the seed of the weights and of the shuffling; progress bars.

    Returns:
        The trained MultiExit.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    model = multi_exit_student(prep, dcfg, cfg, seed)
    train = prep.train.batches(dcfg.batch_size, device=prep.device, shuffle=True, seed=seed, extra={"teacher_logits": prep.teacher_logits})
    reweighting = None
    if variant != "KD":
        readout = (dedier.early_readout(dcfg, dcfg.readout_stage, prep, seed) if variant == "DeDiER, detached readout"
                   else ExitReadout(0, EXITS[0]))
        reweighting = DeDiERReweighting(model, readout, train, alpha=dcfg.alpha, beta=dcfg.beta, start_after=dcfg.start_after)
    loss = MultiExitKDLoss(KDLoss(temperature=dcfg.temperature, soft_weight=dcfg.soft_weight, instance_weights=reweighting))
    path = common.checkpoint_path("capstone", f"{prep.name}-{variant}", prep.key, common.fields_of(dcfg, STUDENT_FIELDS), EXITS,
                                  cfg.head_pool, seed)
    common.train_or_load_adamw(model, train, path=path, epochs=dcfg.epochs, lr=dcfg.lr, weight_decay=dcfg.weight_decay, device=prep.device,
                               progress=progress, desc=f"{variant} ({prep.name}, seed {seed})", loss_fn=loss, on_epoch_end=reweighting)
    return model.eval()


@dataclass(frozen=True)
class ModelOutcome:
    """One model of one seed on the test split: per exit and group, its accuracy; per set method, its MethodSummary
    over the calibration splits (kd.sets.summarize_splits: coverage, size, empty rate, nestedness per exit) on every
    example (marginal) and on each group (a teacher has one exit); the share of calibration splits on which
    AVCS's threshold rule reached its rank (on the others its sets carry no guarantee)."""

    dataset: str
    model: str
    seed: int
    accuracy: tuple[tuple[float, ...], ...]  # [exit][group]
    marginal: dict[str, MethodSummary]
    by_group: dict[str, tuple[MethodSummary, ...]]
    avcs_feasible: float


def measure(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int, cfg: CapstoneConfig, *,
            dataset: str, model: str, seed: int) -> ModelOutcome:
    """Accuracy per exit and group, and SET_METHODS' sets per exit and group over cfg.splits calibration splits.

    Args:
        logits: (exits, N, C) test logits ((1, N, C) for a one-exit teacher); labels, groups: (N,).
        num_groups, cfg: the groups' count; the capstone's configuration (alpha, splits, AVCS's rule).
        dataset, model, seed: what is measured. The splits are seeded by `seed`, so a teacher measured with a
            student's seed sees the student's splits (a paired comparison).

    Returns:
        ModelOutcome.
    """
    logits, labels, groups = logits.cpu(), labels.cpu(), groups.cpu()
    accuracy = tuple(group_metrics(z, labels, groups, num_groups).per_group for z in logits)
    marginal, by_group = {m: [] for m in SET_METHODS}, {m: [[] for _ in range(num_groups)] for m in SET_METHODS}
    feasible = []
    with warnings.catch_warnings(), runtime.cpu_threads(1):  # an infeasible AVCS tau is in its numbers; tiny tensors
        warnings.simplefilter("ignore", UserWarning)
        for split in range(cfg.splits):
            calib, evaluation = calibration_split(len(labels), cfg.calib_fraction, seed=seed * 1000 + split)
            found = method_sets(logits[:, calib], labels[calib], logits[:, evaluation], cfg.alpha, seed=seed * 1000 + split,
                                avcs_draws=cfg.avcs_draws, avcs_start=cfg.avcs_start)
            eval_labels, eval_groups = labels[evaluation], groups[evaluation]
            feasible.append(found.avcs.feasible)
            for method in SET_METHODS:
                sets = found.sets[method]
                marginal[method].append(set_metrics(sets, eval_labels))
                for g in range(num_groups):
                    mine = eval_groups == g
                    if mine.any():
                        by_group[method][g].append(set_metrics(sets[:, mine], eval_labels[mine]))
    summary = lambda method, metrics: summarize_splits(method, metrics, cfg.alpha)
    return ModelOutcome(dataset, model, seed, accuracy, {m: summary(m, v) for m, v in marginal.items()},
                        {m: tuple(summary(m, v) for v in per) for m, per in by_group.items()}, sum(feasible) / len(feasible))


@dataclass(frozen=True)
class DatasetResult:
    """One dataset: its groups (and which are bias-conflicting: the spurious attribute disagrees with the label),
    the exits' names, the seeds, every model's outcomes (the teacher's with each student seed's splits), and the
    test examples per group."""

    dataset: str
    group_names: tuple[str, ...]
    conflicting: tuple[int, ...]
    exits: tuple[str, ...]
    seeds: tuple[int, ...]
    outcomes: tuple[ModelOutcome, ...]
    test_counts: tuple[int, ...] = ()  # test examples per group


def run_dataset(dataset: str, cfg: CapstoneConfig, device: torch.device | str, *, seeds: tuple[int, ...] | None = None,
                progress: bool = True) -> DatasetResult:
    """The teacher and every variant's student at every seed on one dataset, measured on its test split.

    Args:
        dataset: one of DATASETS.
        cfg, device: the configuration; where to train.
        seeds: the student seeds (default cfg.seeds for waterbirds_like, cfg.few_seeds otherwise).
        progress: progress bars.

    Returns:
        DatasetResult.
    """
    dcfg = dedier.config(cfg.mode)
    seeds = tuple(seeds if seeds is not None else (cfg.seeds if dataset == "waterbirds_like" else cfg.few_seeds))
    prep = dedier.prepare(dataset, dcfg, device, progress=progress)
    test, ordered = prep.test, prep.test.batches(512, device=prep.device)
    teacher_logits = predict(prep.teacher, ordered)[None]
    args = dict(labels=test.labels, groups=test.groups, num_groups=test.num_groups, cfg=cfg, dataset=dataset)
    outcomes = []
    for seed in seeds:
        outcomes.append(measure(teacher_logits, model="teacher", seed=seed, **args))
        for variant in VARIANTS:
            student = train_student(variant, prep, dcfg, cfg, seed=seed, progress=progress)
            outcomes.append(measure(exit_logits(student, ordered), model=variant, seed=seed, **args))
    conflicting = tuple(g for g in range(test.num_groups) if bool((test.spurious != test.labels)[test.groups == g].all()))
    counts = tuple(int((test.groups == g).sum()) for g in range(test.num_groups))
    return DatasetResult(dataset, tuple(test.group_names), conflicting, EXITS, seeds, tuple(outcomes), counts)


@dataclass(frozen=True)
class CapstoneResult:
    """Everything run() measured: the configuration, one DatasetResult per dataset, and the wall time."""

    config: CapstoneConfig
    datasets: tuple[DatasetResult, ...]
    seconds: float


# Tables and sentences: coverage per exit and group, in tables and in sentences chosen by paired_comparison.


def _capstone_value(result: DatasetResult, model: str, method: str, metric: str, exit_index: int, group: int | None) -> dict[int, float]:
    # {seed: value} of one model's set metric at one exit, for one group (None: every example). A teacher has one
    # exit, which stands for every exit index.
    values = {}
    for o in result.outcomes:
        if o.model == model:
            sets = o.marginal[method] if group is None else o.by_group[method][group]
            series = getattr(sets, metric)
            values[o.seed] = float(series[min(exit_index, len(series) - 1)])
    return values


def _capstone_reduce(result: DatasetResult, model: str, method: str, metric: str, exit_index: int, groups: Sequence[int], how: str) -> dict[int, float]:
    per_group = [_capstone_value(result, model, method, metric, exit_index, g) for g in groups]
    pick = min if how == "min" else (lambda v: sum(v) / len(v))
    return {seed: pick([values[seed] for values in per_group]) for seed in per_group[0]}


def _capstone_models(result: DatasetResult) -> list[tuple[str, int]]:
    # (model, exit index) rows: the teacher's one exit, then every exit of each student variant.
    students = list(dict.fromkeys(o.model for o in result.outcomes if o.model != "teacher"))
    return [("teacher", 0)] + [(m, e) for m in students for e in range(len(result.exits))]


def capstone_rows(result: DatasetResult, *, method: str, metric: str = "coverage") -> list[dict[str, Any]]:
    """One row per model and exit: a set metric of one method per group, marginal and worst group, as mean [95%
    interval] over seeds (coverage and empty rate in %).

    Args:
        result: a DatasetResult.
        method: "LAC", "RAPS" or "AVCS".
        metric: "coverage", "size", "empty_rate" or "nestedness".

    Returns:
        Rows: dataset, sets, model, exit, one column per group, "every example", "worst group".
    """
    scale = 100.0 if metric in ("coverage", "empty_rate") else 1.0
    digits = 1 if scale == 100.0 else 3
    rows = []
    for model, e in _capstone_models(result):
        row: dict[str, Any] = {"dataset": result.dataset, "sets": method, "model": model,
                               "exit": "its one exit" if model == "teacher" else f"{e + 1} ({result.exits[e]})"}
        for g, name in enumerate(result.group_names):
            row[name] = mean_interval(list(_capstone_value(result, model, method, metric, e, g).values()), scale=scale, digits=digits)
        row["every example"] = mean_interval(list(_capstone_value(result, model, method, metric, e, None).values()), scale=scale, digits=digits)
        if metric == "coverage":
            worst = _capstone_reduce(result, model, method, metric, e, range(len(result.group_names)), "min")
            row["worst group"] = mean_interval(list(worst.values()), scale=scale, digits=digits)
        rows.append(row)
    return rows


def capstone_accuracy_rows(result: DatasetResult) -> list[dict[str, Any]]:
    """One row per model and exit: test accuracy per group and worst group, mean [95% interval] over seeds (%)."""
    rows = []
    for model, e in _capstone_models(result):
        mine = [o for o in result.outcomes if o.model == model]
        if model == "teacher":
            mine = mine[:1]  # the same teacher at every seed: one value
        row: dict[str, Any] = {"dataset": result.dataset, "model": model, "exit": "its one exit" if model == "teacher" else f"{e + 1} ({result.exits[e]})"}
        for g, name in enumerate(result.group_names):
            row[name] = mean_interval([o.accuracy[min(e, len(o.accuracy) - 1)][g] for o in mine], scale=100.0)
        row["worst group"] = mean_interval([min(o.accuracy[min(e, len(o.accuracy) - 1)]) for o in mine], scale=100.0)
        rows.append(row)
    return rows


def capstone_sentences(result: DatasetResult, *, alpha: float, mode: str = "full", methods: Sequence[str] = ("AVCS", "LAC")) -> list[str]:
    """The capstone's findings on one dataset, each from paired_comparison over the student seeds.

    Per set method: the KD student's marginal and worst-group coverage at the first and last exit against the target;
    for every student, bias-conflicting against bias-aligned groups at exit 1; the KD student (last exit) against its teacher;
    each DeDiER variant against KD on worst-group coverage (exit 1 and the last) and on the conflicting groups' set
    size at exit 1; then DeDiER against KD on worst-group accuracy at the last exit.

    Args:
        result: a DatasetResult.
        alpha: the sets' miscoverage (the target is 1 - alpha).
        mode: "smoke" adds the smoke note.
        methods: the set methods to word.

    Returns:
        The sentences.
    """
    r, groups, last = result, range(len(result.group_names)), len(result.exits) - 1
    conflicting = list(r.conflicting)
    aligned = [g for g in groups if g not in r.conflicting]
    students = list(dict.fromkeys(o.model for o in r.outcomes if o.model != "teacher"))
    kd, dedier_variants = students[0], students[1:]
    where = {0: f"exit 1 ({r.exits[0]})", last: f"the last exit ({r.exits[last]})"}
    lines = [f"{r.dataset}: sets at miscoverage {alpha:g} (target coverage {100 * (1 - alpha):.0f}%), calibrated on random splits of "
             f"the test set; bias-conflicting groups: {', '.join(repr(r.group_names[g]) for g in conflicting)}; seeds {list(r.seeds)}."]
    for method in methods:
        for e in (0, last):
            marginal = list(_capstone_value(r, kd, method, "coverage", e, None).values())
            worst = list(_capstone_reduce(r, kd, method, "coverage", e, groups, "min").values())
            lines.append(f"{method}, {kd} student, {where[e]}: coverage (%) of every example {mean_interval(marginal, scale=100.0)}, "
                         f"of its worst group {mean_interval(worst, scale=100.0)}.")
        if method == "AVCS":
            size = [mean_interval(list(_capstone_value(r, kd, method, "size", e, None).values()), digits=2) for e in range(last + 1)]
            accuracy = mean_interval([sum(o.accuracy[0][g] * n for g, n in enumerate(r.test_counts)) / sum(r.test_counts)
                                      for o in r.outcomes if o.model == kd], scale=100.0)
            lines.append(f"AVCS, {kd} student: mean set size per exit {', '.join(size)} labels; its test accuracy at {where[0]} "
                         f"{accuracy}% (a set of at most one label covers only where the prediction is right).")
            share = {m: mean_std([o.avcs_feasible for o in r.outcomes if o.model == m], scale=100.0, digits=0) for m in ["teacher", *students]}
            lines.append("AVCS's threshold rule reached its rank (coverage guaranteed) on this % of calibration splits: "
                         + "; ".join(f"{m} {v}" for m, v in share.items()) + ". Where it does not, no candidate threshold can: the "
                         "sets keep only labels whose logit reaches tau > 0, so a label the model is confidently wrong about (a negative "
                         "logit) is never in them.")
        for model in students:
            c = paired_comparison(_capstone_reduce(r, model, method, "coverage", 0, conflicting, "mean"),
                                  _capstone_reduce(r, model, method, "coverage", 0, aligned, "mean"))
            lines.append(comparison_sentence(c, what=f"{method} coverage at {where[0]} ({model} student)",
                                             ours="the bias-conflicting groups' mean", reference="the bias-aligned groups' mean"))
        c = paired_comparison(_capstone_reduce(r, kd, method, "coverage", last, groups, "min"),
                              _capstone_reduce(r, "teacher", method, "coverage", 0, groups, "min"))
        lines.append(comparison_sentence(c, what=f"{method} worst-group coverage ({where[last]} against the teacher's one exit, same splits)",
                                         ours=f"{kd} student", reference="teacher"))
        for model in dedier_variants:
            for e in (0, last):
                c = paired_comparison(_capstone_reduce(r, model, method, "coverage", e, groups, "min"),
                                      _capstone_reduce(r, kd, method, "coverage", e, groups, "min"))
                lines.append(comparison_sentence(c, what=f"{method} worst-group coverage at {where[e]}", ours=model, reference=kd))
            c = paired_comparison(_capstone_reduce(r, model, method, "size", 0, conflicting, "mean"),
                                  _capstone_reduce(r, kd, method, "size", 0, conflicting, "mean"))
            lines.append(comparison_sentence(c, what=f"{method} set size of the bias-conflicting groups at {where[0]}", ours=model,
                                             reference=kd, scale=1.0, unit=" labels"))
    for model in dedier_variants:
        worst = {m: {o.seed: min(o.accuracy[last]) for o in r.outcomes if o.model == m} for m in (model, kd)}
        lines.append(comparison_sentence(paired_comparison(worst[model], worst[kd]), what=f"worst-group accuracy at {where[last]}",
                                         ours=model, reference=kd))
    return lines + ([smoke_note(mode)] if mode == "smoke" else [])


def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> CapstoneResult:
    """`python -m kdteach capstone`: notebook 07 headless, its tables, findings and figure written to out (None:
    nothing written); `seed` is added to every student seed."""
    base = config(mode)
    cfg = replace(base, seeds=tuple(s + seed for s in base.seeds), few_seeds=tuple(s + seed for s in base.few_seeds))
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started = time.perf_counter()
    results = tuple(run_dataset(name, cfg, device, progress=progress) for name in cfg.datasets)
    result = CapstoneResult(cfg, results, time.perf_counter() - started)
    lines = [line for r in results for line in capstone_sentences(r, alpha=cfg.alpha, mode=mode)]
    print("\n".join(lines))
    if out is not None:
        meta = {"mode": mode, **report.provenance(config=cfg, seeds=cfg.seeds, wall_seconds=result.seconds, device=str(device)),
                "recipe": report.to_jsonable(dedier.config(mode)), "findings": lines}
        figures = {f"coverage_{r.dataset}": plot_group_coverage(r, alpha=cfg.alpha) for r in results}
        rows = [row for r in results for row in capstone_rows(r, method="AVCS") + capstone_rows(r, method="LAC")]
        report.write_report(out, "capstone", rows=rows, meta=meta, figures=figures, result=result,
                            title="Coverage per exit and group (%, mean and 95% interval over seeds): KD and DeDiER students, and the teacher")
        sizes = [row for r in results for row in capstone_rows(r, method="LAC", metric="size") + capstone_rows(r, method="AVCS", metric="size")
                 + capstone_rows(r, method="AVCS", metric="empty_rate")]
        report.write_report(out, "capstone_sizes", rows=sizes, meta=meta,
                            title="Mean set size per exit and group (labels; empty = 0), and AVCS's empty rate (%)")
        for r in results:
            report.write_report(out, f"capstone_accuracy_{r.dataset}", rows=capstone_accuracy_rows(r), meta=meta,
                                title=f"Test accuracy per exit and group ({r.dataset}, %)")
    return result
