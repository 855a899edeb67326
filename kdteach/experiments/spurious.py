"""Notebook 02's experiment: do distilled students lean on a spurious feature more than their teachers?

On waterbirds_like (the bird's pose decides the label; the background agrees with it 95% of the time in
training), five models per seed:

    teacher (ERM)                     a ResNet-20, plain cross-entropy
    teacher (group-balanced)          the same, trained on group-balanced batches (every group equally often)
    student alone (ERM)               a ResNet-8, plain cross-entropy
    student <- teacher (ERM)          the ResNet-8 distilled from the ERM teacher (soft targets only)
    student <- teacher (balanced)     the ResNet-8 distilled from the group-balanced teacher

each evaluated per test group. Every run keeps the epoch with the best validation mean-over-groups accuracy (as in
the DeDiER code) and says so. Teachers are saved in the cache folder under a name that hashes everything that
decides them, so a rerun (or notebook 03) reloads them instead of training again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from kdteach import runtime
from kdteach.data.grouped import GroupedData, celeba, colored_digits, flip_and_shift, waterbirds, waterbirds_like
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.report import markdown_table, mean_std, paired_differences, write_report
from kdteach.groups import AVERAGE_CONVENTIONS, group_metrics
from kdteach.models.resnet import CifarResNet, resnet_cifar, stage_feature_vectors
from kdteach.train import History, fit, predict

__all__ = [
    "SpuriousConfig",
    "SMOKE_CONFIG",
    "config",
    "load_splits",
    "teacher_checkpoint",
    "train_or_load_teacher",
    "train_student",
    "test_scores",
    "run_seed",
    "summarize",
    "percent_rows",
    "findings",
    "probe_findings",
    "probe_stages",
    "SpuriousResult",
    "run_experiment",
    "run",
    "TEACHER_KINDS",
    "DATASETS",
    "MODEL_NAMES",
]

TEACHER_KINDS = ("erm", "balanced")
MODEL_NAMES = {
    "teacher_erm": "teacher (ERM)",
    "teacher_balanced": "teacher (group-balanced)",
    "student_alone": "student alone (ERM)",
    "student_kd_erm": "student <- teacher (ERM)",
    "student_kd_balanced": "student <- teacher (group-balanced)",
}
AVERAGE, WORST = "average (train-weighted)", "worst-group"
SELECT = "val_mean_group"  # the validation metric that picks each run's epoch


@dataclass(frozen=True)
class SpuriousConfig:
    """Everything that decides notebook 02's numbers. config() picks the full or the smoke one.

    Attributes:
        dataset: "waterbirds_like" (the default), "colored_digits", or real "waterbirds" / "celeba" read from the
            data folders (trained from scratch with the CIFAR ResNets at image_size).
        n_train, n_val, n_test: split sizes (full: Waterbirds' 4795 / 1199 / 5794); None takes a whole split.
        image_size: side of waterbirds_like's and the real datasets' images (colored_digits stay at 28).
        p_corr: P(spurious attribute agrees with label) in training, for the stand-ins.
        data_seed: seed of the dataset draw (the same data for every model seed).
        teacher_depth, teacher_width, student_depth, student_width: CIFAR ResNets (depth 6n + 2).
        teacher_epochs, student_epochs: epochs of each run (the best validation epoch is kept).
        batch_size, lr, weight_decay: AdamW with a cosine schedule, for every model.
        augment: random flips and shifts of up to image_size // 8 pixels for every model (without them, the
            upsampled minority images of the group-balanced teacher are memorised within a few epochs).
        temperature, soft_weight: the distillation loss (soft_weight 1: soft targets only, as in the DeDiER code).
        seeds: model seeds; every table is mean +- std over them.
        probe_rows: at most this many validation rows fit each linear probe.
        mode: "full" or "smoke" (smoke results say they are too small to show the effect).
    """

    dataset: str = "waterbirds_like"
    n_train: int | None = 4795
    n_val: int | None = 1199
    n_test: int | None = 5794
    image_size: int = 32
    p_corr: float = 0.95
    data_seed: int = 0
    teacher_depth: int = 20
    teacher_width: int = 32
    student_depth: int = 8
    student_width: int = 16
    teacher_epochs: int = 30
    student_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True
    temperature: float = 3.0
    soft_weight: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # worst-group accuracy varies a lot from seed to seed
    probe_rows: int = 2000
    mode: str = "full"

    def teacher_key(self) -> str:
        """A short hash of the fields that decide a teacher (data, architecture, schedule): its cache name."""
        fields = ("dataset", "n_train", "n_val", "image_size", "p_corr", "data_seed", "teacher_depth", "teacher_width",
                  "teacher_epochs", "batch_size", "lr", "weight_decay", "augment")
        text = repr([(name, getattr(self, name)) for name in fields])
        return hashlib.sha1(text.encode()).hexdigest()[:10]


SMOKE_CONFIG = SpuriousConfig(
    n_train=800, n_val=300, n_test=600, image_size=16, teacher_depth=8, teacher_width=16, student_depth=8, student_width=8,
    teacher_epochs=3, student_epochs=3, lr=3e-3, seeds=(0, 1), probe_rows=300, mode="smoke",
)


def config(mode: str | None = None) -> SpuriousConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    return SMOKE_CONFIG if mode == "smoke" else SpuriousConfig()


DATASETS = ("waterbirds_like", "colored_digits", "waterbirds", "celeba")


def load_splits(cfg: SpuriousConfig) -> dict[str, GroupedData]:
    """The train, val and test splits of cfg.dataset at cfg's sizes (every loader returns GroupedData)."""
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    loaders = {
        "waterbirds_like": lambda split, n: waterbirds_like(split, n, image_size=cfg.image_size, p_corr=cfg.p_corr, seed=cfg.data_seed),
        "colored_digits": lambda split, n: colored_digits(split, n, p_corr=cfg.p_corr, seed=cfg.data_seed),
        "waterbirds": lambda split, n: waterbirds(None, split, image_size=cfg.image_size, n=n, seed=cfg.data_seed),
        "celeba": lambda split, n: celeba(None, split, image_size=cfg.image_size, n=n, seed=cfg.data_seed),
    }
    if cfg.dataset not in loaders:
        raise ValueError(f"cfg.dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    return {split: loaders[cfg.dataset](split, n) for split, n in sizes.items()}


def _seed_model(seed: int, role: str) -> None:
    # Each model's initialisation depends on (seed, role) only, not on what ran before it: a teacher loaded from
    # the cache leaves the random state where a trained one would not, and the students must not notice.
    torch.manual_seed(int(np.random.SeedSequence([seed, zlib.crc32(role.encode())]).generate_state(1)[0]))


def augmentation(cfg: SpuriousConfig):
    """The training augmentation of a configuration (None when cfg.augment is off); notebook 03 reuses it."""
    # Flips keep waterbirds_like's labels; photographs are only mirrored; a mirrored digit is another digit.
    if not cfg.augment:
        return None
    if cfg.dataset == "colored_digits":
        return flip_and_shift(2, horizontal=False, vertical=False)
    return flip_and_shift(max(1, cfg.image_size // 8), vertical=cfg.dataset == "waterbirds_like")


def _optimizer_and_schedule(model: nn.Module, cfg: SpuriousConfig, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def _validation_metrics(val: GroupedData, device: torch.device):
    batches = val.batches(512, device=device)

    def metrics(model: nn.Module) -> dict[str, float]:
        scores = group_metrics(predict(model, batches), val.labels, val.groups, val.num_groups)
        return {"val_worst_group": scores[WORST], SELECT: scores["average (uniform)"]}

    return metrics


def smoke_threads(cfg: Any, device: torch.device | str) -> contextlib.AbstractContextManager:
    """One CPU thread for a smoke-mode run on a CPU (cfg.mode == "smoke"), else torch's default; a context manager.

    Smoke-size ResNets gain nothing from a second CPU thread (see runtime.cpu_threads). Notebook 03 shares it.
    """
    device = torch.device(device)
    return runtime.cpu_threads(1 if cfg.mode == "smoke" and device.type == "cpu" else None)


def _train(model: nn.Module, cfg: SpuriousConfig, batches, val: GroupedData, epochs: int, device: torch.device, *, loss_fn=None, checkpoint: Path | None = None, progress: bool, desc: str) -> History:
    optimizer, scheduler = _optimizer_and_schedule(model, cfg, epochs * len(batches))
    extra = {"loss_fn": loss_fn} if loss_fn is not None else {}
    with smoke_threads(cfg, device):
        return fit(
            model, batches, epochs=epochs, optimizer=optimizer, scheduler=scheduler, metrics=_validation_metrics(val, device),
            select=SELECT, device=device, channels_last=device.type == "cuda", checkpoint=checkpoint,
            resume=checkpoint is not None, progress=progress, desc=desc, **extra,
        )


def teacher_checkpoint(cfg: SpuriousConfig, kind: str, seed: int) -> Path:
    """Where the teacher of this kind and seed is kept: cache_dir()/spurious/teacher-KIND-HASH-seedS.pt."""
    if kind not in TEACHER_KINDS:
        raise ValueError(f"kind must be one of {TEACHER_KINDS}, got {kind!r}")
    return runtime.cache_dir() / "spurious" / f"teacher-{kind}-{cfg.teacher_key()}-seed{seed}.pt"


def _teacher_net(cfg: SpuriousConfig, data: GroupedData) -> CifarResNet:
    return resnet_cifar(cfg.teacher_depth, cfg.teacher_width, data.num_classes, data.images.shape[1])


def _student_net(cfg: SpuriousConfig, data: GroupedData) -> CifarResNet:
    return resnet_cifar(cfg.student_depth, cfg.student_width, data.num_classes, data.images.shape[1])


def train_or_load_teacher(
    cfg: SpuriousConfig,
    kind: str,
    seed: int,
    *,
    splits: dict[str, GroupedData] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[CifarResNet, History]:
    """Trains a teacher, or reloads it when its checkpoint exists (fit's resume: a finished run returns at once).

    Args:
        cfg: the configuration (its teacher_key names the checkpoint, so smoke and full never mix).
        kind: "erm" (shuffled batches) or "balanced" (group-balanced sampling).
        seed: the model seed (initialisation and batch order).
        splits: load_splits(cfg), if already loaded.
        device: where to train.
        progress: show progress bars.

    Returns:
        (teacher in eval mode with its best-validation-epoch weights, its History).
    """
    path = teacher_checkpoint(cfg, kind, seed)
    splits = splits or load_splits(cfg)
    device = torch.device(device)
    _seed_model(seed, f"teacher-{kind}")
    model = _teacher_net(cfg, splits["train"]).to(device)
    batches = splits["train"].batches(cfg.batch_size, device=device, shuffle=True, balanced=kind == "balanced", seed=seed, augment=augmentation(cfg))
    history = _train(model, cfg, batches, splits["val"], cfg.teacher_epochs, device, checkpoint=path, progress=progress, desc=f"teacher ({kind}, seed {seed})")
    return model.eval(), history


def train_student(
    cfg: SpuriousConfig,
    seed: int,
    *,
    splits: dict[str, GroupedData],
    teacher: nn.Module | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[CifarResNet, History]:
    """Trains the student alone (teacher None, cross-entropy) or distilled from a teacher (soft targets at T).

    With augmentation (cfg.augment) the teacher runs on every augmented batch: logits cached once would describe
    other images. Without it, the teacher's logits are computed once over the training set and carried in the
    batches (kdteach.distill.cache_teacher_logits).

    Args:
        cfg: the configuration.
        seed: the model seed.
        splits: load_splits(cfg).
        teacher: the teacher, or None for the student alone.
        device: where to train.
        progress: show progress bars.

    Returns:
        (student in eval mode with its best-validation-epoch weights, its History).
    """
    device = torch.device(device)
    train = splits["train"]
    _seed_model(seed, "student")  # the same initialisation with and without a teacher: a paired comparison
    model = _student_net(cfg, train).to(device)
    extra, loss, desc = None, None, f"student alone (seed {seed})"
    if teacher is not None:
        desc = f"distilled student (seed {seed})"
        if cfg.augment:
            loss = KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight, teacher=teacher)
        else:
            extra = {"teacher_logits": cache_teacher_logits(teacher, train.batches(512, device=device))}
            loss = KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight)
    batches = train.batches(cfg.batch_size, device=device, shuffle=True, seed=seed, extra=extra, augment=augmentation(cfg))
    history = _train(model, cfg, batches, splits["val"], cfg.student_epochs, device, loss_fn=loss, progress=progress, desc=desc)
    return model.eval(), history


def test_scores(model: nn.Module, data: GroupedData, train_counts: Sequence[int] | np.ndarray, *, device: torch.device | str | None = None) -> dict[str, float]:
    """Group metrics of a model on a split: the three averages, worst-group and every group (kdteach.groups).

    Args:
        model: the classifier.
        data: the split to score.
        train_counts: training examples per group, for the train-weighted average.
        device: where to run; None uses the model's device.

    Returns:
        kdteach.groups.group_metrics' dict.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    logits = predict(model, data.batches(512, device=device))
    return group_metrics(logits, data.labels, data.groups, data.num_groups, train_group_counts=train_counts, group_names=data.group_names)


def run_seed(cfg: SpuriousConfig, seed: int, splits: dict[str, GroupedData], *, device: torch.device | str = "cpu", progress: bool = True) -> tuple[list[dict[str, float | str]], dict[str, nn.Module]]:
    """The five models of one seed (see the module docstring), scored on the test split.

    Args:
        cfg: the configuration.
        seed: the model seed.
        splits: load_splits(cfg).
        device: where to train.
        progress: show progress bars.

    Returns:
        (one row per model: {"model", "seed", "epoch kept", group metrics...}, {model key: trained model}).
    """
    models: dict[str, nn.Module] = {}
    epochs: dict[str, int] = {}
    for kind in TEACHER_KINDS:
        models[f"teacher_{kind}"], history = train_or_load_teacher(cfg, kind, seed, splits=splits, device=device, progress=progress)
        epochs[f"teacher_{kind}"] = history.best_epoch
    models["student_alone"], history = train_student(cfg, seed, splits=splits, device=device, progress=progress)
    epochs["student_alone"] = history.best_epoch
    for kind in TEACHER_KINDS:
        models[f"student_kd_{kind}"], history = train_student(cfg, seed, splits=splits, teacher=models[f"teacher_{kind}"], device=device, progress=progress)
        epochs[f"student_kd_{kind}"] = history.best_epoch
    train_counts = splits["train"].group_counts()
    rows = [
        {"model": MODEL_NAMES[key], "seed": seed, "epoch kept": epochs[key] + 1, **test_scores(model, splits["test"], train_counts)}
        for key, model in models.items()
    ]
    return rows, models


def summarize(rows: Sequence[dict[str, float | str]], metrics: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Mean +- std over seeds (in %) of every metric, one row per model, in the order the models first appear.

    Args:
        rows: run_seed's rows, for any number of seeds.
        metrics: the columns to keep; default every numeric column except "seed" and "epoch kept".

    Returns:
        One row per model: {"model": name, metric: "mean ± std (n=k)", ...}.
    """
    if not rows:
        raise ValueError("rows is empty")
    names = list(dict.fromkeys(row["model"] for row in rows))
    skip = {"model", "seed", "epoch kept"}
    metrics = list(metrics) if metrics is not None else [k for k in rows[0] if k not in skip]
    table = []
    for name in names:
        mine = [row for row in rows if row["model"] == name]
        table.append({"model": name, **{m: mean_std([row[m] for row in mine], scale=100) for m in metrics}})
    return table


def percent_rows(rows: Sequence[dict[str, float | str]], digits: int = 1) -> list[dict[str, str]]:
    """Rows with every float shown in percent (for display; the rows themselves stay fractions).

    Args:
        rows: dicts of metrics such as test_scores' or probe_stages'.
        digits: decimals.

    Returns:
        The same rows with floats formatted as "97.3".
    """
    return [{k: f"{100 * v:.{digits}f}" if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _values(rows: Sequence[dict], model: str, metric: str) -> dict[int, float]:
    return {int(row["seed"]): float(row[metric]) for row in rows if row["model"] == model}


def _paired_difference(rows: Sequence[dict], model: str, reference: str, metric: str) -> tuple[float, float, int]:
    # Mean and sample std (in points) of model - reference over the seeds both have (report.paired_differences).
    diffs = np.array(paired_differences(rows, model, reference, metric))
    if diffs.size == 0:
        raise ValueError(f"no seed has both {model!r} and {reference!r}")
    return float(diffs.mean()), float(diffs.std(ddof=1)) if diffs.size > 1 else float("nan"), int(diffs.size)


def findings(rows: Sequence[dict[str, float | str]], *, smoke: bool = False) -> list[str]:
    """What the numbers say about each distilled student against its teacher, and against the student trained alone,
    worded from the numbers themselves.

    A difference counts as a finding only when its mean over seeds exceeds its seed-to-seed standard deviation;
    otherwise the sentence says that it is within the spread.

    Args:
        rows: run_seed's rows over all seeds.
        smoke: the rows come from smoke mode (the first sentence then says they cannot show the effect).

    Returns:
        Sentences to print.
    """
    lines = []
    if smoke:
        lines.append(
            "Smoke mode: tiny data and a few epochs, so these numbers are too small and noisy to show the effect; "
            "run the notebook in full mode (or `python -m kdteach spurious --mode full` on a GPU) for results."
        )
    pairs = (
        ("student_kd_erm", "teacher_erm"),  # the question of the notebook: does the student lose more than its teacher?
        ("student_kd_balanced", "teacher_balanced"),
        ("student_alone", "teacher_erm"),  # is it the student's size, or the distillation?
        ("student_kd_erm", "student_alone"),
        ("student_kd_balanced", "student_alone"),
    )
    for student, teacher in pairs:
        s_name, t_name = MODEL_NAMES[student], MODEL_NAMES[teacher]
        s_worst, t_worst = _values(rows, s_name, WORST), _values(rows, t_name, WORST)
        if not s_worst or not t_worst:
            continue
        difference, spread, n = _paired_difference(rows, s_name, t_name, WORST)
        gap_s = 100 * np.mean([row[AVERAGE] - row[WORST] for row in rows if row["model"] == s_name])
        gap_t = 100 * np.mean([row[AVERAGE] - row[WORST] for row in rows if row["model"] == t_name])
        if n < 2:
            verdict = "With one seed there is no spread to judge the difference against."
        elif abs(difference) <= spread or abs(difference) < 0.05:
            verdict = "The difference is within the seed-to-seed spread: no clear difference between the two."
        elif difference < 0:
            verdict = f"{s_name} is clearly worse on the worst group than {t_name}: it leans more on the spurious attribute."
        else:
            verdict = f"{s_name} is clearly better on the worst group than {t_name}."
        lines.append(
            f"{s_name} vs {t_name}: worst-group accuracy {100 * np.mean(list(s_worst.values())):.1f}% vs "
            f"{100 * np.mean(list(t_worst.values())):.1f}% (paired difference {difference:+.1f} points, seed-to-seed std "
            f"{spread:.1f}, {n} seeds); average minus worst group {gap_s:.1f} vs {gap_t:.1f} points. {verdict}"
        )
    return lines


def probe_findings(probes: dict[str, Sequence[dict[str, float | str]]], *, threshold: float = 0.9) -> list[str]:
    """Where each model's features first make the label and the background linearly decodable, worded from the numbers.

    Args:
        probes: model name -> probe_stages rows.
        threshold: the balanced accuracy that counts as "decodable".

    Returns:
        One sentence per model.
    """
    lines = []
    for name, rows in probes.items():
        parts = []
        for target, words in (("spurious", "the background"), ("label", "the bird's pose")):
            first = next((r["stage"] for r in rows if float(r[target]) >= threshold), None)
            best = max(rows, key=lambda r: float(r[target]))
            where = f"from {first} on" if first is not None else f"at no stage (best {100 * float(best[target]):.1f}% at {best['stage']})"
            parts.append(f"{words} is decodable at {100 * threshold:.0f}% balanced accuracy {where}")
        lines.append(f"{name}: " + "; ".join(parts) + ".")
    return lines


@torch.no_grad()
def _stage_vectors(model: nn.Module, data: GroupedData, device: torch.device) -> dict[str, np.ndarray]:
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for batch in data.batches(256, device=device):
        for name, vector in stage_feature_vectors(model.features(batch["x"])).items():
            chunks.setdefault(name, []).append(vector.float().cpu())
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def probe_stages(model: nn.Module, fit_data: GroupedData, eval_data: GroupedData, *, max_rows: int = 2000, device: torch.device | str | None = None) -> list[dict[str, float | str]]:
    """Linear probes for the label and for the spurious attribute on every stage of a model.

    Each stage's output is averaged over space (kdteach.models.stage_feature_vectors), standardised and read by
    a logistic regression. Fit the probes on a split where label and attribute are independent (waterbirds_like's
    validation split: backgrounds balanced within each class), or the attribute probe could succeed by decoding
    the label. Scores are balanced accuracies (chance is 0.5 for a binary target, whatever the class sizes).

    Args:
        model: a network with features() and stage_names.
        fit_data: the split the probes are fit on (at most max_rows rows of it).
        eval_data: the split they are scored on.
        max_rows: cap on fitting rows (the first ones; the splits are already shuffled).
        device: where to run the model; None uses its device.

    Returns:
        One row per stage: {"stage", "label", "spurious"} balanced accuracies.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if max_rows < 2:
        raise ValueError(f"max_rows must be >= 2, got {max_rows}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    fit_data = fit_data.subset(torch.arange(min(max_rows, len(fit_data))))
    fit_vectors, eval_vectors = _stage_vectors(model, fit_data, device), _stage_vectors(model, eval_data, device)
    rows = []
    for stage in model.stage_names:
        row: dict[str, float | str] = {"stage": stage}
        for target in ("label", "spurious"):
            y_fit = (fit_data.labels if target == "label" else fit_data.spurious).numpy()
            y_eval = (eval_data.labels if target == "label" else eval_data.spurious).numpy()
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            probe.fit(fit_vectors[stage], y_fit)
            row[target] = float(balanced_accuracy_score(y_eval, probe.predict(eval_vectors[stage])))
        rows.append(row)
    return rows


@dataclass
class SpuriousResult:
    """Everything run_experiment measured.

    Attributes:
        cfg: the configuration.
        rows: one row per (model, seed) with its test group metrics.
        summary: summarize(rows): mean ± std per model.
        findings: findings(rows): sentences worded from the numbers.
        models: the trained models of the first seed, by key ("teacher_erm", "student_kd_erm", ...).
        probes: model key -> probe_stages rows, for the first seed's ERM teacher and ERM-distilled student.
        seconds: wall time of the run.
        group_names: the groups' names (columns of rows).
    """

    cfg: SpuriousConfig
    rows: list[dict[str, float | str]]
    summary: list[dict[str, str]]
    findings: list[str]
    models: dict[str, nn.Module] = field(default_factory=dict)
    probes: dict[str, list[dict[str, float | str]]] = field(default_factory=dict)
    seconds: float = 0.0
    group_names: list[str] = field(default_factory=list)

    def table(self, columns: Sequence[str] | None = None) -> str:
        """The summary as Markdown, headed by the average convention it prints."""
        columns = list(columns) if columns is not None else ["model", AVERAGE, WORST, *[k for k in self.summary[0] if k not in ("model", AVERAGE, WORST)]]
        return f"Test accuracy in %, mean ± std over seeds {list(self.cfg.seeds)}. {AVERAGE}: {AVERAGE_CONVENTIONS['train']}.\n\n" + markdown_table(self.summary, columns)


PROBED = ("teacher_erm", "student_kd_erm", "student_alone")


def run_experiment(cfg: SpuriousConfig, *, device: torch.device | str = "cpu", splits: dict[str, GroupedData] | None = None, probes: bool = True, progress: bool = True) -> SpuriousResult:
    """Every seed of notebook 02's table, plus linear probes on the first seed's models.

    Args:
        cfg: the configuration (config(mode)).
        device: where to train.
        splits: load_splits(cfg), if already loaded.
        probes: also fit the per-stage linear probes.
        progress: show progress bars.

    Returns:
        SpuriousResult.
    """
    if not cfg.seeds:
        raise ValueError("cfg.seeds is empty")
    started = time.perf_counter()
    splits = splits or load_splits(cfg)
    rows, first_models = [], {}
    for i, seed in enumerate(cfg.seeds):
        seed_rows, models = run_seed(cfg, seed, splits, device=device, progress=progress)
        rows += seed_rows
        if i == 0:
            first_models = models
    probe_rows = {}
    if probes:
        probe_rows = {key: probe_stages(first_models[key], splits["val"], splits["test"], max_rows=cfg.probe_rows) for key in PROBED}
    return SpuriousResult(
        cfg=cfg, rows=rows, summary=summarize(rows), findings=findings(rows, smoke=cfg.mode == "smoke"),
        group_names=list(splits["test"].group_names),
        models=first_models, probes=probe_rows, seconds=time.perf_counter() - started,
    )


def run(mode: str = "full", out: str | Path | None = None, seed: int = 0, progress: bool = True) -> SpuriousResult:
    """The headless run behind `python -m kdteach spurious`: the table, the findings and the figures, written to out.

    Args:
        mode: "full" (Waterbirds-sized data, ResNet-20 teachers; meant for a GPU) or "smoke" (tiny, CPU).
        out: folder for spurious.json / spurious.md and the figures; None writes nothing.
        seed: the first model seed; the run uses as many consecutive seeds as the mode's configuration.
        progress: show progress bars.

    Returns:
        SpuriousResult.
    """
    from kdteach.plots.groups import plot_group_accuracies, plot_probes

    base = config(mode)
    cfg = dataclasses.replace(base, seeds=tuple(seed + i for i in range(len(base.seeds))))
    device = runtime.pick_device()
    result = run_experiment(cfg, device=device, progress=progress)
    for line in result.findings:
        print(line)
    if out is not None:
        figures = {"spurious_groups": plot_group_accuracies(result.rows, result.group_names), "spurious_probes": plot_probes(result.probes)}
        meta = {
            "mode": mode, "device": str(device), "seeds": list(cfg.seeds), "average": AVERAGE_CONVENTIONS["train"],
            "selection": "each run keeps the epoch with the best validation mean-over-groups accuracy",
            "config": dataclasses.asdict(cfg), "findings": result.findings, "seconds": round(result.seconds, 1),
        }
        write_report(out, "spurious", rows=result.summary, meta=meta, figures=figures, title="Notebook 02: spurious correlations and distillation")
    return result
