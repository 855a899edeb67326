"""Notebook 07, the capstone: one distilled multi-exit student, both papers. Its early readout is its first exit.

DeDiER trusts an early readout of the student to find the examples it gets wrong for the wrong reason; Jazbec et
al. trust the student's early exits to give prediction sets that stay valid as computation goes on. Here one
multi-exit student (exits after layer1, layer2 and the pooled features) is distilled from a debiased teacher three
ways, every seed from the same initial weights (a paired comparison):

- "KD": every exit distils from the teacher (the mean over exits of notebook 03's KD loss);
- "DeDiER, detached readout": the same loss, reweighted by DeDiER's weights from a readout on layer1 that is
  retrained on the student's frozen features after every epoch (as in notebook 03: it learns nothing into the student);
- "DeDiER, exit 1": the same, with the weights read off the student's own first exit, trained jointly with it.

Two datasets (DATASETS):
- "colored_digits_10": ten digit classes, each painted in its own colour in most training images and in a random other
  colour otherwise (the "biased MNIST" construction of Bahng et al., ICML 2020), colour independent of the class in
  validation and test; two groups, bias-aligned (colour = the digit's colour) and bias-conflicting. Ten classes let
  a set hold anything from no label to ten, so its size says how unsure a model is.
- "waterbirds_like": notebook 02's two-class stand-in, its four groups. With two classes a set is empty, one label or
  both, so its size carries little (see the report's sentence on two classes).

The students follow notebook 03's recipe (dedier.config(mode): the ResNet, epochs, optimiser, augmentation, T,
DeDiER's weights) and keep their LAST epoch, which is after DeDiER's first reweighting (checked in train_student), so
no validation group label picks anything. On the test split, per exit and per group: accuracy (and whether the exit
has learned the task: kdteach.report's competence check), and four kinds of sets, each calibrated on random
calibration splits of the test set and measured on the rest (kdteach.experiments.capstone_sets). The teacher's sets
(one exit) are measured on the same splits. The tables and sentences are in kdteach.experiments.capstone_report.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdteach import checks
from kdteach.data.grouped import GroupedData, colored_digits, training_augmentation
from kdteach.data.mnist import load_mnist_or_standin
from kdteach.debias import DeDiERReweighting, student_left_as_is, teacher_features
from kdteach.distill import KDLoss, cache_teacher_logits
from kdteach.exits import MultiExit, exit_logits
from kdteach.groups import group_metrics
from kdteach.experiments import common, dedier
from kdteach.experiments.capstone_sets import SET_METHODS, ModelOutcome, measure
from kdteach.models.resnet import resnet_cifar
from kdteach.train import predict

VARIANTS = ("KD", "DeDiER, detached readout", "DeDiER, exit 1")
EXITS = ("layer1", "layer2", "pooled")  # the last exit is the student's own classifier on pooled features
DIGITS = "colored_digits_10"
DATASETS = (DIGITS, "waterbirds_like")
DIGIT_GROUPS = ("colour agrees with the digit (aligned)", "colour disagrees (conflicting)")

__all__ = ["VARIANTS", "EXITS", "DIGITS", "DATASETS", "SET_METHODS", "CapstoneConfig", "SMOKE_CONFIG", "FULL_CONFIG", "config",
           "MultiExitKDLoss", "ExitReadout", "digits_data", "prepare", "group_of", "shortcut_rules", "multi_exit_student", "train_student", "ModelOutcome",
           "DatasetResult", "run_dataset", "CapstoneResult", "run"]


@dataclass(frozen=True)
class CapstoneConfig:
    """What the capstone adds to notebook 03's student recipe (dedier.config() of the same mode supplies the
    student's depth and width, epochs, optimiser, augmentation, T, soft weight, DeDiER's weights, the readout and
    start_after; notebook 02's configuration supplies waterbirds_like's data and teacher).

    Attributes:
        mode: "smoke" or "full" (also picks notebook 03's configuration).
        datasets: what to run, in order (DATASETS).
        digits_sizes: colored_digits_10's (train, val, test) sizes.
        digits_p_corr: P(a training digit wears its own colour); the rest wear one of the nine others at random.
        digits_image_size: the digits are average-pooled from 28 to this side (14: a quarter of the compute).
        digits_augment: shifts for colored_digits_10's students (off: the teacher's logits are computed once, which
            halves a student's time; waterbirds_like's students follow notebook 03's recipe, dedier.config().augment).
        teacher_width, teacher_epochs: colored_digits_10's debiased teacher (a ResNet of the student's depth, trained
            on batches balanced over the two groups, notebook 02's group-balanced recipe).
        head_pool: the early exits' heads read their stage average-pooled to head_pool x head_pool cells.
        miscoverage: every set's target miscoverage (the sets aim at coverage 1 - miscoverage; it is not DeDiER's
            margin exponent, which is dedier.config().alpha).
        calib_fraction, splits: the calibration share of the test split, and how many random splits per model.
        avcs_draws, avcs_start: AVCS's threshold rule (notebook 06's).
        dedier_exponent, dedier_scale: DeDiER's weights exp(scale * margin ** exponent) on readout errors (the paper's
            alpha and beta): notebook 03's choice on waterbirds_like's VALIDATION worst-group accuracy
            (dedier.choose_setting: (1, 2) against the paper's (0.05, 4), which over-corrected there); not chosen
            again here, which would cost twelve more students per dataset.
        seeds, few_seeds: student seeds of colored_digits_10 and of waterbirds_like.
    """

    mode: str = "full"
    datasets: tuple[str, ...] = DATASETS
    digits_sizes: tuple[int, int, int] = (3000, 1000, 3000)
    digits_p_corr: float = 0.8
    digits_image_size: int = 14
    digits_augment: bool = False
    teacher_width: int = 16
    teacher_epochs: int = 12
    head_pool: int = 4
    miscoverage: float = 0.1
    calib_fraction: float = 0.3
    splits: int = 10
    avcs_draws: int = 10
    avcs_start: float = 0.25
    dedier_exponent: float = 1.0
    dedier_scale: float = 2.0
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    few_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # five on waterbirds_like too: the floor for every student


SMOKE_CONFIG = CapstoneConfig(mode="smoke", digits_sizes=(600, 200, 600), teacher_epochs=3, splits=3, seeds=(0,), few_seeds=(0,))
# Sized for the 2-core CPU (at most 20 minutes with nothing else running): see the measured times in the report.
FULL_CONFIG = CapstoneConfig()
# What decides a student, besides the prepared data and teacher (Prepared.key), the variant and the seed.
STUDENT_FIELDS = dedier.STUDENT_FIELDS + dedier.READOUT_FIELDS + ("readout_stage",)
# What decides colored_digits_10's data and teacher (the teacher's checkpoint key, and so every student's).
DIGITS_FIELDS = ("digits_sizes", "digits_p_corr", "digits_image_size", "teacher_width", "teacher_epochs")
# head_pool and digits_augment decide the students too (with prepare()'s augment in their key); the rest decides
# what is measured, not a model (a test checks that every field is named in one of these lists).
STUDENT_ONLY_FIELDS = ("head_pool", "digits_augment", "dedier_exponent", "dedier_scale")
NOT_DECIDING = ("mode", "datasets", "miscoverage", "calib_fraction", "splits", "avcs_draws", "avcs_start", "seeds", "few_seeds")


def config(mode: str | None = None) -> CapstoneConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


class MultiExitKDLoss:
    """fit()'s loss for a multi-exit student: the mean over exits of one KDLoss (the teacher's logits and, for
    DeDiER, the same instance weights at every exit)."""

    def __init__(self, kd: KDLoss) -> None:
        self.kd = kd

    def __call__(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if outputs.dim() != 3:
            raise ValueError(f"outputs must have shape (exits, N, C) (a MultiExit model), got {tuple(outputs.shape)}")
        if "teacher_logits" not in batch and self.kd.teacher is not None:
            # Augmented batches carry no cached logits: run the teacher once for all exits, not once per exit.
            batch = {**batch, "teacher_logits": self.kd.teacher_logits(batch)}
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


def digits_data(split: str, n: int, *, p_corr: float, image_size: int) -> GroupedData:
    """One split of colored_digits_10: colored_digits(num_classes=10) regrouped into bias-aligned (group 0: the digit
    wears its own colour) and bias-conflicting (group 1), average-pooled to image_size pixels.

    The two groups are what a reader can read in a table (a hundred digit x colour groups are not); the class is
    still in the labels, for per-class numbers. Training: p_corr aligned; validation and test: colour independent of
    the digit, so one test image in ten is aligned.

    Args:
        split: "train", "val" or "test".
        n: images (a seeded subset of MNIST's split; where MNIST is absent and cannot be downloaded, of scikit-learn's
            digits, whose split is used whole where it holds fewer than n).
        p_corr: P(aligned) in training, in [0.1, 1].
        image_size: side after pooling; must divide 28.

    Returns:
        GroupedData with 2 groups, 10 classes, the colour as the spurious attribute.
    """
    checks.check_int("image_size", image_size, minimum=4)
    if 28 % image_size:
        raise ValueError(f"image_size must divide 28 (the digits are pooled by an integer factor), got {image_size}")
    # MNIST, downloaded first in full mode where it is absent and can be; where it cannot, scikit-learn's digits, said
    # once. Those hold 1,198 / 239 / 360 images in train / val / test, fewer than the capstone's sizes, so such a split
    # is used whole. (One call decides both, so an offline machine waits for one network probe per split, not two.)
    if len(load_mnist_or_standin("test", verbose=False)[1]) != 10_000:
        n = min(n, len(colored_digits(split, None, num_classes=10, p_corr=p_corr, seed=0).labels))
    data = colored_digits(split, n, num_classes=10, p_corr=p_corr, seed=0)
    images = data.images if image_size == 28 else F.avg_pool2d(data.images.float(), 28 // image_size).round().to(torch.uint8)
    return replace(data, images=images, groups=(data.spurious != data.labels).long(), num_groups=2, group_names=list(DIGIT_GROUPS),
                   name=data.name.replace("colored_digits", DIGITS))


def _digits_teacher(cfg: CapstoneConfig, dcfg: dedier.DeDiERConfig, splits: dict[str, GroupedData], device: torch.device,
                    progress: bool) -> tuple[nn.Module, str]:
    # Debiased as notebook 02's group-balanced teacher: every batch half aligned, half conflicting (sampled with
    # replacement), flips off and shifts on, AdamW with a cosine schedule; its last epoch is kept.
    path = common.checkpoint_path("capstone", "teacher-digits", common.fields_of(cfg, DIGITS_FIELDS),
                                  common.fields_of(dcfg, ("student_depth", "batch_size", "lr", "weight_decay")))
    torch.manual_seed(0)
    teacher = resnet_cifar(dcfg.student_depth, cfg.teacher_width, 10, 3).to(device)
    batches = splits["train"].batches(dcfg.batch_size, device=device, balanced=True, seed=0,
                                      augment=training_augmentation("colored_digits", cfg.digits_image_size))
    common.train_or_load_adamw(teacher, batches, path=path, epochs=cfg.teacher_epochs, lr=dcfg.lr, weight_decay=dcfg.weight_decay,
                               device=device, progress=progress, desc=f"teacher ({DIGITS})")
    return teacher.eval(), path.stem


def prepare(dataset: str, cfg: CapstoneConfig, dcfg: dedier.DeDiERConfig, device: torch.device | str, *, progress: bool = True) -> dedier.Prepared:
    """A dataset of DATASETS and its debiased teacher, as notebook 03's dedier.Prepared (trained or reloaded).

    waterbirds_like is notebook 03's own (dedier.prepare: notebook 02's data and group-balanced teacher);
    colored_digits_10 is made here (digits_data) with its teacher (_digits_teacher).
    """
    if dataset == "waterbirds_like":
        return dedier.prepare(dataset, dcfg, device, progress=progress)
    if dataset != DIGITS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    device = torch.device(device)
    splits = {split: digits_data(split, n, p_corr=cfg.digits_p_corr, image_size=cfg.digits_image_size)
              for split, n in zip(("train", "val", "test"), cfg.digits_sizes)}
    teacher, key = _digits_teacher(cfg, dcfg, splits, device, progress)
    train, ordered = splits["train"], splits["train"].batches(512, device=device)
    return dedier.Prepared(name=DIGITS, train=train, val=splits["val"], test=splits["test"], teacher=teacher,
                           teacher_test=common.score_groups(teacher, splits["test"], train.group_counts()),
                           teacher_logits=cache_teacher_logits(teacher, ordered), teacher_features=teacher_features(teacher, ordered),
                           augment=training_augmentation("colored_digits", cfg.digits_image_size) if cfg.digits_augment else None,
                           key=key, device=device)


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

    With dcfg.augment the student sees notebook 02's flips and shifts and the teacher runs on every (augmented)
    batch; without, the teacher's cached logits are the soft targets. The last epoch is kept: for DeDiER it comes
    after the first reweighting (dcfg.epochs > dcfg.start_after is checked), so no plain-KD epoch is counted as DeDiER.

    Args:
        variant: "KD", "DeDiER, detached readout" or "DeDiER, exit 1".
        prep: prepare()'s data and teacher.
        dcfg, cfg: notebook 03's configuration (the recipe) and the capstone's.
        seed, progress: the seed of the weights and of the shuffling; progress bars.

    Returns:
        The trained MultiExit.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant != "KD" and dcfg.epochs <= dcfg.start_after:
        raise ValueError(f"dcfg.epochs ({dcfg.epochs}) must exceed dcfg.start_after ({dcfg.start_after}): the last epoch kept "
                         "would be plain KD, before DeDiER's first reweighting")
    model = multi_exit_student(prep, dcfg, cfg, seed)
    extra = {} if prep.augment is not None else {"teacher_logits": prep.teacher_logits}
    train = prep.train.batches(dcfg.batch_size, device=prep.device, shuffle=True, seed=seed, extra=extra, augment=prep.augment)
    reweighting = None
    if variant != "KD":
        readout = (dedier.early_readout(dcfg, dcfg.readout_stage, prep, seed) if variant == "DeDiER, detached readout"
                   else ExitReadout(0, EXITS[0]))
        reweighting = DeDiERReweighting(model, readout, train, alpha=cfg.dedier_exponent, beta=cfg.dedier_scale, start_after=dcfg.start_after)
        # The one rule for which epochs a DeDiER student may keep; the last epoch (the one kept) must be among them.
        assert dcfg.epochs - 1 >= reweighting.first_reweighted_epoch
    kd = KDLoss(temperature=dcfg.temperature, soft_weight=dcfg.soft_weight, instance_weights=reweighting,
                teacher=prep.teacher if prep.augment is not None else None)
    path = common.checkpoint_path("capstone", f"{prep.name}-{variant}", prep.key, common.fields_of(dcfg, STUDENT_FIELDS), EXITS,
                                  cfg.head_pool, prep.augment is not None, (cfg.dedier_exponent, cfg.dedier_scale) if variant != "KD" else None, seed)
    common.train_or_load_adamw(model, train, path=path, epochs=dcfg.epochs, lr=dcfg.lr, weight_decay=dcfg.weight_decay, device=prep.device,
                               progress=progress, desc=f"{variant} ({prep.name}, seed {seed})", loss_fn=MultiExitKDLoss(kd),
                               on_epoch_end=reweighting)
    return model.eval()


@dataclass(frozen=True)
class DatasetResult:
    """One dataset: its groups (and which are bias-conflicting: the spurious attribute disagrees with the label),
    classes, the exits' names, the seeds, every model's outcomes (the teacher's with each student seed's splits),
    the test examples per group, the shortcut rules' test accuracy per group (shortcut_rules: what a model must be
    clearly above to have learned the task), and DeDiER's weights' exponent and scale."""

    dataset: str
    group_names: tuple[str, ...]
    conflicting: tuple[int, ...]
    class_names: tuple[str, ...]
    exits: tuple[str, ...]
    seeds: tuple[int, ...]
    outcomes: tuple[ModelOutcome, ...]
    test_counts: tuple[int, ...]
    shortcuts: dict[str, tuple[float, ...]]
    dedier_exponent: float
    dedier_scale: float


def group_of(dataset: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The group of an (example, label) pair from the label and the example's spurious attribute, elementwise: what
    group-conditional conformal needs for every candidate label of a test example (its attribute is observed, its
    label is not). colored_digits_10: 0 if the label is the colour's digit (aligned), else 1; waterbirds_like:
    2 * label + background.

    Args:
        dataset: one of DATASETS.

    Returns:
        (labels, attribute) -> group ids, for tensors of one shape.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == DIGITS:
        return lambda labels, attribute: (labels != attribute).long()
    return lambda labels, attribute: labels * 2 + attribute  # waterbirds_like: label x background


def shortcut_rules(data: GroupedData) -> dict[str, tuple[float, ...]]:
    """The per-group test accuracy of the rules that need no object at all (kdteach.groups.competence's input): one
    constant label per class, "the label is the spurious attribute" (the colour rule of colored_digits_10, the
    background rule of waterbirds_like) and, with two classes, its inverse. Measured on the split itself, so they
    fit any grouping.

    Args:
        data: a split (the attribute values are label indices in both stand-ins).

    Returns:
        {rule: accuracy per group}.
    """
    def per_group(preds: torch.Tensor) -> tuple[float, ...]:
        return tuple(float(a) for a in group_metrics(preds, data.labels, data.groups, data.num_groups).per_group)

    attribute = "colour" if data.name.startswith(DIGITS) else "background"
    rules = {f"constant: always {name}": per_group(torch.full_like(data.labels, c)) for c, name in enumerate(data.class_names)}
    rules[f"{attribute} rule"] = per_group(data.spurious)
    if data.num_classes == 2:
        rules[f"inverted {attribute} rule"] = per_group(1 - data.spurious)
    return rules


def run_dataset(dataset: str, cfg: CapstoneConfig, device: torch.device | str, *, seeds: tuple[int, ...] | None = None,
                progress: bool = True) -> DatasetResult:
    """The teacher and every variant's student at every seed on one dataset, measured on its test split.

    Args:
        dataset: one of DATASETS.
        cfg, device: the configuration; where to train.
        seeds: the student seeds (default cfg.seeds for colored_digits_10, cfg.few_seeds for waterbirds_like).
        progress: progress bars.

    Returns:
        DatasetResult.
    """
    dcfg = dedier.config(cfg.mode)
    seeds = tuple(seeds if seeds is not None else (cfg.seeds if dataset == DIGITS else cfg.few_seeds))
    prep = prepare(dataset, cfg, dcfg, device, progress=progress)
    test, ordered = prep.test, prep.test.batches(512, device=prep.device)
    pair_group = group_of(dataset)
    if not torch.equal(pair_group(test.labels, test.spurious), test.groups):
        raise AssertionError(f"{dataset}: the groups are not a function of label and attribute as group_of says")
    args = dict(labels=test.labels, attribute=test.spurious, groups=test.groups, num_groups=test.num_groups, group_of=pair_group, cfg=cfg, dataset=dataset)
    teacher_logits = predict(prep.teacher, ordered)[None]
    outcomes = []
    for seed in seeds:
        outcomes.append(measure(teacher_logits, model="teacher", seed=seed, **args))
        for variant in VARIANTS:
            student = train_student(variant, prep, dcfg, cfg, seed=seed, progress=progress)
            outcomes.append(measure(exit_logits(student, ordered), model=variant, seed=seed, **args))
    conflicting = tuple(g for g in range(test.num_groups) if bool((test.spurious != test.labels)[test.groups == g].all()))
    counts = tuple(int((test.groups == g).sum()) for g in range(test.num_groups))
    return DatasetResult(dataset, tuple(test.group_names), conflicting, tuple(test.class_names), EXITS, seeds, tuple(outcomes), counts,
                         shortcut_rules(test), cfg.dedier_exponent, cfg.dedier_scale)


@dataclass(frozen=True)
class CapstoneResult:
    """Everything run() measured: the configuration, one DatasetResult per dataset, seconds per dataset, and the
    wall time."""

    config: CapstoneConfig
    datasets: tuple[DatasetResult, ...]
    dataset_seconds: tuple[float, ...]
    seconds: float
