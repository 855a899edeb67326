"""Notebook 04's experiment: BERT -> DistilBERT distillation on text with a shortcut, plain KD against DeDiER.

- load_data(): the splits (the offline stand-in, MultiNLI or CivilComments) and a tokenizer, encoded once;
- train_teacher(): a debiased teacher (group-balanced batches), selected on validation mean-group accuracy;
- train_student(): a student distilled at T = 3 with plain KD or with DeDiER's weights from an early readout
  on a transformer layer (its [CLS] or mean-pooled state, retrained after every student epoch on detached
  features);
- readout_diagnostics(): the readout's accuracy, margin and DeDiER weight in each training group;
- run(): everything, headless (`python -m kdteach text --mode smoke|full --out DIR`).

Smoke mode runs the stand-in with tiny BertConfig / DistilBertConfig models built from config, on a CPU, with
nothing downloaded. Full mode fine-tunes bert-base-uncased and distilbert-base-uncased on MultiNLI (or
CivilComments) on a GPU; FULL_MODE_DOWNLOADS lists what it fetches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from kdteach import runtime
from kdteach.data.batches import Batches
from kdteach.data.grouped import GroupBalancedBatches
from kdteach.data.text import (
    TextSplit,
    encode_text,
    load_civilcomments,
    load_multinli,
    nli_standin,
    standin_tokenizer,
)
from kdteach.debias import DeDiERReweighting, EarlyReadout, dedier_weights, readout_by_group, weights_by_group
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.report import markdown_table, mean_std, paired_differences, write_report
from kdteach.groups import AVERAGE_CONVENTIONS, group_counts, group_metrics
from kdteach.models.text import (
    STUDENT_CHECKPOINT,
    TEACHER_CHECKPOINT,
    TextClassifier,
    pretrained_text_classifier,
    tiny_bert,
    tiny_distilbert,
)
from kdteach.train import History, fit, predict

__all__ = [
    "DATASETS",
    "FULL_MODE_DOWNLOADS",
    "TextConfig",
    "config",
    "TextData",
    "load_data",
    "group_count_rows",
    "CUES",
    "shortcut_rates",
    "example_rows",
    "train_teacher",
    "StudentRun",
    "train_student",
    "test_scores",
    "readout_diagnostics",
    "weight_shares",
    "conflicting_groups",
    "weight_share_findings",
    "group_rows",
    "summarize",
    "findings",
    "TextResult",
    "run_experiment",
    "run",
]

DATASETS = ("standin", "multinli", "civilcomments")
WORST, AVERAGE = "worst-group", "average (test)"  # MultiNLI and CivilComments report plain test accuracy
# The spurious cue of each dataset, in words.
CUES = {"standin": "a negation word in the hypothesis", "multinli": "a negation word in the hypothesis", "civilcomments": "an identity mention"}
# What full mode fetches on first use (then cached by transformers / datasets under HF_HOME).
FULL_MODE_DOWNLOADS = {
    "multinli": f"the {TEACHER_CHECKPOINT} and {STUDENT_CHECKPOINT} checkpoints and tokenizer (about 440 MB and 270 MB) "
    "and the nyu-mll/multi_nli dataset (about 220 MB of Parquet) from the Hugging Face Hub",
    "civilcomments": f"the {TEACHER_CHECKPOINT} and {STUDENT_CHECKPOINT} checkpoints and tokenizer from the Hugging Face "
    "Hub, and WILDS' all_data_with_identities.csv (kd.data.text.CIVILCOMMENTS_URL) unless it is in the data folder",
    "standin": "nothing (the stand-in and its tokenizer are generated here)",
}


@dataclass(frozen=True)
class TextConfig:
    """Sizes, models and hyperparameters of notebook 04. config() picks one for a mode and a dataset.

    Attributes:
        dataset: "standin", "multinli" or "civilcomments".
        sizes: (train, val, test) examples; None keeps a whole split.
        max_length: tokens per example (padded or truncated).
        teacher, student: "tiny" (built from config, random weights) or a Hub checkpoint name.
        teacher_size, student_size: (hidden, layers, heads) of the tiny models.
        dropout: dropout of the tiny models (0: the stand-in is small and noise-free; dropout slows its learning).
        batch_size: rows per step, every model.
        teacher_epochs, teacher_lr: the teacher, trained on group-balanced batches (a debiased teacher, as the
            paper's premise requires: what the student gets wrong is then the student's doing).
        epochs, lr, weight_decay, warmup_steps: the students (AdamW, linear warmup then linear decay).
        temperature, soft_weight: the distillation loss (the paper: T = 3, pure soft targets).
        readout_stage, readout_pool, readout_epochs, readout_lr: the early readout (a linear head on one
            transformer layer's pooled state, retrained from scratch for readout_epochs after each student epoch).
        alpha, beta: DeDiER's weights exp(beta * margin**alpha) on readout errors (the code's MultiNLI defaults:
            alpha 0.2, beta 3; CivilComments: 0.05, 3).
        start_after: epochs of plain KD before DeDiER's first reweighting (the paper: 1).
        max_grad_norm: gradient clipping of every model (BERT's fine-tuning recipe: 1.0).
        select: the validation metric that picks each model's epoch ("val_mean_group", as in the paper).
        seeds: student seeds (the teacher is trained once, seed 0).
        checkpoint: write a checkpoint after every epoch under runtime.cache_dir()/text and resume from it (full
            mode: a dropped Colab session continues where it stopped, and a finished run is not redone).
    """

    dataset: str = "multinli"
    sizes: tuple[int | None, int | None, int | None] = (30_000, 4_000, None)
    max_length: int = 128
    teacher: str = TEACHER_CHECKPOINT
    student: str = STUDENT_CHECKPOINT
    teacher_size: tuple[int, int, int] = (128, 4, 4)
    student_size: tuple[int, int, int] = (64, 2, 2)
    dropout: float = 0.1
    batch_size: int = 32
    teacher_epochs: int = 2
    teacher_lr: float = 2e-5
    epochs: int = 3
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    temperature: float = 3.0
    soft_weight: float = 1.0
    readout_stage: str = "layer2"
    readout_pool: str = "cls"
    readout_epochs: int = 1
    readout_lr: float = 1e-2
    alpha: float = 0.2
    beta: float = 3.0
    start_after: int = 1
    select: str = "val_mean_group"
    seeds: tuple[int, ...] = (0, 1, 2)
    checkpoint: bool = True

    def key(self) -> str:
        """A short hash of the configuration, used in cache file names."""
        return hashlib.sha1(repr(dataclasses.astuple(self)).encode()).hexdigest()[:10]


# The stand-in's settings, where they differ from the paper's MultiNLI ones, and why:
# - tiny models from random weights, not pretrained ones, 64 wide with 2 layers and 2 heads, teacher and student
#   alike: the stand-in's teacher differs from its student in how it is trained (group-balanced batches), not in
#   size; a wider teacher (128) learned the verb comparison only in some runs at this budget;
# - the tiny models' heads and the readout read mean-pooled token states, not [CLS]: from random weights [CLS]
#   is slow to collect anything;
# - the readout reads layer1 of 2 (the paper: layer 2 of DistilBERT's 6);
# - the first reweighting comes after 3 epochs of plain KD, not 1: after one epoch a student that starts from
#   random weights has little in its early layer, and weights near e^3 on a student that cannot yet compare the
#   verbs stalled its training in our runs (the paper's DistilBERT starts pretrained);
# - no dropout, a higher learning rate: the stand-in is small and noise-free, and CI has seconds, not hours.
STANDIN_SMOKE = TextConfig(
    dataset="standin", sizes=(3000, 600, 1200), max_length=12, teacher="tiny", student="tiny",
    teacher_size=(64, 2, 2), student_size=(64, 2, 2), dropout=0.0, batch_size=64, teacher_epochs=15, teacher_lr=2e-3,
    epochs=20, lr=2e-3, warmup_steps=50, readout_stage="layer1", readout_pool="mean", start_after=3, seeds=(0,),
    checkpoint=False,
)
# Full mode on the stand-in (a CPU is enough): the same models, larger validation and test splits and five seeds,
# because whether a tiny student learns the verb comparison within its epochs varies from seed to seed.
STANDIN_FULL = dataclasses.replace(STANDIN_SMOKE, sizes=(3000, 2000, 4000), seeds=(0, 1, 2, 3, 4), checkpoint=True)


def config(mode: str | None = None, dataset: str | None = None) -> TextConfig:
    """The configuration of a mode and a dataset.

    Args:
        mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE.
        dataset: one of DATASETS; None: the stand-in in smoke mode, MultiNLI in full mode.

    Returns:
        The TextConfig. Smoke mode on a real dataset keeps the real models but uses a few hundred examples and
        one short epoch (it checks the code path; it still downloads, so CI never runs it).
    """
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    dataset = dataset or ("standin" if mode == "smoke" else "multinli")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "standin":
        return STANDIN_SMOKE if mode == "smoke" else STANDIN_FULL
    real = TextConfig(dataset=dataset)
    if dataset == "civilcomments":
        real = dataclasses.replace(real, sizes=(30_000, 5_000, 10_000), alpha=0.05, beta=3.0)
    if mode == "smoke":
        real = dataclasses.replace(real, sizes=(256, 128, 128), max_length=64, teacher_epochs=1, epochs=1, warmup_steps=0, seeds=(0,), checkpoint=False)
    return real


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TextData:
    """Splits, their encodings and the tokenizer.

    Attributes:
        name: the dataset.
        splits: "train", "val", "test" -> TextSplit.
        inputs: the same keys -> (N, 3, max_length) packed token ids (kdteach.data.encode_text).
        tokenizer: the tokenizer that made them.
        balance_groups: (N_train,) disjoint group ids the teacher's batches are balanced over, and the readout's
            diagnostics are reported on: the groups themselves on MultiNLI and the stand-in; on CivilComments,
            whose groups overlap, (any identity mentioned) x label, as in Group DRO's CivilComments setup.
        balance_names: their names.
    """

    name: str
    splits: dict[str, TextSplit]
    inputs: dict[str, torch.Tensor]
    tokenizer: Any
    balance_groups: torch.Tensor
    balance_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.splits["train"].class_names)


def _real_splits(cfg: TextConfig, seed: int) -> dict[str, TextSplit]:
    n_train, n_val, n_test = cfg.sizes
    if cfg.dataset == "multinli":
        # MultiNLI has no labelled test split: validation_matched is cut in two halves, validation and test.
        matched = load_multinli("validation_matched")
        order = np.random.default_rng(seed).permutation(len(matched))
        half = len(order) // 2
        return {
            "train": load_multinli("train", max_examples=n_train, seed=seed),
            "val": matched.subset(np.sort(order[:half])).sample(n_val, seed),
            "test": matched.subset(np.sort(order[half:])).sample(n_test, seed),
        }
    return {
        split: load_civilcomments(name, download=True, max_examples=n, seed=seed)
        for split, name, n in (("train", "train", n_train), ("val", "val", n_val), ("test", "test", n_test))
    }


def _balance_groups(split: TextSplit) -> tuple[torch.Tensor, tuple[str, ...]]:
    if split.groups.dim() == 1:
        return split.groups, split.group_names
    any_identity = split.groups.any(dim=1).long()
    names = tuple(f"{c}, {m}" for c in split.class_names for m in ("no identity", "identity"))
    return split.labels * 2 + any_identity, names


def load_data(cfg: TextConfig, *, seed: int = 0) -> TextData:
    """Loads (or generates) the splits, builds the tokenizer and encodes every split once.

    Args:
        cfg: the configuration (dataset, sizes, max_length, which models: a tiny model gets the stand-in's
            WordPiece tokenizer, a Hub model its own).
        seed: the stand-in's generator seed and the real data's subsampling seed.

    Returns:
        TextData.
    """
    if cfg.dataset == "standin":
        splits = nli_standin(*cfg.sizes, seed=seed)
    else:
        splits = _real_splits(cfg, seed)
    if cfg.teacher == "tiny":
        train = splits["train"]
        tokenizer = standin_tokenizer(train.texts + (train.pairs or []))
    else:
        from transformers import AutoTokenizer

        # bert-base-uncased and distilbert-base-uncased share one vocabulary: one encoding serves both models.
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.teacher)
        except OSError as error:
            raise FileNotFoundError(f"could not load the tokenizer of {cfg.teacher!r} from the Hub or its cache: {error}") from error
    inputs = {name: encode_text(tokenizer, split, max_length=cfg.max_length) for name, split in splits.items()}
    balance, names = _balance_groups(splits["train"])
    return TextData(cfg.dataset, splits, inputs, tokenizer, balance, names)


def group_count_rows(data: TextData) -> list[dict[str, Any]]:
    """How many examples each group has in each split (one row per group; overlapping groups counted per group)."""
    counts = {name: group_counts(split.groups, split.num_groups) for name, split in data.splits.items()}
    names = data.splits["train"].group_names
    return [{"group": g, **{split: int(c[i]) for split, c in counts.items()}} for i, g in enumerate(names)]


def shortcut_rates(split: TextSplit) -> list[dict[str, Any]]:
    """For each class: the share of its examples that carry the spurious cue (a negation word; an identity mention).

    Args:
        split: a TextSplit with disjoint (label, cue) groups or a CivilComments membership matrix.

    Returns:
        One row per class: class, n, and "with cue" (a fraction).
    """
    if split.groups.dim() == 1:
        cue = (split.groups % 2).bool()  # group = 2 * label + cue
    else:
        cue = split.groups.any(dim=1)
    rows = []
    for c, name in enumerate(split.class_names):
        member = split.labels == c
        n = int(member.sum())
        rows.append({"class": name, "n": n, "with cue": float(cue[member].float().mean()) if n else math.nan})
    return rows


def example_rows(split: TextSplit, *, per_group: int = 1, seed: int = 0) -> list[dict[str, str]]:
    """A few examples of each group, for showing the shortcut.

    Args:
        split: the split.
        per_group: examples per group.
        seed: which ones.

    Returns:
        Rows with group, label, and the text(s).
    """
    rng = np.random.default_rng(seed)
    member = split.groups if split.groups.dim() == 2 else split.groups[:, None] == torch.arange(split.num_groups)
    rows = []
    for g, name in enumerate(split.group_names):
        index = torch.nonzero(member[:, g]).flatten().numpy()
        for i in rng.permutation(index)[:per_group]:
            row = {"group": name, "label": split.class_names[int(split.labels[i])]}
            if split.pairs is not None:
                row.update(premise=split.texts[i], hypothesis=split.pairs[i])
            else:
                row["text"] = split.texts[i][:120]
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Models and training
# ---------------------------------------------------------------------------------------------------------------
def _new_model(cfg: TextConfig, role: str, data: TextData) -> TextClassifier:
    name = cfg.teacher if role == "teacher" else cfg.student
    if name != "tiny":
        model = pretrained_text_classifier(name, data.num_classes)
    else:
        hidden, layers, heads = cfg.teacher_size if role == "teacher" else cfg.student_size
        build = tiny_bert if role == "teacher" else tiny_distilbert
        model = build(len(data.tokenizer), data.num_classes, hidden=hidden, layers=layers, heads=heads, max_length=cfg.max_length, dropout=cfg.dropout)
    model.pool = cfg.readout_pool
    return model


def _optimizer_and_schedule(model: nn.Module, cfg: TextConfig, lr: float, steps: int):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    warmup = min(cfg.warmup_steps, max(steps // 2, 1))

    def factor(step: int) -> float:
        # Linear warmup, then linear decay to zero: BERT's fine-tuning schedule.
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(steps - warmup, 1))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _val_metrics(data: TextData, device: torch.device, batch_size: int):
    split = data.splits["val"]
    batches = Batches({"x": data.inputs["val"]}, batch_size).to(device)

    def metrics(model: nn.Module) -> dict[str, float]:
        scores = group_metrics(predict(model, batches), split.labels, split.groups, split.num_groups)
        return {"val_worst_group": scores["worst-group"], "val_mean_group": scores["average (uniform)"]}

    return metrics


def test_scores(model: nn.Module, data: TextData, *, split: str = "test", batch_size: int = 256) -> dict[str, float]:
    """Group metrics of a model on a split: worst-group, the average conventions, and each group's accuracy.

    Args:
        model: a TextClassifier.
        data: the data.
        split: which split.
        batch_size: rows per forward pass.

    Returns:
        kdteach.groups.group_metrics' dict (accuracies as fractions).
    """
    device = next(model.parameters()).device
    logits = predict(model, Batches({"x": data.inputs[split]}, batch_size).to(device))
    part = data.splits[split]
    return group_metrics(logits, part.labels, part.groups, part.num_groups, group_names=part.group_names)


def _checkpoint(cfg: TextConfig, what: str) -> Path | None:
    # The key hashes the whole configuration, so a changed setting never resumes from another setting's file.
    if not cfg.checkpoint:
        return None
    return runtime.cache_dir() / "text" / f"{cfg.dataset}-{cfg.key()}-{what}.pt"


def train_teacher(cfg: TextConfig, data: TextData, device: torch.device | str, *, progress: bool = True) -> tuple[TextClassifier, History]:
    """Trains the teacher on group-balanced batches (every group equally often), selected on validation.

    Args:
        cfg: the configuration.
        data: the data.
        device: where to train.
        progress: show progress bars.

    Returns:
        (the teacher in eval mode, its History).
    """
    device = torch.device(device)
    torch.manual_seed(0)
    model = _new_model(cfg, "teacher", data).to(device)
    train = data.splits["train"]
    batches = GroupBalancedBatches({"x": data.inputs["train"], "y": train.labels, "group": data.balance_groups}, cfg.batch_size, seed=0).to(device)
    optimizer, schedule = _optimizer_and_schedule(model, cfg, cfg.teacher_lr, cfg.teacher_epochs * len(batches))
    path = _checkpoint(cfg, "teacher")
    history = fit(model, batches, epochs=cfg.teacher_epochs, optimizer=optimizer, scheduler=schedule,
                  metrics=_val_metrics(data, device, 4 * cfg.batch_size), select=cfg.select, max_grad_norm=cfg.max_grad_norm, checkpoint=path,
                  resume=path is not None, progress=progress, desc="teacher (group-balanced)")
    return model.eval(), history


@dataclass
class StudentRun:
    """One distilled student.

    Attributes:
        method: "KD" or "DeDiER".
        seed: its seed.
        model: the student at its selected epoch.
        history: fit()'s History (DeDiER's rows carry the readout's accuracy and the share upweighted).
        reweighting: DeDiER's callback (readout, last weights), else None.
    """

    method: str
    seed: int
    model: TextClassifier
    history: History
    reweighting: DeDiERReweighting | None = None


def _readout(cfg: TextConfig, data: TextData, seed: int) -> EarlyReadout:
    return EarlyReadout(cfg.readout_stage, data.num_classes, head="linear", epochs=cfg.readout_epochs, lr=cfg.readout_lr, seed=seed)


def train_student(
    method: str, cfg: TextConfig, data: TextData, teacher_logits: torch.Tensor, device: torch.device | str, *, seed: int = 0, progress: bool = True
) -> StudentRun:
    """Distils the teacher into a student with plain KD or with DeDiER's weights.

    Both minimise mean_i w_i * T^2 * KL(teacher_T || student_T) at T = cfg.temperature (soft_weight 1: no
    hard-label term, as in the paper's code). KD keeps w_i = 1. DeDiER trains an early readout on the student's
    cfg.readout_stage after every epoch from epoch cfg.start_after - 1 on and sets w_i = exp(beta * margin_i**alpha)
    where the readout is wrong (the epochs before are plain KD).

    Args:
        method: "KD" or "DeDiER".
        cfg: the configuration.
        data: the data.
        teacher_logits: (N_train, C) cached teacher logits.
        device: where to train.
        seed: initialisation and shuffling seed.
        progress: show progress bars.

    Returns:
        StudentRun.
    """
    if method not in ("KD", "DeDiER"):
        raise ValueError(f"method must be 'KD' or 'DeDiER', got {method!r}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = _new_model(cfg, "student", data).to(device)
    train = data.splits["train"]
    batches = Batches({"x": data.inputs["train"], "y": train.labels, "teacher_logits": teacher_logits}, cfg.batch_size, shuffle=True, seed=seed).to(device)
    reweighting = None
    if method == "DeDiER":
        reweighting = DeDiERReweighting(model, _readout(cfg, data, seed), batches, alpha=cfg.alpha, beta=cfg.beta, start_after=cfg.start_after)
    optimizer, schedule = _optimizer_and_schedule(model, cfg, cfg.lr, cfg.epochs * len(batches))
    path = _checkpoint(cfg, f"{method}-seed{seed}")
    history = fit(model, batches, epochs=cfg.epochs, optimizer=optimizer, scheduler=schedule,
                  loss_fn=KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight),
                  metrics=_val_metrics(data, device, 4 * cfg.batch_size), select=cfg.select, max_grad_norm=cfg.max_grad_norm, on_epoch_end=reweighting,
                  checkpoint=path, resume=path is not None, progress=progress, desc=f"{method} student (seed {seed})")
    return StudentRun(method, seed, model.eval(), history, reweighting)


def readout_diagnostics(cfg: TextConfig, data: TextData, student: TextClassifier, *, seed: int = 0) -> dict[str, Any]:
    """An early readout trained on a (distilled) student: its accuracy, margin and DeDiER weight per training group.

    Args:
        cfg: the configuration (readout stage, pooling, epochs, lr; alpha and beta).
        data: the data.
        student: the student to read (e.g. the KD student: what DeDiER's readout would see).
        seed: the readout's seed.

    Returns:
        {"rows": one row per group (n, readout accuracy, mean margin, mean margin where wrong, share upweighted,
        mean weight, share of the total weight), "logits": (N_train, C) readout logits, "stage": the layer read}.
    """
    device = next(student.parameters()).device
    train = data.splits["train"]
    batches = Batches({"x": data.inputs["train"], "y": train.labels}, cfg.batch_size, shuffle=True, seed=seed).to(device)
    readout = _readout(cfg, data, seed)
    readout.fit(student, batches)
    logits = readout.predict(student, batches).cpu()
    groups, names = data.balance_groups, data.balance_names
    weights = dedier_weights(logits, train.labels, alpha=cfg.alpha, beta=cfg.beta)
    rows = []
    for margin_row, weight_row in zip(readout_by_group(logits, train.labels, groups, len(names)), weights_by_group(weights, groups, len(names))):
        rows.append({
            "group": names[margin_row["group"]], "n": margin_row["n"], "readout accuracy": margin_row["accuracy"],
            "mean margin": margin_row["mean_margin"], "mean margin where wrong": margin_row["mean_margin_wrong"],
            "upweighted": weight_row["upweighted"], "mean weight": weight_row["mean_weight"], "weight share": weight_row["weight_share"],
        })
    return {"rows": rows, "logits": logits, "stage": cfg.readout_stage}


def weight_shares(diagnostics: dict[str, Any], data: TextData, *, alphas: Sequence[float], beta: float) -> list[dict[str, Any]]:
    """The share of the total DeDiER weight each training group would carry, for several alphas, from one readout.

    alpha is the exponent on the margin: small alpha gives almost the full e^beta to every readout error, however
    unsure; alpha = 1 makes the weight grow with the margin, so that only confident errors count much.

    Args:
        diagnostics: readout_diagnostics(...) (its "logits" on the training set).
        data: the data.
        alphas: the exponents to compare.
        beta: the scale in the exponent.

    Returns:
        One row per group: group, "share of examples", and "weight share (alpha=a)" for each a.
    """
    labels, groups, names = data.splits["train"].labels, data.balance_groups, data.balance_names
    counts = group_counts(groups, len(names))
    rows = [{"group": name, "share of examples": float(counts[g] / counts.sum())} for g, name in enumerate(names)]
    for alpha in alphas:
        weights = dedier_weights(diagnostics["logits"], labels, alpha=alpha, beta=beta)
        for row, by_group in zip(rows, weights_by_group(weights, groups, len(names))):
            row[f"weight share (alpha={alpha:g})"] = by_group["weight_share"]
    return rows


def conflicting_groups(data: TextData) -> list[int]:
    """The balance groups where the cue points to the wrong label (the minority groups DeDiER should find).

    The cue predicts the last class (contradiction; toxic). Balance group g is label g // 2 with cue g % 2, so g
    conflicts when it has the cue and another label, or lacks the cue and has the cue's label.
    """
    cue_class = data.num_classes - 1
    return [g for g in range(len(data.balance_names)) if bool(g % 2) != (g // 2 == cue_class)]


def weight_share_findings(shares: Sequence[dict[str, Any]], data: TextData) -> list[str]:
    """Sentences from weight_shares' rows: how much of the weight the conflicting groups carry, per alpha."""
    conflicting = [shares[g] for g in conflicting_groups(data)]
    examples = sum(r["share of examples"] for r in conflicting)
    keys = [k for k in shares[0] if k.startswith("weight share")]
    return [f"{k.removeprefix('weight share (').rstrip(')')}: the groups where the cue points to the wrong label carry "
            f"{sum(r[k] for r in conflicting):.0%} of the weight; they are {examples:.0%} of the examples." for k in keys]


# ---------------------------------------------------------------------------------------------------------------
# Tables and findings
# ---------------------------------------------------------------------------------------------------------------
def _row(model: str, seed: int | str, scores: dict[str, float], history: History | None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "seed": seed, WORST: scores["worst-group"], AVERAGE: scores["average (test)"],
                           "average (uniform)": scores["average (uniform)"]}
    row.update({k: v for k, v in scores.items() if k not in ("worst-group", "average (test)", "average (uniform)")})
    if history is not None:
        row["best epoch"] = history.best_epoch
    return row


def group_rows(rows: Sequence[dict[str, Any]], group_names: Sequence[str], *, digits: int = 1) -> list[dict[str, Any]]:
    """Each model's test accuracy per group, in percent, for printing (one row per model and seed).

    Args:
        rows: run_experiment's rows.
        group_names: the group columns.
        digits: decimals.

    Returns:
        Rows with model, seed, worst-group, average (test) and one column per group, as strings.
    """
    columns = ["model", "seed", WORST, AVERAGE, *group_names]
    return [{c: (f"{100 * row[c]:.{digits}f}" if isinstance(row[c], float) else row[c]) for c in columns} for row in rows]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds, in percent, of worst-group and average accuracy, one row per model.

    Args:
        rows: per-(model, seed) rows from run_experiment.

    Returns:
        One row per model: "model", "seeds", "worst-group", "average (test)" as strings, and "worst mean",
        "average mean" as numbers (percent).
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    out = []
    for model, members in by_model.items():
        worst = [r[WORST] for r in members]
        average = [r[AVERAGE] for r in members]
        out.append({"model": model, "seeds": len(members), WORST: mean_std(worst, scale=100), AVERAGE: mean_std(average, scale=100),
                    "worst mean": 100 * float(np.mean(worst)), "average mean": 100 * float(np.mean(average)),
                    "worst std": 100 * float(np.std(worst, ddof=1)) if len(worst) > 1 else math.nan})
    return out


def findings(summary: Sequence[dict[str, Any]], diagnostics: Sequence[dict[str, Any]], *, mode: str, rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Sentences computed from the numbers (never typed in): the gap between worst-group and average accuracy,
    KD against DeDiER, and which groups the readout upweights.

    Args:
        summary: summarize(...) rows (models "teacher", "KD student", "DeDiER student").
        diagnostics: readout_diagnostics(...)["rows"].
        mode: "smoke" or "full".
        rows: the per-seed rows (for the seed-by-seed comparison of KD and DeDiER).

    Returns:
        A list of sentences.
    """
    by_model = {row["model"]: row for row in summary}
    lines = []
    if mode == "smoke":
        lines.append("Smoke mode: a small stand-in, tiny models, few epochs and one seed. The numbers show what this run "
                     "did, not a result; full mode (python -m kdteach text --mode full, on a GPU) repeats it over seeds.")
    for model, row in by_model.items():
        gap = row["average mean"] - row["worst mean"]
        lines.append(f"{model}: worst-group {row['worst mean']:.1f}% against {row['average mean']:.1f}% average, "
                     f"a gap of {gap:.1f} points.")
    if "KD student" in by_model and "DeDiER student" in by_model:
        k, d = by_model["KD student"], by_model["DeDiER student"]
        change = d["worst mean"] - k["worst mean"]
        direction = "raises" if change > 0 else ("lowers" if change < 0 else "leaves unchanged")
        # Students of one seed share their initialisation and batch order: compare them seed by seed.
        paired = paired_differences(rows, "DeDiER student", "KD student", WORST)
        if len(paired) < 2:
            verdict = "one seed, so there is no seed spread to judge it against"
        else:
            spread = float(np.std(paired, ddof=1))
            wins = sum(p > 0 for p in paired)
            clear = "more than" if abs(change) > spread else "within"
            verdict = (f"seed by seed {', '.join(f'{p:+.1f}' for p in paired)}: DeDiER ahead in {wins} of {len(paired)} seeds; "
                       f"the mean difference is {clear} its seed-to-seed spread of {spread:.1f}")
        lines.append(f"DeDiER {direction} worst-group accuracy from {k['worst mean']:.1f}% (KD) to {d['worst mean']:.1f}% "
                     f"({change:+.1f} points; {verdict}), and average accuracy moves by {d['average mean'] - k['average mean']:+.1f} points.")
    if "teacher" in by_model and "KD student" in by_model:
        t, k = by_model["teacher"], by_model["KD student"]
        gap = k["worst mean"] - t["worst mean"]
        side = "below" if gap < 0 else ("above" if gap > 0 else "equal to")
        lines.append(f"The KD student's worst-group accuracy is {abs(gap):.1f} points {side} the teacher's "
                     f"({k['worst mean']:.1f}% against {t['worst mean']:.1f}%).")
    if diagnostics:
        ranked = sorted(diagnostics, key=lambda r: -(r["upweighted"] if not math.isnan(r["upweighted"]) else -1))
        top = ranked[0]
        lines.append(f"The readout upweights {100 * top['upweighted']:.0f}% of '{top['group']}' (n={top['n']}), the most of any "
                     f"group; least: '{ranked[-1]['group']}' with {100 * ranked[-1]['upweighted']:.0f}%.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TextResult:
    """What run_experiment measured.

    Attributes:
        cfg: the configuration.
        data: the data.
        teacher: the teacher.
        students: every StudentRun.
        rows: one row per (model, seed): worst-group, average (test), average (uniform), each group.
        summary: summarize(rows).
        diagnostics: readout_diagnostics of the first KD student.
        findings: sentences computed from the numbers.
        seconds: wall time.
    """

    cfg: TextConfig
    data: TextData
    teacher: TextClassifier
    students: list[StudentRun]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    diagnostics: dict[str, Any]
    findings: list[str]
    seconds: float
    histories: dict[str, History] = field(default_factory=dict)




def run_experiment(cfg: TextConfig, *, data: TextData | None = None, device: torch.device | str | None = None, progress: bool = True, mode: str | None = None) -> TextResult:
    """Teacher, then a KD and a DeDiER student per seed, then the readout's view of the KD student.

    Args:
        cfg: the configuration.
        data: the data (load_data(cfg) when None).
        device: where to train (runtime.pick_device() when None).
        progress: show progress bars.
        mode: "smoke" or "full", for the findings' wording (default runtime.mode()).

    Returns:
        TextResult.
    """
    started = time.perf_counter()
    device = torch.device(device) if device is not None else runtime.pick_device()
    data = data if data is not None else load_data(cfg)
    # The stand-in's tiny models multiply 64 x 64 matrices: one CPU thread is faster (see runtime.cpu_threads).
    with runtime.cpu_threads(1 if device.type == "cpu" and cfg.teacher == "tiny" else None):
        return _run(cfg, data, device, progress, mode, started)


def _run(cfg: TextConfig, data: TextData, device: torch.device, progress: bool, mode: str | None, started: float) -> TextResult:
    teacher, teacher_history = train_teacher(cfg, data, device, progress=progress)
    teacher_logits = cache_teacher_logits(teacher, Batches({"x": data.inputs["train"]}, 4 * cfg.batch_size).to(device))
    rows = [_row("teacher", 0, test_scores(teacher, data), teacher_history)]
    students, histories = [], {"teacher": teacher_history}
    for seed in cfg.seeds:
        for method in ("KD", "DeDiER"):
            run = train_student(method, cfg, data, teacher_logits, device, seed=seed, progress=progress)
            students.append(run)
            histories[f"{method} seed {seed}"] = run.history
            rows.append(_row(f"{method} student", seed, test_scores(run.model, data), run.history))
    kd_student = next(s.model for s in students if s.method == "KD")
    diagnostics = readout_diagnostics(cfg, data, kd_student, seed=cfg.seeds[0])
    summary = summarize(rows)
    lines = findings(summary, diagnostics["rows"], mode=mode or runtime.mode(), rows=rows)
    return TextResult(cfg, data, teacher, students, rows, summary, diagnostics, lines, time.perf_counter() - started, histories)


def run(mode: str = "smoke", out: str | Path | None = None, seed: int = 0, progress: bool = True, *, dataset: str | None = None) -> TextResult:
    """Runs notebook 04's experiment headless and writes its tables and figure to out.

    Args:
        mode: "smoke" (the stand-in, tiny models, CPU) or "full" (MultiNLI with BERT and DistilBERT, GPU).
        out: folder for text.json / text.md, text_runs.*, text_readout.* and a figure (None: write nothing).
        seed: added to every student seed and used as the data seed.
        progress: show progress bars.
        dataset: one of DATASETS; None: the mode's default.

    Returns:
        TextResult.
    """
    base = config(mode, dataset)
    cfg = dataclasses.replace(base, seeds=tuple(s + seed for s in base.seeds))
    device = runtime.setup(seed, run_mode=mode)
    data = load_data(cfg, seed=seed)
    result = run_experiment(cfg, data=data, device=device, progress=progress, mode=mode)
    print(markdown_table([{k: v for k, v in r.items() if k in ("model", "seeds", WORST, AVERAGE)} for r in result.summary]))
    print("\n".join(result.findings))
    if out is not None:
        from kdteach.plots.debias import plot_margin_histograms

        train = data.splits["train"]
        figure = plot_margin_histograms(result.diagnostics["logits"], train.labels, data.balance_groups, data.balance_names,
                                        title=f"Readout at {cfg.readout_stage} of the KD student ({cfg.dataset})")
        meta = {"mode": mode, "dataset": cfg.dataset, "device": str(device), "seeds": list(cfg.seeds), "selection": cfg.select,
                "average": AVERAGE_CONVENTIONS["test"], "downloads": FULL_MODE_DOWNLOADS[cfg.dataset],
                "config": dataclasses.asdict(cfg), "seconds": round(result.seconds, 1), "findings": result.findings}
        write_report(out, "text", rows=[{k: v for k, v in r.items() if k in ("model", "seeds", WORST, AVERAGE)} for r in result.summary],
                     meta=meta, figures={"text_readout_margins": figure},
                     title=f"Teacher, KD and DeDiER students on {cfg.dataset}: test worst-group and average accuracy (%)")
        write_report(out, "text_runs", rows=result.rows, meta=meta, title="Every model and seed, with each group's test accuracy")
        write_report(out, "text_readout", rows=result.diagnostics["rows"], meta=meta,
                     title=f"The readout at {cfg.readout_stage} of the KD student, per training group")
    return result
