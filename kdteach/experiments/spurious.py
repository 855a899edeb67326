"""Notebook 02's experiment: does a distilled student do worse on the minority groups than its teacher?

On waterbirds_like (the bird's pose decides the label; the background agrees with it 95% of the time in
training), five models per seed (MODEL_NAMES): a ResNet-20 teacher trained with ERM and one on group-balanced
batches; a ResNet-8 student alone (ERM) and distilled from each teacher (soft targets only); each scored per test group. Every run keeps its best epoch on validation mean-over-groups accuracy (as in the
DeDiER code; exact ties go to the later epoch, see common.selection_score). Every model is checkpointed through
common.train_or_load under a key of every config field that decides it, so a rerun (or notebook 03) reloads it.
spurious_findings and probe_findings word a SpuriousResult through kdteach.report's one comparison rule.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kdteach import report, runtime
from kdteach.data import grouped
from kdteach.data.grouped import GroupedData
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.experiments import common
from kdteach.groups import AVERAGE_CONVENTIONS, COMPETENCE_MARGIN, Competence, GroupMetrics, competence, shortcut_rules
from kdteach.models.resnet import CifarResNet, resnet_cifar
from kdteach.plots.groups import plot_group_accuracies, plot_probes
from kdteach.probes import StageProbe, probe_stages
from kdteach.report import FRACTION_DIFFERENCE, paired_findings, smoke_note
from kdteach.train import History

MODEL_NAMES = {"teacher_erm": "teacher (ERM)", "teacher_balanced": "teacher (group-balanced)", "student_alone": "student alone (ERM)",
               "student_kd_erm": "student <- teacher (ERM)", "student_kd_balanced": "student <- teacher (group-balanced)"}
# The comparisons the findings report, (ours, reference): the student against its teacher (the notebook's
# question), then against the same student trained alone (is it the size, or the distillation?).
PAIRS = (("student_kd_erm", "teacher_erm"), ("student_kd_balanced", "teacher_balanced"), ("student_alone", "teacher_erm"),
         ("student_kd_erm", "student_alone"), ("student_kd_balanced", "student_alone"))
PROBED = ("teacher_erm", "student_kd_erm", "student_alone")
SELECT_BY = "val_mean_group"  # the validation metric that picks each run's epoch


@dataclass(frozen=True)
class SpuriousConfig:
    """Everything that decides notebook 02's numbers. config() picks the full or the smoke one.

    Attributes:
        dataset, n_train, n_val, n_test, image_size, p_corr, data_seed: the data (grouped.load_splits; full: Waterbirds'
            split sizes; None takes a whole split; colored_digits stay at 28 pixels).
        teacher_depth, teacher_width, student_depth, student_width, teacher_epochs, student_epochs: CIFAR ResNets.
        batch_size, lr, weight_decay: AdamW with a cosine schedule, for every model.
        augment: flips and shifts (grouped.training_augmentation) for every model (without them, the upsampled
            minority images of the group-balanced teacher are memorised within a few epochs).
        temperature, soft_weight: the distillation loss (soft_weight 1: soft targets only, as in the DeDiER code).
        seeds: model seeds; every table is mean +- std over them.
        probe_rows, probe_grid: fitting rows of each linear probe; the side of the grid each stage is pooled to
            (1 would be global pooling, which keeps a colour and loses a shape).
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
    probe_grid: int = 2
    mode: str = "full"


# What decides each model (its checkpoint key); the rest (NOT_DECIDING) only decides what is measured or shown.
TRAINING_FIELDS = ("dataset", "n_train", "n_val", "image_size", "p_corr", "data_seed", "batch_size", "lr", "weight_decay", "augment")
TEACHER_FIELDS = TRAINING_FIELDS + ("teacher_depth", "teacher_width", "teacher_epochs")
STUDENT_FIELDS = TRAINING_FIELDS + ("student_depth", "student_width", "student_epochs", "temperature", "soft_weight")
NOT_DECIDING = ("n_test", "seeds", "probe_rows", "probe_grid", "mode")

SMOKE_CONFIG = SpuriousConfig(n_train=800, n_val=300, n_test=600, image_size=16, teacher_depth=8, teacher_width=16, student_depth=8,
                              student_width=8, teacher_epochs=3, student_epochs=3, lr=3e-3, seeds=(0, 1), probe_rows=300, mode="smoke")
