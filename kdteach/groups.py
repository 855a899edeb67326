"""Group ids, per-group accuracy, worst-group accuracy and the named "average accuracy" conventions.

A group is a (label, spurious attribute) pair: on Waterbirds, group = 2 * label + background, so the groups are
landbird on land, landbird on water, waterbird on land, waterbird on water. A model that reads the background
instead of the bird is right on the two large groups and wrong on the two small ones, which the plain average
hides and the worst group shows.

Three numbers are all called "average accuracy" in the literature, and they differ a lot on a test set whose
group proportions differ from training (Waterbirds' test backgrounds are balanced, its training ones are not):

    weighting="train"    sum_g acc_g * n_train_g / sum_g n_train_g   (test groups weighted by TRAINING proportions;
                                                                      the Waterbirds convention)
    weighting="test"     plain accuracy over test examples            (test groups weighted by test proportions)
    weighting="uniform"  mean_g acc_g                                  (every non-empty group counts the same)

Overlapping groups (CivilComments: one comment can mention several identities) are given as a boolean
membership matrix of shape (N, G) instead of a vector of group ids; an example then counts in every group it
belongs to, and "test" weighting stays the plain accuracy over examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from kdteach import checks

if TYPE_CHECKING:
    from kdteach.data.batches import Batches

__all__ = [
    "AVERAGE_CONVENTIONS",
    "GroupAccuracy",
    "group_ids",
    "group_counts",
    "group_accuracy",
    "worst_group_accuracy",
    "average_accuracy",
    "GroupMetrics",
    "group_metrics",
]

# weighting -> the words a printed table uses for it.
AVERAGE_CONVENTIONS = {
    "train": "average accuracy, test groups weighted by training group proportions (Waterbirds convention)",
    "test": "average accuracy over test examples (test group proportions)",
    "uniform": "average accuracy, mean over groups (each group counts the same)",
}

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]


class GroupAccuracy(NamedTuple):
    """Per-group accuracy and counts.

    Attributes:
        accuracy: (G,) float64; NaN for a group with no examples.
        counts: (G,) int64; examples in each group.
    """

    accuracy: np.ndarray
    counts: np.ndarray


def _to_numpy(name: str, values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # ragged lists and other junk
        raise ValueError(f"{name} must be an array or tensor, got {type(values).__name__}") from error


def _class_predictions(preds: ArrayLike, n: int | None = None) -> np.ndarray:
    # Logits or probabilities (N, C) become class ids; class ids (N,) pass through.
    array = _to_numpy("preds", preds)
    if array.ndim == 2:
        if np.issubdtype(array.dtype, np.floating):
            # argmax of a NaN row is 0 (numpy) or the NaN's index (torch): an answer nobody predicted.
            checks.check_finite("preds", torch.from_numpy(np.ascontiguousarray(array)), check_values=True)
        array = array.argmax(axis=1)
    if array.ndim != 1:
        raise ValueError(f"preds must be class ids (N,) or scores (N, C), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"preds must hold integer class ids when 1-D, got dtype {array.dtype}")
    return array.astype(np.int64)


def _membership(groups: ArrayLike, num_groups: int | None, n: int) -> np.ndarray:
    """Returns a boolean (N, G) membership matrix from group ids (N,) or a membership matrix (N, G)."""
    array = _to_numpy("groups", groups)
    if len(array) != n:
        raise ValueError(f"groups has {len(array)} rows but preds and labels have {n}")
    if array.ndim == 2:
        if array.dtype != bool and not np.isin(array, (0, 1)).all():
            raise ValueError("groups given as a (N, G) membership matrix must be boolean (or 0/1)")
        if num_groups is not None and num_groups != array.shape[1]:
            raise ValueError(f"num_groups is {num_groups} but the groups membership matrix has {array.shape[1]} columns")
        return array.astype(bool)
    if array.ndim != 1:
        raise ValueError(f"groups must be group ids (N,) or a boolean membership matrix (N, G), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"groups must hold integer group ids, got dtype {array.dtype}")
    if num_groups is None:
        num_groups = int(array.max()) + 1 if array.size else 0
    num_groups = checks.check_int("num_groups", num_groups, minimum=1)
    checks.check_labels("groups", torch.as_tensor(array.astype(np.int64)), None, num_groups)
    return array[:, None] == np.arange(num_groups)[None, :]


def group_ids(labels: ArrayLike, attributes: ArrayLike, num_attributes: int = 2) -> torch.Tensor:
    """Group id of each example: label * num_attributes + attribute (2 * label + attribute for binary tasks).

    Args:
        labels: (N,) class ids.
        attributes: (N,) spurious attribute ids in [0, num_attributes).
        num_attributes: how many values the attribute takes.

    Returns:
        (N,) int64 group ids.
    """
    y, a = (torch.as_tensor(v) for v in (labels, attributes))
    y, a = (v.long() if v.numel() == 0 else v for v in (y, a))  # an empty list becomes a float tensor
    if y.shape != a.shape or y.dim() != 1:
        raise ValueError(f"labels and attributes must be 1-D of the same length, got {tuple(y.shape)} and {tuple(a.shape)}")
    num_attributes = checks.check_int("num_attributes", num_attributes, minimum=1)
    checks.check_labels("labels", y, None, None)
    checks.check_labels("attributes", a, None, num_attributes)
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return y.long() * num_attributes + a.long()


def group_counts(groups: ArrayLike, num_groups: int | None = None) -> np.ndarray:
    """Examples per group.

    Args:
        groups: (N,) group ids or a boolean (N, G) membership matrix.
        num_groups: number of groups (ids must lie in [0, num_groups)); None: max id + 1.

    Returns:
        (G,) int64 counts.
    """
    n = len(_to_numpy("groups", groups))
    return _membership(groups, num_groups, n).sum(axis=0).astype(np.int64)


def group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike, num_groups: int | None = None) -> GroupAccuracy:
    """Accuracy within each group, and how many examples each group has.

    Args:
        preds: (N,) predicted class ids, or (N, C) finite logits / probabilities (argmax is taken; NaN or inf
            is refused, naming preds).
        labels: (N,) true class ids.
        groups: (N,) group ids, or a boolean (N, G) membership matrix for overlapping groups.
        num_groups: number of groups; None infers it (max id + 1, or the matrix's width).

    Returns:
        GroupAccuracy(accuracy (G,) with NaN for empty groups, counts (G,)).
    """
    y = _to_numpy("labels", labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D class ids, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("labels is empty (0 examples): there is no accuracy to compute (preds, labels and groups must have rows)")
    p = _class_predictions(preds)
    if len(p) != len(y):
        raise ValueError(f"preds has {len(p)} rows but labels has {len(y)}")
    member = _membership(groups, num_groups, len(y))
    correct = (p == y).astype(np.float64)
    counts = member.sum(axis=0).astype(np.int64)
    hits = correct @ member
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return GroupAccuracy(accuracy=accuracy, counts=counts)


def worst_group_accuracy(preds: ArrayLike, labels: ArrayLike, groups: ArrayLike, num_groups: int | None = None) -> float:
    """The lowest accuracy over the NON-EMPTY groups (the worst group can be a majority group).

    Args:
        preds, labels, groups, num_groups: as in group_accuracy.

    Returns:
        A float in [0, 1].
    """
    result = group_accuracy(preds, labels, groups, num_groups)
    if not (result.counts > 0).any():
        raise ValueError("groups: every group is empty, so there is no worst group")
    return float(np.nanmin(result.accuracy))


def average_accuracy(
    preds: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    num_groups: int | None = None,
    *,
    weighting: str = "train",
    train_group_counts: ArrayLike | None = None,
) -> float:
    """One of the three "average accuracy" conventions (see the module docstring and AVERAGE_CONVENTIONS).

    Args:
        preds, labels, groups, num_groups: as in group_accuracy.
        weighting: "train" (test group accuracies weighted by training group proportions), "test" (plain accuracy
            over examples) or "uniform" (mean over non-empty groups).
        train_group_counts: (G,) training examples per group; required for weighting="train". Groups empty in the
            evaluated data are left out and the remaining weights renormalised.

    Returns:
        A float in [0, 1].
    """
    if weighting not in AVERAGE_CONVENTIONS:
        raise ValueError(f"weighting must be one of {sorted(AVERAGE_CONVENTIONS)}, got {weighting!r}")
    result = group_accuracy(preds, labels, groups, num_groups)
    present = result.counts > 0
    if not present.any():
        raise ValueError("groups: every group is empty")
    if weighting == "test":
        p, y = _class_predictions(preds), _to_numpy("labels", labels)
        return float((p == y).mean())
    if weighting == "uniform":
        return float(result.accuracy[present].mean())
    if train_group_counts is None:
        raise ValueError('train_group_counts is required for weighting="train"')
    weights = _to_numpy("train_group_counts", train_group_counts).astype(np.float64)
    if weights.shape != result.counts.shape:
        raise ValueError(f"train_group_counts must have shape {result.counts.shape}, got {weights.shape}")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("train_group_counts must be finite and non-negative")
    weights = np.where(present, weights, 0.0)
    if weights.sum() == 0:
        raise ValueError("train_group_counts gives zero weight to every group present in the evaluated data")
    return float((np.nan_to_num(result.accuracy) * weights).sum() / weights.sum())


@dataclass(frozen=True)
class GroupMetrics:
    """Every group number of one model on one split (accuracies as fractions in [0, 1]).

    Attributes:
        per_group: accuracy of each group, in group-id order; NaN for a group with no examples.
        counts: examples in each group.
        group_names: one name per group.
        worst_group: the lowest accuracy over the non-empty groups.
        worst_group_index: which group that is (the first of equals).
        mean_over_groups: the unweighted mean over non-empty groups (weighting="uniform").
        average_test: plain accuracy over the examples (weighting="test").
        average_train_weighted: group accuracies weighted by TRAINING group proportions (weighting="train", the
            Waterbirds convention); NaN when no training counts were given.
    """

    per_group: tuple[float, ...]
    counts: tuple[int, ...]
    group_names: tuple[str, ...]
    worst_group: float
    worst_group_index: int
    mean_over_groups: float
    average_test: float
    average_train_weighted: float

    def average(self, weighting: str) -> float:
        """The average of a named convention: "train", "test" or "uniform" (see AVERAGE_CONVENTIONS)."""
        values = {"train": self.average_train_weighted, "test": self.average_test, "uniform": self.mean_over_groups}
        if weighting not in values:
            raise ValueError(f"weighting must be one of {sorted(values)}, got {weighting!r}")
        return values[weighting]

    def accuracy_of(self, name: str) -> float:
        """The accuracy of the group called name."""
        if name not in self.group_names:
            raise ValueError(f"name must be one of {list(self.group_names)}, got {name!r}")
        return self.per_group[self.group_names.index(name)]


def group_metrics(
    preds: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    num_groups: int | None = None,
    *,
    train_group_counts: ArrayLike | None = None,
    group_names: Sequence[str] | None = None,
) -> GroupMetrics:
    """Every group number of one model on one split: per-group accuracy, worst group and the three averages.

    Args:
        preds, labels, groups, num_groups: as in group_accuracy.
        train_group_counts: (G,) training counts, for average_train_weighted (NaN without them).
        group_names: names of the groups; default "group 0", "group 1", ...

    Returns:
        GroupMetrics.
    """
    result = group_accuracy(preds, labels, groups, num_groups)
    names = tuple(group_names) if group_names is not None else tuple(f"group {g}" for g in range(len(result.counts)))
    if len(names) != len(result.counts):
        raise ValueError(f"group_names has {len(names)} names for {len(result.counts)} groups")
    if not (result.counts > 0).any():
        raise ValueError("groups: every group is empty, so there is no worst group")
    train_weighted = float("nan")
    if train_group_counts is not None:
        train_weighted = average_accuracy(preds, labels, groups, num_groups, weighting="train", train_group_counts=train_group_counts)
    return GroupMetrics(
        per_group=tuple(float(a) for a in result.accuracy),
        counts=tuple(int(c) for c in result.counts),
        group_names=names,
        worst_group=float(np.nanmin(result.accuracy)),
        worst_group_index=int(np.nanargmin(result.accuracy)),
        mean_over_groups=average_accuracy(preds, labels, groups, num_groups, weighting="uniform"),
        average_test=average_accuracy(preds, labels, groups, num_groups, weighting="test"),
        average_train_weighted=train_weighted,
    )


# fit()'s validation metrics for group-robustness runs, and the epoch-selection rule of notebooks 02 and 03. Their
# assembly from a model and a split (selection_metrics, score_groups) runs the model through kdteach.train.predict, so
# it lives in kdteach.experiments.common: kdteach.train imports kdteach.data, which imports this module.


def group_val_metrics(predict_logits: Callable[[nn.Module], torch.Tensor], labels: torch.Tensor, groups: torch.Tensor,
                      num_groups: int) -> Callable[[nn.Module], dict[str, float]]:
    """fit()'s `metrics` for group robustness: validation worst-group and mean-over-groups accuracy per epoch.

    Args:
        predict_logits: model -> validation logits (N, C).
        labels, groups: the validation labels and group ids (N,).
        num_groups: number of groups.

    Returns:
        model -> {"val_worst_group", "val_mean_group"}.
    """
    def metrics(model: nn.Module) -> dict[str, float]:
        scores = group_metrics(predict_logits(model), labels, groups, num_groups)
        return {"val_worst_group": scores.worst_group, "val_mean_group": scores.mean_over_groups}

    return metrics


SELECTION = "selection score"  # the History column every group-robustness run selects its epoch by


TIE_BREAK = 1e-9  # per epoch: far below one validation example's share, so it only ever decides exact ties


def selection_rule(metrics: Callable[[nn.Module], dict[str, float]], train: Batches, *, by: str,
                   first_epoch: int = 0) -> Callable[[nn.Module], dict[str, float]]:
    """Adds the epoch-selection column SELECTION to validation metrics: `by` among epochs >= first_epoch (earlier ones
    score -inf), exact ties to the LATER epoch. The one rule every experiment keeps epochs by (pass select=SELECTION).

    Args:
        metrics: model -> validation metrics holding `by` (e.g. group_val_metrics(...)).
        train: the training Batches fit() runs on (fit sets train.epoch before each epoch).
        by: the metric that picks the epoch.
        first_epoch: the first eligible epoch (0-based; DeDiER: DeDiERReweighting.first_reweighted_epoch).

    Returns:
        model -> {**metrics(model), SELECTION: score}.
    """
    checks.check_int("first_epoch", first_epoch, minimum=0)

    def with_score(model: nn.Module) -> dict[str, float]:
        row = metrics(model)
        if by not in row:
            raise ValueError(f"by={by!r} is not among the validation metrics {sorted(row)}")
        eligible = train.epoch >= first_epoch
        return {**row, SELECTION: row[by] + TIE_BREAK * train.epoch if eligible else -math.inf}

    return with_score


# --------------------------------------------------------------------------------------------------------------
# The competence gate: a model that has not learned the task is not a result
# --------------------------------------------------------------------------------------------------------------

COMPETENCE_MARGIN = 0.10  # "clearly above" the best shortcut rule: 10 points of mean-over-groups accuracy


@dataclass(frozen=True)
class Competence:
    """Whether a model learned the task, judged on its test accuracy per group against the shortcut rules.

    Attributes:
        mean_over_groups: the model's unweighted mean of group accuracies (each group counts once).
        best_rule: the shortcut rule with the highest mean over groups, and that mean.
        best_rule_mean: that rule's mean over groups.
        competent: mean_over_groups > best_rule_mean + margin.
        rule_followed: the shortcut rule whose per-group accuracies the model's are all within `tolerance` of (None:
            no rule), so a constant or an inverted rule is named even when the mean hides it.
    """

    mean_over_groups: float
    best_rule: str
    best_rule_mean: float
    competent: bool
    rule_followed: str | None

    def label(self) -> str:
        """"competent", or "DEGENERATE (<rule>)" for a table cell."""
        if self.competent:
            return "competent"
        return f"DEGENERATE ({self.rule_followed or f'not above {self.best_rule}'})"


def shortcut_rules(num_classes: int, num_attributes: int, *, class_names: Sequence[str] | None = None) -> dict[str, list[float]]:
    """The per-group accuracies of the rules a model can follow without learning the task, for groups
    label * num_attributes + attribute: one constant per class, and with as many attribute values as classes, the
    spurious-attribute rule (predict the class the attribute agrees with) and, for two classes, its inverse.

    Args:
        num_classes, num_attributes: the grouping.
        class_names: names of the classes for the constants (default "class k").

    Returns:
        rule name -> accuracy per group (1 or 0).
    """
    checks.check_int("num_classes", num_classes, minimum=2)
    checks.check_int("num_attributes", num_attributes, minimum=1)
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]
    groups = [(label, attribute) for label in range(num_classes) for attribute in range(num_attributes)]
    rules = {f"constant: always {names[k]}": [float(label == k) for label, _ in groups] for k in range(num_classes)}
    if num_attributes == num_classes:
        rules["spurious-attribute rule"] = [float(label == attribute) for label, attribute in groups]
        if num_classes == 2:
            rules["inverted spurious-attribute rule"] = [float(label != attribute) for label, attribute in groups]
    return rules


def competence(per_group: Sequence[float], rules: dict[str, Sequence[float]], *, margin: float = COMPETENCE_MARGIN,
               tolerance: float = 0.05) -> Competence:
    """The competence gate: is a model's mean-over-groups accuracy clearly above every shortcut rule's?

    Args:
        per_group: the model's test accuracy per group (NaN for an empty group: left out, as the rules' are).
        rules: shortcut_rules(...) (rule -> accuracy per group).
        margin: how far above the best rule counts as clearly above (COMPETENCE_MARGIN).
        tolerance: a model whose every group is within this of a rule's follows that rule.

    Returns:
        Competence.
    """
    present = [i for i, a in enumerate(per_group) if not math.isnan(float(a))]
    if not present:
        raise ValueError("per_group holds no finite accuracy: no group was scored")
    for name, accuracy in rules.items():
        if len(accuracy) != len(per_group):
            raise ValueError(f"rules[{name!r}] has {len(accuracy)} groups, per_group has {len(per_group)}")
    checks.check_number("margin", margin, low=0.0, high=1.0)
    mean = float(np.mean([per_group[i] for i in present]))
    means = {name: float(np.mean([accuracy[i] for i in present])) for name, accuracy in rules.items()}
    best = max(means, key=means.get)
    followed = next((name for name, accuracy in rules.items() if all(abs(per_group[i] - accuracy[i]) <= tolerance for i in present)), None)
    return Competence(mean, best, means[best], mean > means[best] + margin and followed is None, followed)
