"""Notebook 03's experiments: early readouts and DeDiER (Tiwari et al., WACV 2024) against five baselines.

- prepare(): one dataset's splits, its teacher (trained once and cached) and the teacher's cached logits;
- train_student(): one student by one method: ERM, KD, JTT, Group DRO, SimKD-style or DeDiER, selected on
  VALIDATION worst-group (or mean-group) accuracy, never on test, and scored on test;
- readout_diagnostics(), readout_findings(): how well "the early readout is confidently wrong" finds the minority
  groups;
- compare(), sweep(), stage_ablation(), official_defects(): the tables, one row per (setting, seed);
- summarize() and conclusions(): mean +- std over seeds, and sentences computed from those numbers;
- run(): everything, headless (`python -m kdteach dedier --mode smoke|full --out DIR`).

DeDiER is implemented as the paper describes it (kdteach.debias); official_defects() switches on what the official
code does differently (sticky weights, freezing the shared early modules, BatchNorm drift in the readout epoch).
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
from torch import nn

from kdteach import runtime
from kdteach.data.grouped import GroupedData
from kdteach.debias import (
    DeDiERReweighting,
    EarlyReadout,
    GroupDROLoss,
    SimKDLoss,
    SimKDStudent,
    confidence_margin,
    confident_error_retrieval,
    dedier_weights,
    jtt_error_set,
    jtt_weights,
    readout_by_group,
    teacher_features,
    weights_by_group,
)
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.experiments import spurious
from kdteach import report
from kdteach.report import mean_std, markdown_table, write_report
from kdteach.groups import group_metrics
from kdteach.models.resnet import resnet18, resnet50, resnet_cifar
from kdteach.train import History, cross_entropy_loss, fit, predict

METHODS = ("ERM", "KD", "JTT", "Group DRO", "SimKD-style", "DeDiER")
DATASETS = ("waterbirds_like", "colored_digits")
# Variants of DeDiER for official_defects(): name -> (sticky weights, freeze shared modules, BatchNorm drift).
DEFECTS = {
    "as in the paper": (False, False, False),
    "sticky weights": (True, False, False),
    "freeze stem+layer1": (False, True, False),
    "official code (all three)": (True, True, True),
}
WORST, AVERAGE = "worst-group", "average (train-weighted)"


@dataclass(frozen=True)
class DeDiERConfig:
    """Sizes, schedules and hyperparameters of notebook 03. config() picks the smoke or the full one.

    The stand-in datasets and their teachers are notebook 02's (kdteach.experiments.spurious, same mode): the same
    waterbirds_like splits, and its group-balanced teacher (a debiased teacher, trained with flips and shifts; the
    paper used Group DRO teachers), reloaded from the cache when notebook 02 has run.

    Attributes:
        mode: "full" or "smoke": which notebook 02 configuration supplies the data and the teachers.
        digits_sizes: (train, val, test) sizes of colored_digits (None: a whole split).
        real_sizes, real_image_size, real_teacher_epochs: the real datasets (Waterbirds, CelebA), with an
            ImageNet-pretrained ResNet-50 teacher and ResNet-18 student.
        student_depth, student_width: the stand-ins' student, a CIFAR ResNet (depth 6n + 2).
        epochs, batch_size, lr, weight_decay: every student (AdamW, cosine schedule).
        augment: train students on notebook 02's flips and shifts; the teacher then runs in every step. Off by
            default: the teacher's logits are computed once, and the readout is scored on the images the student
            trains on.
        temperature, soft_weight: KD and DeDiER's loss (the paper: T = 3, pure soft targets).
        readout_stage, readout_head, readout_epochs, readout_lr, readout_batch_size: the early readout (the paper:
            layer1, a conv head, one epoch after every student epoch; None batch size: the students').
        alpha, beta: DeDiER's weights exp(beta * margin**alpha) on readout errors (the code's Waterbirds defaults).
        jtt_epochs, jtt_upweight: JTT's identification epochs and upweight factor.
        dro_step_size: Group DRO's exponentiated-gradient step size.
        select: "val_worst_group" or "val_mean_group": the validation metric that picks each run's epoch.
        seeds: student seeds of every table.
        sweep_settings: (alpha, beta) pairs of the sweep.
        stages: readout stages of the ablation.
        margins: margin thresholds of the precision / recall table.
    """

    mode: str = "full"
    digits_sizes: tuple[int | None, int | None, int | None] = (12000, 2000, 5000)
    real_sizes: tuple[int | None, int | None, int | None] = (None, None, None)
    real_image_size: int = 224
    real_teacher_epochs: int = 10
    student_depth: int = 8
    student_width: int = 16
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = False
    temperature: float = 3.0
    soft_weight: float = 1.0
    readout_stage: str = "layer1"
    readout_head: str = "conv"
    readout_epochs: int = 1
    readout_lr: float = 1e-2
    readout_batch_size: int | None = None
    alpha: float = 0.05
    beta: float = 4.0
    jtt_epochs: int = 2
    jtt_upweight: float = 20.0
    dro_step_size: float = 0.01
    select: str = "val_worst_group"
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep_settings: tuple[tuple[float, float], ...] = ((0.05, 1.0), (0.05, 2.0), (0.05, 4.0), (1.0, 2.0), (1.0, 4.0))
    stages: tuple[str, ...] = ("layer1", "layer2", "layer3")
    margins: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)


SMOKE_CONFIG = DeDiERConfig(
    mode="smoke", digits_sizes=(600, 300, 400), real_sizes=(600, 300, 300), real_teacher_epochs=1, student_width=8,
    epochs=3, lr=3e-3, readout_batch_size=32, jtt_epochs=1, dro_step_size=0.05, seeds=(0,),
    sweep_settings=((0.05, 2.0), (1.0, 4.0)), margins=(0.0, 0.5),
)


def config(mode: str | None = None) -> DeDiERConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    return SMOKE_CONFIG if mode == "smoke" else DeDiERConfig()


# ---------------------------------------------------------------------------------------------------------------
# Data and teacher
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One dataset, ready for the students: splits, the frozen teacher and its cached outputs on the training set.

    Attributes:
        name: the dataset's name.
        train, val, test: the splits.
        teacher: the teacher (eval mode).
        teacher_logits: (N_train, C) teacher logits on the un-augmented training images.
        teacher_features: (N_train, D) teacher pooled features (for the SimKD-style student).
        teacher_row: the teacher's test group metrics.
        augment: the students' augmentation (None: none; then the cached outputs are used).
        device: where everything lives.
    """

    name: str
    train: GroupedData
    val: GroupedData
    test: GroupedData
    teacher: nn.Module
    teacher_logits: torch.Tensor
    teacher_features: torch.Tensor
    teacher_row: dict[str, float]
    augment: Any
    device: torch.device

    @property
    def minority(self) -> torch.Tensor:
        """(N_train,) bool: the bias-conflicting examples, whose spurious attribute disagrees with the label."""
        return self.train.spurious != self.train.labels