# Full mode sized for a 2-core laptop CPU (a shared one: about 20 minutes): half of Waterbirds' split sizes (its
# group proportions) at 16 pixels, a ResNet-8 (width 16) teacher and a ResNet-8 (width 8) student, 12 epochs each
# at a higher peak learning rate, 5 seeds. SpuriousConfig() itself (Waterbirds' sizes at 32 pixels, a ResNet-20
# width 32 teacher, 30 epochs) is the GPU-sized run.
FULL_CONFIG = SpuriousConfig(n_train=2400, n_val=600, n_test=2400, image_size=16, teacher_depth=8, teacher_width=16, student_depth=8,
                             student_width=8, teacher_epochs=12, student_epochs=12, lr=2e-3)


def config(mode: str | None = None) -> SpuriousConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


def load_splits(cfg: SpuriousConfig) -> dict[str, GroupedData]:
    """The train, val and test splits of cfg.dataset at cfg's sizes (kdteach.data.grouped.load_splits)."""
    return grouped.load_splits(cfg.dataset, {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test},
                               image_size=cfg.image_size, p_corr=cfg.p_corr, seed=cfg.data_seed)


def augmentation(cfg: SpuriousConfig):
    """The training augmentation of a configuration (None when cfg.augment is off)."""
    return grouped.training_augmentation(cfg.dataset, cfg.image_size) if cfg.augment else None


def checkpoint(cfg: SpuriousConfig, model: str, seed: int) -> Path:
    """Where a model (a key of MODEL_NAMES) of a seed is kept: keyed by the fields that decide it (TEACHER_FIELDS or
    STUDENT_FIELDS), the selection rule and the seed; a distilled student's key holds its teacher's."""
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {tuple(MODEL_NAMES)}, got {model!r}")
    if model.startswith("teacher"):
        return common.checkpoint_path("spurious", model, common.fields_of(cfg, TEACHER_FIELDS), SELECT_BY, seed)
    teacher = checkpoint(cfg, model.replace("student_kd", "teacher"), seed).stem if model != "student_alone" else None
    return common.checkpoint_path("spurious", model, common.fields_of(cfg, STUDENT_FIELDS), teacher, SELECT_BY, seed)


def _seed_model(seed: int, role: str) -> None:
    # Each model's initialisation depends on (seed, role) only, not on what ran before it: a teacher loaded from
    # the cache leaves the random state where a trained one would not, and the students must not notice.
    torch.manual_seed(int(np.random.SeedSequence([seed, zlib.crc32(role.encode())]).generate_state(1)[0]))


def train_or_load_model(cfg: SpuriousConfig, model: str, seed: int, *, splits: dict[str, GroupedData] | None = None,
                        device: torch.device | str = "cpu", progress: bool = True) -> tuple[CifarResNet, History]:
    """Trains one of the five models (a key of MODEL_NAMES), or reloads it from its checkpoint (at once when finished).

    Teachers train on shuffled ("teacher_erm") or group-balanced ("teacher_balanced") batches; students alone with
    cross-entropy, or distilled from that seed's teacher (soft targets at T). With augmentation the teacher runs on
    every augmented batch (cached logits would describe other images); without, its logits are computed once.

    Args:
        cfg, model, seed: the configuration, which model, its seed (initialisation and batch order).
        splits: load_splits(cfg), if already loaded.
        device, progress: where to train; progress bars.

    Returns:
        (the model in eval mode with its selected epoch's weights, its History).
    """
    path = checkpoint(cfg, model, seed)
    splits = splits or load_splits(cfg)
    train, fit_kwargs, extra = splits["train"], {}, None
    if model.startswith("student_kd"):
        teacher, _ = train_or_load_model(cfg, model.replace("student_kd", "teacher"), seed, splits=splits, device=device, progress=progress)
        if not cfg.augment:
            extra = {"teacher_logits": cache_teacher_logits(teacher, train.batches(512, device=device))}
        fit_kwargs["loss_fn"] = KDLoss(temperature=cfg.temperature, soft_weight=cfg.soft_weight, teacher=teacher if cfg.augment else None)
    is_teacher = model.startswith("teacher")
    # The same initialisation for every student of a seed, with and without a teacher: a paired comparison.
    _seed_model(seed, model.replace("_", "-") if is_teacher else "student")
    depth, width = (cfg.teacher_depth, cfg.teacher_width) if is_teacher else (cfg.student_depth, cfg.student_width)
    net = resnet_cifar(depth, width, train.num_classes, train.images.shape[1]).to(device)
    batches = train.batches(cfg.batch_size, device=device, shuffle=True, balanced=model == "teacher_balanced", seed=seed,
                            extra=extra, augment=augmentation(cfg))
    epochs = cfg.teacher_epochs if is_teacher else cfg.student_epochs
    history = common.train_or_load_adamw(net, batches, path=path, epochs=epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device,
                                         progress=progress, desc=f"{MODEL_NAMES[model]} (seed {seed})", select=common.SELECTION,
                                         metrics=common.selection_metrics(splits["val"], batches, by=SELECT_BY),
                                         channels_last=torch.device(device).type == "cuda", **fit_kwargs)
    return net.eval(), history


