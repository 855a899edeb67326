"""Notebook 04's experiment: BERT -> DistilBERT distillation on text with a shortcut, plain KD against DeDiER.

- load_data(): the splits (the offline stand-in, MultiNLI or CivilComments) and a tokenizer, encoded once;
- train_teacher(): a debiased teacher (group-balanced batches), selected on validation mean-group accuracy;
- train_student(): a student distilled at T = 3 with plain KD or with DeDiER's weights from an early readout on a
  transformer layer (its [CLS] or mean-pooled state, retrained after every student epoch on detached features);
- readout_diagnostics(): the readout's accuracy, margin and DeDiER weight in each training group;
- run_experiment(): all of it, returning a TextRun (the typed TextResult and the models behind it);
- text_*_rows, text_*_sentences: the tables and sentences about a TextResult, through kdteach.report's one rule;
- run(): the same headless (`python -m kdteach text --mode smoke|full --out DIR`).

Smoke mode runs the stand-in with tiny BertConfig / DistilBertConfig models built from config, on a CPU, with
nothing downloaded. Full mode fine-tunes bert-base-uncased and distilbert-base-uncased on MultiNLI (or
CivilComments) on a GPU; FULL_MODE_DOWNLOADS lists what it fetches. Every model goes through common.train_or_load,
keyed by the configuration fields that decide it, so a dropped Colab session resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kdteach import report, runtime
from kdteach.data.batches import Batches
from kdteach.data.grouped import GroupBalancedBatches
from kdteach.data.text import TEXT_DATASETS as DATASETS, TextData, conflicting_groups, load_text_data
from kdteach.debias import DeDiERReweighting, EarlyReadout, dedier_weights, readout_by_group, weights_by_group
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.experiments import common
from kdteach.groups import AVERAGE_CONVENTIONS, Competence, GroupMetrics, competence, group_counts, group_metrics, shortcut_rules
from kdteach.models.text import STUDENT_CHECKPOINT, TEACHER_CHECKPOINT, TextClassifier, text_classifier
from kdteach.plots.debias import plot_margin_histograms
from kdteach.report import FRACTION_DIFFERENCE, Comparison, comparison_sentence, mean_std, paired_comparison, smoke_note, summarize_seeds
from kdteach.train import History, predict

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

    The teacher is trained on group-balanced batches (a debiased teacher, as the paper's premise requires: what the
    student gets wrong is then the student's doing); the students with AdamW, linear warm-up then linear decay;
    every model keeps the epoch with the best `select` on validation and clips its gradients at max_grad_norm.
    """

    dataset: str = "multinli"  # "standin", "multinli" or "civilcomments"
    sizes: tuple[int | None, int | None, int | None] = (30_000, 4_000, None)  # (train, val, test); None: a whole split
    max_length: int = 128  # tokens per example (padded or truncated)
    teacher: str = TEACHER_CHECKPOINT  # or "tiny": built from config, random weights
    student: str = STUDENT_CHECKPOINT
    teacher_size: tuple[int, int, int] = (128, 4, 4)  # (hidden, layers, heads) of the tiny models
    student_size: tuple[int, int, int] = (64, 2, 2)
    dropout: float = 0.1  # of the tiny models
    batch_size: int = 32  # every model
    teacher_epochs: int = 2
    teacher_lr: float = 2e-5
    epochs: int = 3  # the students
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0  # BERT's fine-tuning recipe
    temperature: float = 3.0  # the paper: T = 3, pure soft targets
    soft_weight: float = 1.0
    readout_stage: str = "layer2"  # the early readout: a linear head on this layer's pooled state,
    readout_pool: str = "cls"  # "cls" or "mean", retrained from scratch after each student epoch
    readout_epochs: int = 1
    readout_lr: float = 1e-2
    alpha: float = 0.2  # DeDiER's weights exp(beta * margin**alpha) on readout errors (the code's MultiNLI defaults;
    beta: float = 3.0  # CivilComments: alpha 0.05, beta 3)
    start_after: int = 1  # epochs of plain KD before DeDiER's first reweighting (the paper: 1)
    select: str = "val_mean_group"  # the validation metric that picks each model's epoch (the paper's)
    seeds: tuple[int, ...] = (0, 1, 2)  # student seeds (the teacher is trained once, seed 0)


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
)
# Full mode on the stand-in (a CPU is enough): the same models, larger validation and test splits and five seeds,
# because whether a tiny student learns the verb comparison within its epochs varies from seed to seed.
STANDIN_FULL = dataclasses.replace(STANDIN_SMOKE, sizes=(3000, 2000, 4000), seeds=(0, 1, 2, 3, 4))