def _real(dataset: str) -> bool:
    return dataset in ("waterbirds", "celeba")


def notebook02_config(dataset: str, cfg: DeDiERConfig) -> "spurious.SpuriousConfig":
    """Notebook 02's configuration for a dataset: its data sizes and its teachers (waterbirds_like: exactly
    notebook 02's, so its cached teacher is reloaded; colored_digits: cfg.digits_sizes)."""
    base = spurious.config(cfg.mode)
    if dataset == "waterbirds_like":
        return base
    if dataset == "colored_digits":
        return dataclasses.replace(base, dataset=dataset, n_train=cfg.digits_sizes[0], n_val=cfg.digits_sizes[1], n_test=cfg.digits_sizes[2])
    if _real(dataset):
        return dataclasses.replace(base, dataset=dataset, n_train=cfg.real_sizes[0], n_val=cfg.real_sizes[1], n_test=cfg.real_sizes[2],
                                   image_size=cfg.real_image_size)
    raise ValueError(f"dataset must be one of {DATASETS + ('waterbirds', 'celeba')}, got {dataset!r}")


def student_model(dataset: str, cfg: DeDiERConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The student: a small CIFAR ResNet for the stand-ins, ImageNet-pretrained ResNet-18 for real data."""
    if _real(dataset):
        return resnet18(num_classes, weights="IMAGENET1K_V1")
    return resnet_cifar(cfg.student_depth, cfg.student_width, num_classes, in_channels)


def _val_metrics(val: GroupedData, device: torch.device, batch_size: int):
    batches = val.batches(batch_size, device=device)

    def metrics(model: nn.Module) -> dict[str, float]:
        scores = group_metrics(predict(model, batches), val.labels, val.groups, val.num_groups)
        return {"val_worst_group": scores["worst-group"], "val_mean_group": scores["average (uniform)"]}

    return metrics


def _optimizer(model: nn.Module, cfg: DeDiERConfig, steps: int, lr: float | None = None) -> dict[str, Any]:
    # AdamW with a cosine schedule to zero, as in notebook 02: the last epochs settle instead of jumping around.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or cfg.lr, weight_decay=cfg.weight_decay)
    return {"optimizer": optimizer, "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)}


def _real_teacher(dataset: str, cfg: DeDiERConfig, splits: dict[str, GroupedData], device: torch.device, progress: bool) -> nn.Module:
    # The paper's pairing: an ImageNet-pretrained ResNet-50 teacher, fine-tuned on group-balanced batches (cached).
    path = runtime.cache_dir() / "dedier" / f"teacher-{dataset}-resnet50-n{len(splits['train'])}-e{cfg.real_teacher_epochs}.pt"
    torch.manual_seed(0)
    model = resnet50(splits["train"].num_classes, weights="IMAGENET1K_V1").to(device)
    batches = splits["train"].batches(cfg.batch_size, device=device, balanced=True, seed=0)
    fit(model, batches, epochs=cfg.real_teacher_epochs, **_optimizer(model, cfg, cfg.real_teacher_epochs * len(batches)),
        metrics=_val_metrics(splits["val"], device, 256), select=cfg.select, checkpoint=path, resume=True, progress=progress,
        desc=f"teacher ({dataset})")
    return model.eval()


def prepare(dataset: str, cfg: DeDiERConfig, device: torch.device | str, *, progress: bool = True) -> Prepared:
    """Loads a dataset and its debiased teacher (notebook 02's, trained there or here and cached), and caches the
    teacher's logits and features on the un-augmented training images.

    Args:
        dataset: "waterbirds_like", "colored_digits", or the real "waterbirds" / "celeba" (from the data folders).
        cfg: the configuration.
        device: where the data and models live.
        progress: show progress bars.

    Returns:
        Prepared.
    """
    device = torch.device(device)
    spurious_cfg = notebook02_config(dataset, cfg)
    splits = spurious.load_splits(spurious_cfg)
    if _real(dataset):
        teacher = _real_teacher(dataset, cfg, splits, device, progress)
    else:
        teacher, _ = spurious.train_or_load_teacher(spurious_cfg, "balanced", 0, splits=splits, device=device, progress=progress)
    train = splits["train"]
    ordered = train.batches(512, device=device)
    return Prepared(
        name=dataset, train=train, val=splits["val"], test=splits["test"], teacher=teacher.eval(),
        teacher_logits=cache_teacher_logits(teacher, ordered),
        teacher_features=teacher_features(teacher, ordered),
        teacher_row=spurious.test_scores(teacher, splits["test"], train.group_counts()),
        augment=spurious.augmentation(spurious_cfg) if cfg.augment else None,  # notebook 02's flips and shifts
        device=device,
    )


# ---------------------------------------------------------------------------------------------------------------
# One student
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StudentRun:
    """One trained student.

    Attributes:
        model: the student at its selected epoch.
        history: fit()'s History (for DeDiER, with the readout's accuracy and the share upweighted per epoch).
        row: the table row: dataset, method, settings, seed, test worst-group and average, the selection metric.
        reweighting: DeDiER's callback (its readout and final weights), else None.
        note: what went differently (e.g. JTT's empty error set).
    """

    model: nn.Module | None
    history: History | None
    row: dict[str, Any]
    reweighting: DeDiERReweighting | None = None
    note: str = ""


def train_student(
    method: str,
    prep: Prepared,
    cfg: DeDiERConfig,
    *,
    seed: int = 0,
    alpha: float | None = None,
    beta: float | None = None,
    stage: str | None = None,
    variant: str = "as in the paper",
    progress: bool = True,
) -> StudentRun:
    """Trains one student with one method and scores it on test at the epoch chosen on validation.

    Args:
        method: one of METHODS.
        prep: the prepared dataset.
        cfg: the configuration.
        seed: seed of the initialisation and the shuffling.
        alpha, beta, stage: DeDiER's settings (default: cfg's).
        variant: one of DEFECTS (DeDiER only).
        progress: show progress bars.

    Returns:
        StudentRun.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if variant not in DEFECTS:
        raise ValueError(f"variant must be one of {tuple(DEFECTS)}, got {variant!r}")
    # On the busy 2-core machine notebook 03 took 532 s with two CPU threads and 46 s with one.
    with spurious.smoke_threads(cfg, prep.device):
        return _train_student(method, prep, cfg, seed=seed, alpha=alpha, beta=beta, stage=stage, variant=variant, progress=progress)


def _train_student(method: str, prep: Prepared, cfg: DeDiERConfig, *, seed: int, alpha: float | None, beta: float | None,
                   stage: str | None, variant: str, progress: bool) -> StudentRun:
    alpha = cfg.alpha if alpha is None else alpha
    beta = cfg.beta if beta is None else beta
    stage = stage or cfg.readout_stage
    data, device = prep.train, prep.device
    row: dict[str, Any] = {"dataset": prep.name, "method": method, "seed": seed}
    if method == "DeDiER":
        row.update({"alpha": alpha, "beta": beta, "readout stage": stage, "variant": variant})
    started = time.perf_counter()

    def new_student() -> nn.Module:
        torch.manual_seed(seed)
        return student_model(prep.name, cfg, data.num_classes, data.images.shape[1]).to(device)

    extra: dict[str, torch.Tensor] = {}
    loss_fn: Any = cross_entropy_loss
    reweighting = None
    note = ""
    model = new_student()
    augmented = prep.augment is not None  # then the teacher runs on every augmented batch instead of cached outputs
    if method in ("KD", "DeDiER"):
        if not augmented:
            extra["teacher_logits"] = prep.teacher_logits
        loss_fn = KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight, teacher=prep.teacher if augmented else None)
    elif method == "JTT":
        identify = data.batches(cfg.batch_size, device=device, shuffle=True, seed=seed, augment=prep.augment)
        fit(model, identify, epochs=cfg.jtt_epochs, **_optimizer(model, cfg, cfg.jtt_epochs * len(identify)), progress=progress, desc=f"JTT identification ({prep.name})")
        errors = jtt_error_set(model, identify)
        try:
            extra["weight"] = jtt_weights(errors, upweight=cfg.jtt_upweight)
        except ValueError as error:
            note = str(error)
            row.update({WORST: math.nan, AVERAGE: math.nan, "val metric": math.nan, "best epoch": math.nan, "note": "empty error set"})
            return StudentRun(None, None, row, note=note)
        row["error set"] = int(errors.sum())
        model = new_student()
    elif method == "Group DRO":
        loss_fn = GroupDROLoss(data.num_groups, step_size=cfg.dro_step_size)
    elif method == "SimKD-style":
        if not augmented:
            extra["teacher_features"] = prep.teacher_features
        model = SimKDStudent(model, prep.teacher.classifier).to(device)
        loss_fn = SimKDLoss(model, teacher=prep.teacher if augmented else None)

    train = data.batches(cfg.batch_size, device=device, shuffle=True, seed=seed, extra=extra, augment=prep.augment)
    if method == "DeDiER":
        sticky, freeze, drift = DEFECTS[variant]
        readout = EarlyReadout(stage, data.num_classes, head=cfg.readout_head, epochs=cfg.readout_epochs, lr=cfg.readout_lr,
                               batch_size=cfg.readout_batch_size, seed=seed, features_in_train_mode=drift)
        reweighting = DeDiERReweighting(model, readout, train, alpha=alpha, beta=beta, sticky=sticky, freeze_shared=freeze)
    history = fit(model, train, epochs=cfg.epochs, **_optimizer(model, cfg, cfg.epochs * len(train)), loss_fn=loss_fn,
                  metrics=_val_metrics(prep.val, device, 512), select=cfg.select, on_epoch_end=reweighting,
                  progress=progress, desc=f"{method} ({prep.name}, seed {seed})")
    model.eval()
    scores = spurious.test_scores(model, prep.test, data.group_counts())
    row.update({WORST: scores["worst-group"], AVERAGE: scores[AVERAGE], "val metric": history.epochs[history.best_epoch][cfg.select],
                "best epoch": history.best_epoch, "seconds": round(time.perf_counter() - started, 1)})
    return StudentRun(model, history, row, reweighting, note)


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------------
def readout_diagnostics(prep: Prepared, cfg: DeDiERConfig, student: nn.Module, *, stage: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Trains an early readout on a (distilled) student and asks whether its confident errors are the minority groups.

    Args:
        prep: the prepared dataset.
        cfg: the configuration (readout head, epochs, lr; alpha and beta for the weights; margins).
        student: the student to read (e.g. the KD student).
        stage: the readout's stage (default cfg.readout_stage).
        seed: the readout's seed.

    Returns:
        {"by_group": readout accuracy and margins per group, "retrieval": precision / recall / base rate of "wrong
        with margin >= m" for minority membership at each m in cfg.margins, "weights": the DeDiER weights each
        group would get, "logits": the readout's (N, C) logits on train}.
    """
    stage = stage or cfg.readout_stage
    data = prep.train
    batches = data.batches(cfg.batch_size, device=prep.device, shuffle=True, seed=seed)
    readout = EarlyReadout(stage, data.num_classes, head=cfg.readout_head, epochs=cfg.readout_epochs, lr=cfg.readout_lr,
                           batch_size=cfg.readout_batch_size, seed=seed)
    readout.fit(student, batches)
    logits = readout.predict(student, batches).cpu()
    labels, groups = data.labels, data.groups
    names = data.group_names
    by_group = [{"group": names[r.pop("group")], **r} for r in readout_by_group(logits, labels, groups, data.num_groups)]
    retrieval = [confident_error_retrieval(logits, labels, prep.minority, margin=m) for m in cfg.margins]
    weights = dedier_weights(logits, labels, alpha=cfg.alpha, beta=cfg.beta)
    by_weight = [{"group": names[r.pop("group")], **r} for r in weights_by_group(weights, groups, data.num_groups)]
    return {"by_group": by_group, "retrieval": retrieval, "weights": by_weight, "logits": logits, "stage": stage}


def readout_findings(diag: dict[str, Any], prep: Prepared) -> list[str]:
    """Sentences about the readout diagnostics, computed from them: is the readout confidently wrong on the
    bias-conflicting examples, and how enriched in them are its confident errors?

    Args:
        diag: readout_diagnostics(...) of this dataset.
        prep: the prepared dataset (for the bias-conflicting mask).

    Returns:
        A list of sentences.
    """
    logits, labels, minority = diag["logits"], prep.train.labels, prep.minority
    right = logits.argmax(1) == labels
    margin = confidence_margin(logits)
    lines = []
    for name, mask in (("bias-conflicting", minority), ("bias-aligned", ~minority)):
        wrong = mask & ~right
        wrong_margin = f"{float(margin[wrong].mean()):.2f}" if bool(wrong.any()) else "n/a (no errors)"
        lines.append(f"On the {name} training examples ({int(mask.sum())}), the readout at {diag['stage']} is right on "
                     f"{float(right[mask].float().mean()):.1%}; the mean margin of its errors there is {wrong_margin}.")
    flagged = [r for r in diag["retrieval"] if r["flagged"] > 0]
    if flagged:
        top = max(flagged, key=lambda r: r["margin"])
        strength = "strongly enriched (over 5x)" if top["lift"] > 5 else "enriched" if top["lift"] > 1.5 else "hardly enriched"
        lines.append(f"Errors with margin >= {top['margin']:.2f} are {strength} in the minority groups: precision "
                     f"{top['precision']:.1%} against a base rate of {top['base_rate']:.1%} ({top['lift']:.1f}x), "
                     f"recall {top['recall']:.1%}.")
    else:
        lines.append("The readout makes no errors at any margin threshold, so there is nothing to upweight.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------
def _settings(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("dataset", "method", "alpha", "beta", "readout stage", "variant", "seed"))


def _runs(settings: Sequence[dict[str, Any]], prep: Prepared, cfg: DeDiERConfig, reuse: Sequence[dict[str, Any]], progress: bool) -> list[dict[str, Any]]:
    # Trains each setting for every seed, reusing rows already computed with the same settings and seed.
    done = {_settings(r): r for r in reuse}
    rows = []
    for setting in settings:
        for seed in cfg.seeds:
            method = setting.get("method", "DeDiER")
            probe = {"dataset": prep.name, "method": method, "seed": seed}
            if method == "DeDiER":
                probe.update({"alpha": setting.get("alpha", cfg.alpha), "beta": setting.get("beta", cfg.beta),
                              "readout stage": setting.get("stage", cfg.readout_stage), "variant": setting.get("variant", "as in the paper")})
            key = _settings(probe)
            if key not in done:
                kwargs = {k: v for k, v in setting.items() if k != "method"}
                done[key] = train_student(method, prep, cfg, seed=seed, progress=progress, **kwargs).row
            rows.append(done[key])
    return rows


def compare(prep: Prepared, cfg: DeDiERConfig, *, methods: Sequence[str] = METHODS, reuse: Sequence[dict[str, Any]] = (), progress: bool = True) -> list[dict[str, Any]]:
    """Every method, every seed: one row each (see summarize for mean +- std)."""
    return _runs([{"method": m} for m in methods], prep, cfg, reuse, progress)


def sweep(prep: Prepared, cfg: DeDiERConfig, *, reuse: Sequence[dict[str, Any]] = (), progress: bool = True) -> list[dict[str, Any]]:
    """DeDiER at each (alpha, beta) of cfg.sweep_settings, every seed."""
    return _runs([{"alpha": a, "beta": b} for a, b in cfg.sweep_settings], prep, cfg, reuse, progress)


def stage_ablation(prep: Prepared, cfg: DeDiERConfig, *, reuse: Sequence[dict[str, Any]] = (), progress: bool = True) -> list[dict[str, Any]]:
    """DeDiER with the readout at each stage of cfg.stages, every seed."""
    return _runs([{"stage": s} for s in cfg.stages], prep, cfg, reuse, progress)


def official_defects(prep: Prepared, cfg: DeDiERConfig, *, reuse: Sequence[dict[str, Any]] = (), progress: bool = True) -> list[dict[str, Any]]:
    """DeDiER as in the paper, then with the official code's defects switched on (see DEFECTS), every seed."""
    return _runs([{"variant": v} for v in DEFECTS], prep, cfg, reuse, progress)


def summarize(rows: Sequence[dict[str, Any]], *, by: Sequence[str] = ("dataset", "method")) -> list[dict[str, Any]]:
    """Mean +- std over seeds of the test worst-group and average accuracy, one row per setting.

    Args:
        rows: per-seed rows.
        by: the columns that name a setting.

    Returns:
        Rows with the `by` columns, "worst-group" and "average (train-weighted)" as "mean ± std (n=k)" strings in
        percent, the means and standard deviations as numbers ("worst mean", "worst std", "average mean",
        "average std"), "seeds" (runs that produced a number), and "note" where a run was not possible.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        worst = [r[WORST] for r in members if not math.isnan(r[WORST])]
        average = [r[AVERAGE] for r in members if not math.isnan(r[AVERAGE])]
        summary = dict(zip(by, key))
        summary["seeds"] = len(worst)
        summary[WORST] = mean_std(worst, scale=100)
        summary[AVERAGE] = mean_std(average, scale=100)
        summary["worst mean"] = float(np.mean(worst)) * 100 if worst else math.nan
        summary["worst std"] = float(np.std(worst, ddof=1)) * 100 if len(worst) > 1 else math.nan
        summary["average mean"] = float(np.mean(average)) * 100 if average else math.nan
        summary["average std"] = float(np.std(average, ddof=1)) * 100 if len(average) > 1 else math.nan
        notes = sorted({r["note"] for r in members if r.get("note")})
        summary["note"] = "; ".join(notes)
        out.append(summary)
    return out


def display_rows(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary without its numeric helper columns (for printing)."""
    hidden = {"worst mean", "worst std", "average mean", "average std", "seeds"}
    return [{k: v for k, v in row.items() if k not in hidden and not (k == "note" and not v)} for row in summary]


def paired_differences(rows: Sequence[dict[str, Any]], method: str, reference: str, column: str = WORST) -> list[float]:
    """Per-seed differences method - reference (in points) between the runs "as in the paper" (report.paired_differences).

    Args:
        rows: per-seed rows of one dataset.
        method, reference: the two methods.
        column: the metric.

    Returns:
        One difference per shared seed, in seed order.
    """
    as_in_paper = [r for r in rows if r.get("variant", "as in the paper") == "as in the paper"]
    return report.paired_differences(as_in_paper, method, reference, column, key="method")


def conclusions(summary: Sequence[dict[str, Any]], *, mode: str, rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Sentences about one dataset's comparison, computed from the summary (never typed in).

    Args:
        summary: summarize(compare(...)) rows of ONE dataset.
        mode: "smoke" or "full" (smoke numbers are too small to conclude anything).
        rows: the per-seed rows behind the summary; adds the DeDiER - KD difference seed by seed.

    Returns:
        A list of sentences.
    """
    by_method = {row["method"]: row for row in summary}
    lines = []
    if mode == "smoke":
        lines.append("Smoke mode: tiny data, few epochs and one seed, so these numbers show that the code runs, not what "
                     "works; the conclusions below describe this run only. Run full mode (python -m kdteach dedier "
                     "--mode full, on a GPU) for results.")
    if "DeDiER" in by_method and "KD" in by_method:
        d, k = by_method["DeDiER"], by_method["KD"]
        gain = d["worst mean"] - k["worst mean"]
        spread = max(v for v in (d["worst std"], k["worst std"], 0.0) if not math.isnan(v))
        if min(d["seeds"], k["seeds"]) < 2:
            verdict = "with a single seed there is no seed spread to compare it with"
        elif abs(gain) > spread:
            verdict = f"larger than the seed spread (largest std {spread:.1f})"
        else:
            verdict = f"within the seed spread (largest std {spread:.1f}): no clear difference"
        lines.append(f"Worst-group accuracy: DeDiER {d['worst mean']:.1f}% vs KD {k['worst mean']:.1f}%, "
                     f"a difference of {gain:+.1f} points, {verdict}.")
        paired = paired_differences(rows, "DeDiER", "KD")
        if len(paired) >= 2:
            wins = sum(p > 0 for p in paired)
            lines.append(f"Seed by seed (same initialisation and batch order), DeDiER - KD worst-group = "
                         f"{', '.join(f'{p:+.1f}' for p in paired)} points: DeDiER ahead in {wins} of {len(paired)} seeds.")
        lines.append(f"Average accuracy (train-weighted): DeDiER {d['average mean']:.1f}% vs KD {k['average mean']:.1f}% "
                     f"({d['average mean'] - k['average mean']:+.1f} points).")
    ranked = sorted((r for r in summary if not math.isnan(r["worst mean"])), key=lambda r: -r["worst mean"])
    if ranked:
        best = ranked[0]
        lines.append(f"Best worst-group accuracy: {best['method']} ({best['worst mean']:.1f}%)"
                     + (", which uses group labels in training, an advantage the other methods do not have." if best["method"] == "Group DRO" else "."))
        if "DeDiER" in by_method and best["method"] != "DeDiER":
            ahead = [r["method"] for r in ranked if r["worst mean"] > by_method["DeDiER"]["worst mean"]]
            verb = "reaches" if len(ahead) == 1 else "reach"
            names = ahead[0] if len(ahead) == 1 else f"{', '.join(ahead[:-1])} and {ahead[-1]}"
            lines.append(f"DeDiER does not win here: {names} {verb} a higher worst-group accuracy.")
    for row in summary:
        if row.get("note"):
            lines.append(f"{row['method']}: {row['note']}.")
    return lines


def ablation_sentence(summary: Sequence[dict[str, Any]], column: str, *, what: str) -> str:
    """One sentence about an ablation table: the best and the worst setting on worst-group accuracy, and whether
    their gap exceeds the seed spread.

    Args:
        summary: summarize(...) rows, one per setting.
        column: the column that names a setting (e.g. "readout stage"); a tuple of columns is joined with ", ".
        what: what the settings are, for the sentence (e.g. "readout stage").

    Returns:
        The sentence.
    """
    rows = [r for r in summary if not math.isnan(r["worst mean"])]
    if not rows:
        return f"No {what} produced a number."
    columns = (column,) if isinstance(column, str) else tuple(column)

    def name(row: dict[str, Any]) -> str:
        return ", ".join(f"{c} {row[c]}" for c in columns)

    best, worst = max(rows, key=lambda r: r["worst mean"]), min(rows, key=lambda r: r["worst mean"])
    gap = best["worst mean"] - worst["worst mean"]
    if gap == 0:
        return f"Every {what} gives the same worst-group accuracy ({best['worst mean']:.1f}%)."
    stds = [r["worst std"] for r in rows if not math.isnan(r["worst std"])]
    if not stds:
        verdict = "one seed, so no seed spread to compare with"
    elif gap > max(stds):
        verdict = f"larger than the largest seed std ({max(stds):.1f})"
    else:
        verdict = f"within the seed spread (largest std {max(stds):.1f})"
    return (f"Across {what}s, worst-group accuracy ranges from {worst['worst mean']:.1f}% ({name(worst)}) to "
            f"{best['worst mean']:.1f}% ({name(best)}): a gap of {gap:.1f} points, {verdict}.")


def real_config(mode: str | None = None) -> DeDiERConfig:
    """The real-data configuration (Waterbirds, CelebA): ImageNet-pretrained ResNet-50 teacher -> ResNet-18 student
    at 224 pixels, for a Colab GPU (full Waterbirds in full mode; 600 training images in smoke mode)."""
    base = config(mode)
    full = base.mode == "full"
    return dataclasses.replace(base, batch_size=64, epochs=10 if full else 1, lr=1e-4, weight_decay=1e-3,
                               stages=("layer1", "layer2", "layer3", "layer4"))


# ---------------------------------------------------------------------------------------------------------------
# Headless
# ---------------------------------------------------------------------------------------------------------------
def run(mode: str = "smoke", out: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Runs notebook 03's experiments and writes their tables (and figures) to out.

    Args:
        mode: "smoke" or "full".
        out: folder for dedier*.json / .md and figures (None: write nothing).
        seed: added to every student seed (the teachers are seeded 0).
        progress: show progress bars.

    Returns:
        {"main": rows, "summary": rows, "sweep", "stages", "defects", "diagnostics", "conclusions", "meta"}.
    """
    from kdteach.plots.debias import plot_margin_histograms

    base = config(mode)
    cfg = dataclasses.replace(base, seeds=tuple(s + seed for s in base.seeds))
    device = runtime.setup(seed, run_mode=mode)
    started = time.perf_counter()
    main, summaries, lines, teachers = [], [], {}, []
    sweeps, stages, defects, diagnostics = [], [], [], {}
    figures = {}
    for dataset in DATASETS:
        prep = prepare(dataset, cfg, device, progress=progress)
        teachers.append({"dataset": dataset, WORST: prep.teacher_row[WORST], AVERAGE: prep.teacher_row[AVERAGE]})
        kd_student = train_student("KD", prep, cfg, seed=cfg.seeds[0], progress=progress)
        diag = readout_diagnostics(prep, cfg, kd_student.model, seed=cfg.seeds[0])
        diagnostics[dataset] = {k: v for k, v in diag.items() if k != "logits"}
        diagnostics[dataset]["findings"] = readout_findings(diag, prep)
        print("\n".join(diagnostics[dataset]["findings"]))
        figures[f"margins_{dataset}"] = plot_margin_histograms(diag["logits"], prep.train.labels, prep.train.groups, prep.train.group_names,
                                                                title=f"Readout at {diag['stage']} of the KD student ({dataset})")
        rows = compare(prep, cfg, reuse=[kd_student.row], progress=progress)
        main += rows
        summary = summarize(rows)
        summaries += summary
        lines[dataset] = conclusions(summary, mode=mode, rows=rows)
        print(markdown_table(display_rows(summary)))
        print("\n".join(lines[dataset]))
        if dataset == "waterbirds_like":
            sweeps = sweep(prep, cfg, reuse=rows, progress=progress)
            stages = stage_ablation(prep, cfg, reuse=rows + sweeps, progress=progress)
            defects = official_defects(prep, cfg, reuse=rows, progress=progress)
    meta = {"mode": mode, "device": str(device), "seeds": list(cfg.seeds), "selection": cfg.select,
            "average": AVERAGE, "teachers": teachers, "config": dataclasses.asdict(cfg),
            "seconds": round(time.perf_counter() - started, 1)}
    result = {
        "main": main, "summary": summaries, "sweep": summarize(sweeps, by=("alpha", "beta")),
        "stages": summarize(stages, by=("readout stage",)), "defects": summarize(defects, by=("variant",)),
        "diagnostics": diagnostics, "conclusions": lines, "meta": meta,
    }
    if out is not None:
        write_report(out, "dedier", rows=display_rows(summaries), meta={**meta, "conclusions": lines}, figures=figures,
                     title="ERM, KD, JTT, Group DRO, SimKD-style and DeDiER: test worst-group and average accuracy (%)")
        write_report(out, "dedier_runs", rows=main, meta=meta, title="Every run (one row per method and seed)")
        write_report(out, "dedier_sweep", rows=display_rows(result["sweep"]), meta=meta, title="DeDiER: alpha / beta sweep (waterbirds_like)")
        write_report(out, "dedier_stages", rows=display_rows(result["stages"]), meta=meta, title="DeDiER: readout stage (waterbirds_like)")
        write_report(out, "dedier_defects", rows=display_rows(result["defects"]), meta=meta, title="DeDiER: the official code's defects (waterbirds_like)")
        for dataset, diag in diagnostics.items():
            what = f"the readout at {diag['stage']} of the KD student ({dataset})"
            write_report(out, f"dedier_readout_{dataset}", rows=diag["by_group"], meta=meta, title=f"Accuracy and margin of {what}, per group")
            write_report(out, f"dedier_retrieval_{dataset}", rows=diag["retrieval"], meta=meta,
                         title=f"Does 'wrong with margin >= m' of {what} find the minority groups?")
            write_report(out, f"dedier_weights_{dataset}", rows=diag["weights"], meta=meta, title=f"DeDiER weights from {what}, per group")
    return result