@dataclass(frozen=True)
class ModelRun:
    """One trained model of one seed: which model (a key of MODEL_NAMES), the epoch kept (1-based), its test scores."""

    model: str
    seed: int
    epoch_kept: int
    test: GroupMetrics


def run_seed(cfg: SpuriousConfig, seed: int, splits: dict[str, GroupedData], *, device: torch.device | str = "cpu",
             progress: bool = True) -> tuple[list[ModelRun], dict[str, nn.Module]]:
    """The five models of one seed, scored on test: (one ModelRun per model in MODEL_NAMES order, {key: model})."""
    trained = {key: train_or_load_model(cfg, key, seed, splits=splits, device=device, progress=progress) for key in MODEL_NAMES}
    counts = splits["train"].group_counts()
    runs = [ModelRun(key, seed, history.best_epoch + 1, common.score_groups(model, splits["test"], counts)) for key, (model, history) in trained.items()]
    return runs, {key: model for key, (model, _) in trained.items()}


@dataclass(frozen=True)
class SpuriousResult:
    """Everything run_experiment measured: one ModelRun per (model, seed); probes: model name -> StageProbes of the
    first seed's PROBED models ({} without probes); the test groups' names; wall seconds. (Models stay in the cache.)"""

    config: SpuriousConfig
    runs: tuple[ModelRun, ...]
    probes: dict[str, tuple[StageProbe, ...]]
    group_names: tuple[str, ...]
    seconds: float

    def per_seed(self, model: str, metric: str = "worst_group") -> dict[int, float]:
        """{seed: a GroupMetrics attribute} of one model (a key of MODEL_NAMES), for report.paired_comparison."""
        return {r.seed: float(getattr(r.test, metric)) for r in self.runs if r.model == model}

    def by_model(self) -> dict[str, list[GroupMetrics]]:
        """Model name -> its GroupMetrics, one per seed (for plots.plot_group_accuracies)."""
        return {name: [r.test for r in self.runs if r.model == key] for key, name in MODEL_NAMES.items()}

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per model: mean ± std over seeds (in %) of the train-weighted average, the worst group and each group."""
        rows = []
        for key, name in MODEL_NAMES.items():
            mine = [r for r in self.runs if r.model == key]
            row: dict[str, Any] = {"model": name, "epochs kept": ", ".join(str(r.epoch_kept) for r in mine)}
            row["average (train-weighted)"] = report.mean_std([r.test.average_train_weighted for r in mine], scale=100)
            row["worst-group"] = report.mean_std([r.test.worst_group for r in mine], scale=100)
            row.update({g: report.mean_std([r.test.per_group[i] for r in mine], scale=100) for i, g in enumerate(self.group_names)})
            row["competent (seeds)"] = f"{sum(self.competence(r).competent for r in mine)}/{len(mine)}"
            rows.append(row)
        return rows

    def competence(self, run: ModelRun) -> Competence:
        """The competence gate on one model's test groups: clearly above the constant and background rules."""
        return competence(run.test.per_group, shortcut_rules(2, len(self.group_names) // 2))

    def seed_rows(self) -> list[dict[str, Any]]:
        """One row per model and seed: test accuracy per group (%), mean over groups, and the competence gate's verdict
        (a constant or background rule is named): what the means over seeds hide."""
        rows = []
        for r in self.runs:
            row: dict[str, Any] = {"model": MODEL_NAMES[r.model], "seed": r.seed, "epoch kept": r.epoch_kept}
            row.update({g: f"{100 * a:.1f}" for g, a in zip(self.group_names, r.test.per_group)})
            row["mean over groups"] = f"{100 * r.test.mean_over_groups:.1f}"
            row["gate"] = self.competence(r).label()
            rows.append(row)
        return rows

    def table(self) -> str:
        """The summary as Markdown, headed by the average convention and the selection rule it uses."""
        return (f"Test accuracy in %, mean ± std over seeds {list(self.config.seeds)}; epochs kept by validation mean over "
                f"groups. average (train-weighted): {AVERAGE_CONVENTIONS['train']}.\n\n" + report.markdown_table(self.summary_rows()))


def run_experiment(cfg: SpuriousConfig, *, device: torch.device | str = "cpu", splits: dict[str, GroupedData] | None = None,
                   probes: bool = True, progress: bool = True) -> SpuriousResult:
    """Every seed of notebook 02's table (cfg.seeds), plus linear probes on the first seed's models (probes=True);
    splits: load_splits(cfg) if already loaded. Returns a SpuriousResult."""
    if not cfg.seeds:
        raise ValueError("cfg.seeds is empty")
    started = time.perf_counter()
    splits = splits or load_splits(cfg)
    runs, first = [], {}
    for i, seed in enumerate(cfg.seeds):
        seed_runs, models = run_seed(cfg, seed, splits, device=device, progress=progress)
        runs += seed_runs
        first = models if i == 0 else first
    probe_rows = {MODEL_NAMES[key]: probe_stages(first[key], splits["val"], splits["test"], max_rows=cfg.probe_rows, grid=cfg.probe_grid)
                  for key in PROBED} if probes else {}
    return SpuriousResult(cfg, tuple(runs), probe_rows, tuple(splits["test"].group_names), time.perf_counter() - started)


# Findings: a difference between two models is decided by paired_comparison over seeds; a probe's stage is one seed's
# description against a stated threshold.


def spurious_findings(result: SpuriousResult) -> list[str]:
    """Notebook 02's findings from a SpuriousResult: each distilled student against its teacher and against the
    student trained alone (PAIRS), on test worst-group accuracy."""
    values = {key: result.per_seed(key) for key in MODEL_NAMES}
    lines = [smoke_note(result.config.mode)] if result.config.mode == "smoke" else []
    gates = {key: {r.seed: result.competence(r) for r in result.runs if r.model == key} for key in MODEL_NAMES}
    degenerate = {key: [seed for seed, gate in gates[key].items() if not gate.competent] for key in MODEL_NAMES}
    failing = [f"{MODEL_NAMES[key]} (seeds {seeds})" for key, seeds in degenerate.items() if seeds]
    lines.append(f"Competence gate: {sum(not v for v in degenerate.values())} of {len(MODEL_NAMES)} models are clearly above the "
                 f"shortcut rules in every seed (mean over groups above the best rule's by {COMPETENCE_MARGIN:.0%})"
                 + (f"; degenerate: {', '.join(failing)}." if failing else "."))
    # A pair with a degenerate model in some seed reads "degenerate model, no verdict" (report.comparison_sentence).
    return lines + paired_findings(values, PAIRS, what="test worst-group accuracy", names=MODEL_NAMES, bounds=FRACTION_DIFFERENCE,
                                   competences=gates)


def probe_findings(probes: Mapping[str, Sequence[StageProbe]], *, threshold: float = 0.9) -> list[str]:
    """Per model, the first stage whose linear probe reaches `threshold` balanced accuracy, for the spurious attribute
    and for the label (StageProbe rows of one seed: a description of that seed, not a comparison)."""
    lines = []
    for name, rows in probes.items():
        parts = []
        for target, words in (("spurious", "the spurious attribute"), ("label", "the label")):
            first = next((r.stage for r in rows if getattr(r, target) >= threshold), None)
            best = max(rows, key=lambda r: getattr(r, target))
            where = f"from {first} on" if first else f"at no stage (best {getattr(best, target):.1%} at {best.stage})"
            parts.append(f"{words} reaches {threshold:.0%} balanced accuracy {where}")
        lines.append(f"{name} (one seed): " + "; ".join(parts) + ".")
    return lines


def run(mode: str = "full", out: str | Path | None = None, seed: int = 0, progress: bool = True) -> SpuriousResult:
    """`python -m kdteach spurious`: the table, findings and figures of a mode ("full" or "smoke") written to out
    (None: nothing written), over as many consecutive seeds from `seed` as the mode's configuration has."""
    base = config(mode)
    cfg = replace(base, seeds=tuple(seed + i for i in range(len(base.seeds))))
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    result = run_experiment(cfg, device=device, progress=progress)
    lines = spurious_findings(result) + probe_findings(result.probes)
    print("\n".join(lines))
    if out is not None:
        figures = {"spurious_groups": plot_group_accuracies(result.by_model())}
        if result.probes:
            figures["spurious_probes"] = plot_probes(result.probes)
        meta = {"mode": mode, **report.provenance(experiment="spurious", config=cfg, seeds=cfg.seeds, wall_seconds=result.seconds, device=str(device)),
                "title": "Notebook 02: spurious correlations and distillation", "average": AVERAGE_CONVENTIONS["train"], "findings": lines,
                "selection": "each run keeps the epoch with the best validation mean-over-groups accuracy (ties: the later)"}
        report.write_report(out, "spurious", rows=result.summary_rows(), meta=meta, figures=figures, result=result,
                            title="Notebook 02: spurious correlations and distillation")
        report.write_report(out, "spurious_seeds", rows=result.seed_rows(), meta=meta,
                            title="Every model, seed by seed: test accuracy per group (%) and the competence gate")
    return result
