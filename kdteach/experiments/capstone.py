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
over the splits. The teacher's sets (one exit) are measured on the same splits.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from kdteach import report, runtime
from kdteach.debias import DeDiERReweighting, student_left_as_is
from kdteach.distill import KDLoss
from kdteach.exits import MultiExit, exit_logits
from kdteach.experiments import common, dedier
from kdteach.groups import group_metrics
from kdteach.models.resnet import resnet_cifar
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


def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> CapstoneResult:
    """`python -m kdteach capstone`: notebook 07 headless, its tables, findings and figure written to out (None:
    nothing written); `seed` is added to every student seed."""
    from kdteach.plots.sets import plot_group_coverage

    base = config(mode)
    cfg = replace(base, seeds=tuple(s + seed for s in base.seeds), few_seeds=tuple(s + seed for s in base.few_seeds))
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started = time.perf_counter()
    results = tuple(run_dataset(name, cfg, device, progress=progress) for name in cfg.datasets)
    result = CapstoneResult(cfg, results, time.perf_counter() - started)
    lines = [line for r in results for line in report.capstone_sentences(r, alpha=cfg.alpha, mode=mode)]
    print("\n".join(lines))
    if out is not None:
        meta = {"mode": mode, **report.provenance(config=cfg, seeds=cfg.seeds, wall_seconds=result.seconds, device=str(device)),
                "recipe": report.to_jsonable(dedier.config(mode)), "findings": lines}
        figures = {f"coverage_{r.dataset}": plot_group_coverage(r, alpha=cfg.alpha) for r in results}
        rows = [row for r in results for row in report.capstone_rows(r, method="AVCS") + report.capstone_rows(r, method="LAC")]
        report.write_report(out, "capstone", rows=rows, meta=meta, figures=figures, result=result,
                            title="Coverage per exit and group (%, mean and 95% interval over seeds): KD and DeDiER students, and the teacher")
        sizes = [row for r in results for row in report.capstone_rows(r, method="LAC", metric="size") + report.capstone_rows(r, method="AVCS", metric="size")
                 + report.capstone_rows(r, method="AVCS", metric="empty_rate")]
        report.write_report(out, "capstone_sizes", rows=sizes, meta=meta,
                            title="Mean set size per exit and group (labels; empty = 0), and AVCS's empty rate (%)")
        for r in results:
            report.write_report(out, f"capstone_accuracy_{r.dataset}", rows=report.capstone_accuracy_rows(r), meta=meta,
                                title=f"Test accuracy per exit and group ({r.dataset}, %)")
    return result