def config(mode: str | None = None, dataset: str | None = None) -> TextConfig:
    """The configuration of a mode and a dataset.

    Args:
        mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE.
        dataset: one of DATASETS; None: the offline stand-in in either mode (the real datasets download about 930 MB
            and want a GPU: they are opt-in, by name).

    Returns:
        The TextConfig. Smoke mode on a real dataset keeps the real models but uses a few hundred examples and
        one short epoch (it checks the code path; it still downloads, so CI never runs it).
    """
    dataset = dataset or "standin"
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "standin":
        return common.config_for(mode, smoke=STANDIN_SMOKE, full=STANDIN_FULL)
    real = TextConfig(dataset=dataset)
    if dataset == "civilcomments":
        real = dataclasses.replace(real, sizes=(30_000, 5_000, 10_000), alpha=0.05, beta=3.0)
    smoke = dataclasses.replace(real, sizes=(256, 128, 128), max_length=64, teacher_epochs=1, epochs=2, warmup_steps=0, seeds=(0,))
    return common.config_for(mode, smoke=smoke, full=real)


def load_data(cfg: TextConfig, *, seed: int = 0) -> TextData:
    """cfg's dataset at cfg's sizes, encoded once (a tiny model gets the stand-in's WordPiece tokenizer, a Hub model
    its own); seed: the stand-in's generator seed and the real data's subsampling seed."""
    return load_text_data(cfg.dataset, cfg.sizes, max_length=cfg.max_length, tokenizer="standin" if cfg.teacher == "tiny" else cfg.teacher, seed=seed)


# The configuration fields that decide each model (its checkpoint key); the data's seed and the model's seed join them.
TEACHER_FIELDS = ("dataset", "sizes", "max_length", "teacher", "teacher_size", "dropout", "batch_size", "teacher_epochs", "teacher_lr",
                  "weight_decay", "warmup_steps", "max_grad_norm", "select")
STUDENT_FIELDS = ("dataset", "sizes", "max_length", "student", "student_size", "dropout", "batch_size", "epochs", "lr", "weight_decay",
                  "warmup_steps", "max_grad_norm", "temperature", "soft_weight", "select")
DEDIER_FIELDS = ("readout_stage", "readout_pool", "readout_epochs", "readout_lr", "alpha", "beta", "start_after")


def _fields(cfg: TextConfig, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in names}  # named, so that reordering a tuple above keeps every key


def teacher_path(cfg: TextConfig, data: TextData) -> Path:
    """The teacher's checkpoint (its key: TEACHER_FIELDS and the data's seed)."""
    return common.checkpoint_path("text", "teacher", _fields(cfg, TEACHER_FIELDS), data.seed)


def _train(model: TextClassifier, batches: Batches, cfg: TextConfig, data: TextData, device: torch.device, *, path: Path, epochs: int,
           lr: float, desc: str, progress: bool, first_epoch: int = 0, **fit_kwargs: Any) -> History:
    # Every model of the notebook: AdamW with BERT's linear warm-up and decay, selected on validation by the course's one
    # rule (common.selection_rule: nothing before first_epoch, ties to the later epoch), clipped.
    steps = epochs * len(batches)
    optimizer, scheduler = common.optimizer_and_schedule(model, total_steps=steps, lr=lr, weight_decay=cfg.weight_decay, kind="adamw",
                                                         schedule="linear", warmup_steps=min(cfg.warmup_steps, max(steps // 2, 1)))
    val = Batches({"x": data.inputs["val"]}, 4 * cfg.batch_size).to(device)
    split = data.splits["val"]
    metrics = common.group_val_metrics(lambda m: predict(m, val), split.labels, split.groups, split.num_groups)
    metrics = common.selection_rule(metrics, batches, by=cfg.select, first_epoch=first_epoch)
    return common.train_or_load(model, batches, path=path, epochs=epochs, optimizer=optimizer, scheduler=scheduler, device=device,
                                progress=progress, desc=desc, metrics=metrics, select=common.SELECTION, max_grad_norm=cfg.max_grad_norm, **fit_kwargs)


def _new_model(cfg: TextConfig, data: TextData, *, teacher: bool) -> TextClassifier:
    return text_classifier(cfg.teacher if teacher else cfg.student, teacher=teacher, vocab_size=len(data.tokenizer), num_classes=data.num_classes,
                           size=cfg.teacher_size if teacher else cfg.student_size, max_length=cfg.max_length, dropout=cfg.dropout, pool=cfg.readout_pool)


def train_teacher(cfg: TextConfig, data: TextData, device: torch.device | str, *, progress: bool = True) -> tuple[TextClassifier, History]:
    """Trains (or reloads) the teacher on group-balanced batches (every group equally often), selected on validation;
    returns it in eval mode, and its History."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = _new_model(cfg, data, teacher=True).to(device)
    tensors = {"x": data.inputs["train"], "y": data.splits["train"].labels, "group": data.balance_groups}
    batches = GroupBalancedBatches(tensors, cfg.batch_size, seed=0).to(device)
    history = _train(model, batches, cfg, data, device, path=teacher_path(cfg, data), epochs=cfg.teacher_epochs, lr=cfg.teacher_lr,
                     desc="teacher (group-balanced)", progress=progress)
    return model.eval(), history


@dataclass
class StudentRun:
    """One distilled student: method ("KD" or "DeDiER"), seed, the model at its selected epoch, fit()'s History
    (DeDiER's rows carry the readout's accuracy and the share upweighted), and DeDiER's reweighting (else None)."""

    method: str
    seed: int
    model: TextClassifier
    history: History
    reweighting: DeDiERReweighting | None = None


def _readout(cfg: TextConfig, data: TextData, seed: int) -> EarlyReadout:
    return EarlyReadout(cfg.readout_stage, data.num_classes, head="linear", epochs=cfg.readout_epochs, lr=cfg.readout_lr, seed=seed)


def train_student(method: str, cfg: TextConfig, data: TextData, teacher_logits: torch.Tensor, device: torch.device | str, *, seed: int = 0,
                  progress: bool = True) -> StudentRun:
    """Distils the teacher into a student with plain KD or with DeDiER's weights (trained, or reloaded).

    Both minimise mean_i w_i * T^2 * KL(teacher_T || student_T) at T = cfg.temperature (soft_weight 1: no
    hard-label term, as in the paper's code). KD keeps w_i = 1. DeDiER trains an early readout on the student's
    cfg.readout_stage after every epoch from epoch cfg.start_after - 1 on and sets w_i = exp(beta * margin_i**alpha)
    where the readout is wrong (the epochs before are plain KD).

    Args:
        method: "KD" or "DeDiER".
        cfg, data, device: the configuration, the data, where to train.
        teacher_logits: (N_train, C) cached logits of the teacher (the one teacher_path(cfg, data) holds).
        seed, progress: initialisation and shuffling seed; progress bars.

    Returns:
        StudentRun.
    """
    if method not in ("KD", "DeDiER"):
        raise ValueError(f"method must be 'KD' or 'DeDiER', got {method!r}")
    if method == "DeDiER" and cfg.epochs <= cfg.start_after:
        raise ValueError(f"cfg.epochs ({cfg.epochs}) must exceed cfg.start_after ({cfg.start_after}): DeDiER keeps no epoch from before its "
                         "first reweighting, so with no later epoch there is nothing to keep")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = _new_model(cfg, data, teacher=False).to(device)
    tensors = {"x": data.inputs["train"], "y": data.splits["train"].labels, "teacher_logits": teacher_logits}
    batches = Batches(tensors, cfg.batch_size, shuffle=True, seed=seed).to(device)
    decides = [_fields(cfg, STUDENT_FIELDS), teacher_path(cfg, data).stem, data.seed, seed]
    reweighting = None
    if method == "DeDiER":
        reweighting = DeDiERReweighting(model, _readout(cfg, data, seed), batches, alpha=cfg.alpha, beta=cfg.beta, start_after=cfg.start_after)
        decides.append(_fields(cfg, DEDIER_FIELDS))
    history = _train(model, batches, cfg, data, device, path=common.checkpoint_path("text", f"{method}-student", *decides), epochs=cfg.epochs,
                     lr=cfg.lr, desc=f"{method} student (seed {seed})", progress=progress, on_epoch_end=reweighting,
                     first_epoch=reweighting.first_reweighted_epoch if reweighting is not None else 0,
                     loss_fn=KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight, instance_weights=reweighting))
    return StudentRun(method, seed, model.eval(), history, reweighting)


def test_scores(model: TextClassifier, data: TextData, *, split: str = "test", batch_size: int = 256) -> GroupMetrics:
    """A model's group metrics on a split (worst group, the average conventions, each group's accuracy)."""
    device = next(model.parameters()).device
    logits = predict(model, Batches({"x": data.inputs[split]}, batch_size).to(device))
    part = data.splits[split]
    return group_metrics(logits, part.labels, part.groups, part.num_groups, group_names=part.group_names)


@dataclass(frozen=True)
class ReadoutGroup:
    """The early readout in one training group: its accuracy, confidence margins, and the DeDiER weights it gives."""

    group: str
    n: int
    accuracy: float
    mean_margin: float
    mean_margin_wrong: float  # NaN where the readout is never wrong
    upweighted: float  # share of the group with weight > 1
    mean_weight: float
    weight_share: float  # the group's share of the summed weight


def readout_diagnostics(cfg: TextConfig, data: TextData, student: TextClassifier, *, seed: int = 0) -> tuple[tuple[ReadoutGroup, ...], torch.Tensor]:
    """An early readout trained on a (distilled) student at cfg.readout_stage: one ReadoutGroup per training (balance)
    group, and the readout's (N_train, C) logits on the training set."""
    device = next(student.parameters()).device
    train = data.splits["train"]
    batches = Batches({"x": data.inputs["train"], "y": train.labels}, cfg.batch_size, shuffle=True, seed=seed).to(device)
    readout = _readout(cfg, data, seed)
    readout.fit(student, batches)
    logits = readout.predict(student, batches).cpu()
    groups, names = data.balance_groups, data.balance_names
    weights = dedier_weights(logits, train.labels, alpha=cfg.alpha, beta=cfg.beta)
    rows = zip(readout_by_group(logits, train.labels, groups, len(names)), weights_by_group(weights, groups, len(names)))
    return tuple(ReadoutGroup(names[m["group"]], m["n"], m["accuracy"], m["mean_margin"], m["mean_margin_wrong"], w["upweighted"],
                              w["mean_weight"], w["weight_share"]) for m, w in rows), logits


@dataclass(frozen=True)
class WeightShares:
    """The share of the total DeDiER weight each training group would carry, for several alphas, from one readout."""

    groups: tuple[str, ...]
    share_of_examples: tuple[float, ...]
    alphas: tuple[float, ...]
    weight_share: tuple[tuple[float, ...], ...]  # [alpha][group]
    conflicting: tuple[int, ...]  # the groups where the cue points to the wrong label


def weight_shares(readout_logits: torch.Tensor, data: TextData, *, alphas: Sequence[float], beta: float) -> WeightShares:
    """How the weight would spread over the training groups for each alpha, from one readout's logits.

    alpha is the exponent on the margin: small alpha gives almost the full e^beta to every readout error, however
    unsure; alpha = 1 makes the weight grow with the margin, so that only confident errors count much.
    """
    labels, groups, names = data.splits["train"].labels, data.balance_groups, data.balance_names
    counts = group_counts(groups, len(names))
    shares = tuple(tuple(row["weight_share"] for row in weights_by_group(dedier_weights(readout_logits, labels, alpha=a, beta=beta), groups, len(names)))
                   for a in alphas)
    return WeightShares(tuple(names), tuple(float(c / counts.sum()) for c in counts), tuple(alphas), shares, tuple(conflicting_groups(data)))


@dataclass(frozen=True)
class ModelScores:
    """One trained model: its test group metrics, the epoch fit() kept, and validation worst-group accuracy per epoch."""

    model: str  # "teacher", "KD" or "DeDiER"
    seed: int
    test: GroupMetrics
    best_epoch: int
    val_worst_group: tuple[float, ...]
    competence: Competence | None = None  # the competence gate on its test groups (None: not judged)


@dataclass(frozen=True)
class TextResult:
    """What run_experiment measured: every model's scores (the teacher, then KD and DeDiER per seed), and the early
    readout on the first KD student per training group."""

    dataset: str
    models: tuple[ModelScores, ...]
    readout_stage: str
    readout: tuple[ReadoutGroup, ...]
    conflicting: tuple[int, ...]  # readout groups where the cue points to the wrong label

    def scores(self, model: str) -> dict[int, GroupMetrics]:
        """{seed: test metrics} of one model ("teacher", "KD" or "DeDiER")."""
        return {m.seed: m.test for m in self.models if m.model == model}


@dataclass
class TextRun:
    """The TextResult, and what it came from: the teacher, every StudentRun, and the readout's training-set logits."""

    result: TextResult
    teacher: TextClassifier
    students: tuple[StudentRun, ...]
    readout_logits: torch.Tensor


def _scores(name: str, seed: int, model: TextClassifier, history: History, data: TextData) -> ModelScores:
    test = test_scores(model, data)
    # Constants are the shortcut rules every grouping has (the negation cue's rule is not one of shortcut_rules' kinds).
    rules = shortcut_rules(data.num_classes, max(len(test.per_group) // data.num_classes, 1))
    return ModelScores(name, seed, test, int(history.best_epoch), tuple(history.column("val_worst_group")), competence(test.per_group, rules))


def run_experiment(cfg: TextConfig, *, data: TextData | None = None, device: torch.device | str | None = None, progress: bool = True) -> TextRun:
    """Teacher, then a KD and a DeDiER student per seed, then the readout's view of the first KD student.

    Args:
        cfg, progress: the configuration; progress bars.
        data, device: the data (None: load_data(cfg)); where to train (None: runtime.pick_device()).

    Returns:
        TextRun.
    """
    device = torch.device(device) if device is not None else runtime.pick_device()
    data = data if data is not None else load_data(cfg)
    # THE thread rule for the whole run, not only inside fit: the teacher's cached logits and the readout then come
    # out the same as the students' training saw them.
    with runtime.cpu_threads(runtime.threads_for_rows(len(data.splits["train"]), device)):
        teacher, teacher_history = train_teacher(cfg, data, device, progress=progress)
        teacher_logits = cache_teacher_logits(teacher, Batches({"x": data.inputs["train"]}, 4 * cfg.batch_size).to(device))
        students = tuple(train_student(method, cfg, data, teacher_logits, device, seed=seed, progress=progress)
                         for seed in cfg.seeds for method in ("KD", "DeDiER"))
        scores = (_scores("teacher", 0, teacher, teacher_history, data),
                  *(_scores(s.method, s.seed, s.model, s.history, data) for s in students))
        kd = next(s for s in students if s.method == "KD")
        readout, logits = readout_diagnostics(cfg, data, kd.model, seed=kd.seed)
    result = TextResult(cfg.dataset, scores, cfg.readout_stage, readout, tuple(conflicting_groups(data)))
    return TextRun(result, teacher, students, logits)


# Tables and sentences. DeDiER against KD, and KD against the teacher, are decided by paired_comparison over the
# student seeds; everything else states numbers.

_TEXT_NAMES = {"teacher": "teacher", "KD": "KD student", "DeDiER": "DeDiER student"}


def _text_models(result: TextResult) -> list[str]:
    return list(dict.fromkeys(m.model for m in result.models))


def text_summary_rows(result: TextResult) -> list[dict[str, Any]]:
    """One row per model of a TextResult: seeds, and worst-group and average (test) accuracy as mean ± std (%)."""
    rows = []
    for name in _text_models(result):
        scores = list(result.scores(name).values())
        rows.append({"model": _TEXT_NAMES[name], "seeds": len(scores),
                     "worst-group": mean_std([s.worst_group for s in scores], scale=100),
                     "average (test)": mean_std([s.average_test for s in scores], scale=100),
                     "competent (seeds)": f"{sum(m.competence.competent for m in result.models if m.model == name and m.competence)}/{len(scores)}"})
    return rows


def text_model_rows(result: TextResult) -> list[dict[str, Any]]:
    """One row per model and seed (accuracies as fractions): worst-group, the averages, each test group, best epoch."""
    return [{"model": _TEXT_NAMES[m.model], "seed": m.seed, "worst-group": m.test.worst_group, "average (test)": m.test.average_test,
             "average (uniform)": m.test.mean_over_groups, **dict(zip(m.test.group_names, m.test.per_group)), "best epoch": m.best_epoch,
             "gate": m.competence.label() if m.competence else "-"}
            for m in result.models]


def text_dedier_vs_kd(result: TextResult, metric: str = "worst_group") -> Comparison:
    """DeDiER - KD on a GroupMetrics field (default worst-group accuracy), paired over the student seeds."""
    ours, reference = ({seed: getattr(s, metric) for seed, s in result.scores(name).items()} for name in ("DeDiER", "KD"))
    return paired_comparison(ours, reference, bounds=FRACTION_DIFFERENCE)


def text_kd_vs_teacher(result: TextResult) -> Comparison:
    """KD student - teacher on worst-group accuracy, seed by seed against the one teacher every student learns from."""
    teacher = next(iter(result.scores("teacher").values())).worst_group
    kd = result.scores("KD")
    return paired_comparison({seed: s.worst_group for seed, s in kd.items()}, {seed: teacher for seed in kd}, bounds=FRACTION_DIFFERENCE)


def _competences(result: TextResult, model: str) -> dict[int, Competence]:
    return {m.seed: m.competence for m in result.models if m.model == model and m.competence is not None}


def text_sentences(result: TextResult, *, mode: str = "full") -> list[str]:
    """Every sentence printed about a TextResult: each model's numbers, the paired comparisons, the readout.

    Args:
        result: the TextResult.
        mode: "smoke" adds the smoke-mode note.

    Returns:
        The sentences.
    """
    lines = [smoke_note(mode)] if mode == "smoke" else []
    for name in _text_models(result):
        scores = list(result.scores(name).values())
        worst, average = (summarize_seeds([getattr(s, f) for s in scores]).mean for f in ("worst_group", "average_test"))
        lines.append(f"{_TEXT_NAMES[name]}: worst-group {100 * worst:.1f}% against {100 * average:.1f}% average (test), "
                     f"mean over {len(scores)} seed(s).")
    if {"KD", "DeDiER"} <= set(_text_models(result)):
        gates = {"ours_competence": _competences(result, "DeDiER"), "reference_competence": _competences(result, "KD")}
        lines.append(comparison_sentence(text_dedier_vs_kd(result), what="worst-group accuracy", ours="DeDiER", reference="KD", **gates))
        lines.append(comparison_sentence(text_dedier_vs_kd(result, "average_test"), what="average (test) accuracy", ours="DeDiER",
                                         reference="KD", **gates))
    if {"KD", "teacher"} <= set(_text_models(result)):
        teacher = next(iter(_competences(result, "teacher").values()), None)
        lines.append(comparison_sentence(text_kd_vs_teacher(result), what="worst-group accuracy", ours="KD student", reference="teacher",
                                         ours_competence=_competences(result, "KD"),
                                         reference_competence={seed: teacher for seed in result.scores("KD")} if teacher else None))
    groups = [g for g in result.readout if not math.isnan(g.upweighted)]
    if groups:
        top, bottom = max(groups, key=lambda g: g.upweighted), min(reversed(groups), key=lambda g: g.upweighted)
        lines.append(f"The readout at {result.readout_stage} of the first KD student upweights {top.upweighted:.0%} of '{top.group}' "
                     f"(n={top.n}), the most of any training group; the least: '{bottom.group}', {bottom.upweighted:.0%}.")
    return lines


def text_conflicting_sentences(result: TextResult, *, mostly_right: float = 0.9) -> list[str]:
    """What the readout of a TextResult does on each group counted as conflicting (the cue points to the wrong
    label there: kdteach.data.text.conflicting_groups, a definition by the cue alone), and which of those groups it
    is right on at least `mostly_right` of: those count in the conflicting weight sums, yet the readout does not pick
    them out (DeDiER can upweight at most 1 - mostly_right of each). One readout of one seed: a description, not a
    comparison."""
    groups = [result.readout[g] for g in result.conflicting]
    lines = [f"'{g.group}' (n={g.n}) counts as conflicting: the readout at {result.readout_stage} is right on {g.accuracy:.0%} "
             f"of it and upweights {g.upweighted:.0%}." for g in groups]
    missed = [g for g in groups if g.accuracy >= mostly_right]
    if missed:
        names = ", ".join(f"'{g.group}'" for g in missed)
        lines.append(f"{names}: counted as conflicting by the cue, yet the readout is right on at least {mostly_right:.0%} of each, "
                     f"so at most {1 - mostly_right:.0%} of each can be upweighted; the conflicting groups' share of the weight "
                     "counts them all the same.")
    return lines


def text_weight_share_rows(shares: WeightShares) -> list[dict[str, Any]]:
    """One row per training group of a WeightShares: its share of the examples and of the weight per alpha."""
    return [{"group": name, "share of examples": share, **{f"weight share (alpha={a:g})": by_alpha[g] for a, by_alpha in zip(shares.alphas, shares.weight_share)}}
            for g, (name, share) in enumerate(zip(shares.groups, shares.share_of_examples))]


def text_weight_share_sentences(shares: WeightShares) -> list[str]:
    """Per alpha: how much of the weight the groups where the cue points to the wrong label carry, against their size."""
    examples = sum(shares.share_of_examples[g] for g in shares.conflicting)
    return [f"alpha={a:g}: the groups where the cue points to the wrong label carry {sum(by_alpha[g] for g in shares.conflicting):.0%} "
            f"of the weight; they are {examples:.0%} of the examples." for a, by_alpha in zip(shares.alphas, shares.weight_share)]


def run(mode: str = "smoke", out: str | Path | None = None, seed: int = 0, progress: bool = True, *, dataset: str | None = None) -> TextResult:
    """Runs notebook 04's experiment headless and writes its tables and figure to out.

    Args:
        mode, dataset: "smoke" or "full"; one of DATASETS (None: the offline stand-in; "multinli" or "civilcomments":
            BERT and DistilBERT on the real data, a download, for a GPU).
        out: folder for text.json / text.md, text_runs.*, text_readout.* and a figure (None: write nothing).
        seed, progress: added to every student seed and used as the data seed; progress bars.

    Returns:
        TextResult.
    """
    base = config(mode, dataset)
    cfg = dataclasses.replace(base, seeds=tuple(s + seed for s in base.seeds))
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started = time.perf_counter()
    data = load_data(cfg, seed=seed)
    outcome = run_experiment(cfg, data=data, device=device, progress=progress)
    result = outcome.result
    findings = text_sentences(result, mode=mode)
    print(report.markdown_table(text_summary_rows(result)))
    print("\n".join(findings))
    if out is not None:
        figure = plot_margin_histograms(outcome.readout_logits, data.splits["train"].labels, data.balance_groups, data.balance_names,
                                        title=f"Readout at {cfg.readout_stage} of the KD student ({cfg.dataset})")
        title = f"Teacher, KD and DeDiER students on {cfg.dataset}: test worst-group and average accuracy (%)"
        meta = {"mode": mode, "title": title, "findings": findings, "dataset": cfg.dataset, "selection": cfg.select, "average": AVERAGE_CONVENTIONS["test"],
                "downloads": FULL_MODE_DOWNLOADS[cfg.dataset],
                **report.provenance(experiment="text", config=cfg, seeds=list(cfg.seeds), wall_seconds=time.perf_counter() - started, device=str(device))}
        report.write_report(out, "text", rows=text_summary_rows(result), meta=meta, figures={"text_readout_margins": figure}, result=result, title=title)
        report.write_report(out, "text_runs", rows=text_model_rows(result), meta=meta, title="Every model and seed, with each group's test accuracy")
        report.write_report(out, "text_readout", rows=result.readout, meta=meta, title=f"The readout at {cfg.readout_stage} of the KD student, per training group")
    return result
