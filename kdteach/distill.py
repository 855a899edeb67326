"""Soft targets and the distillation loss (Hinton, Vinyals & Dean 2015), a frozen teacher, cached teacher logits.

The loss, per example i, with p = softmax(teacher / T) and q = softmax(student / T):

    soft_i = T^2 * KL(p || q)            (summed over classes; KL and cross-entropy differ by p's entropy only)
    hard_i = cross-entropy(student, y_i) at T = 1
    loss_i = soft_weight * soft_i + (1 - soft_weight) * hard_i

and kd_loss returns mean_i(w_i * loss_i). The T^2 factor is there because the gradient of KL(p || q) with respect
to a student logit is (q - p) / T, so without it the soft term's gradients shrink like 1 / T^2 as T grows.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdteach import checks
from kdteach.checks import check_logits  # noqa: F401 - distill.check_logits was public before checks.py held it
from kdteach.data.batches import Batches
from kdteach.runtime import amp_dtype


def softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at temperature T over the last dimension: exp(z_i / T) / sum_j exp(z_j / T).

    Args:
        logits: (..., classes), not empty; NaN or inf is refused for CPU tensors (see checks.reads_values).
        temperature: T > 0 and finite; T > 1 softens the distribution, T -> 0 approaches argmax.

    Returns:
        Probabilities of the same shape, in float32 at least.
    """
    checks.check_temperature(temperature)
    if not isinstance(logits, torch.Tensor) or logits.dim() == 0 or logits.numel() == 0:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a non-empty tensor of shape (..., classes), got {got}")
    checks.check_finite("logits", logits)
    return torch.softmax(logits.float() / temperature, dim=-1)


# The rest of this module (KDLoss, logit_matching_gap) checks temperatures through this name.
_check_temperature = checks.check_temperature


def kd_loss_per_example(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    *,
    temperature: float,
    soft_weight: float,
    check_values: bool | None = None,
) -> torch.Tensor:
    """The distillation loss of each example, before weighting and averaging (see the module docstring).

    Args:
        student_logits: (N, C) student logits (gradients flow into these).
        teacher_logits: (N, C) teacher logits (detached here); None only when soft_weight == 0.
        labels: (N,) class indices; None only when soft_weight == 1.
        temperature: T > 0 for the soft term.
        soft_weight: weight of the soft term in [0, 1]; the hard term gets 1 - soft_weight.
        check_values: check label range and that the logits are finite (reads the values, which waits for a
            GPU). None: only for CPU tensors, so a training step on a GPU never waits for the host.

    Returns:
        (N,) float32 losses.
    """
    checks.check_temperature(temperature)
    soft_weight = checks.check_number("soft_weight", soft_weight, low=0.0, high=1.0)
    checks.check_logits("student_logits", student_logits, check_values=check_values)
    n, num_classes = student_logits.shape
    loss = student_logits.new_zeros(n, dtype=torch.float32)
    if soft_weight > 0:
        if teacher_logits is None:
            raise ValueError("teacher_logits is None, but soft_weight > 0 needs the teacher's logits")
        checks.check_logits("teacher_logits", teacher_logits, check_values=check_values)
        if teacher_logits.shape[0] != n:
            raise ValueError(f"teacher_logits has {teacher_logits.shape[0]} rows, student_logits has {n}")
        if teacher_logits.shape[1] != num_classes:
            raise ValueError(f"teacher_logits has {teacher_logits.shape[1]} classes, student_logits has {num_classes}")
        log_p = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
        log_q = torch.log_softmax(student_logits.float() / temperature, dim=1)
        soft = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(dim=1)  # KL(p || q) per example
        loss = loss + soft_weight * temperature**2 * soft
    if soft_weight < 1:
        if labels is None:
            raise ValueError("labels is None, but soft_weight < 1 needs labels for the hard term")
        checks.check_labels("labels", labels, n, num_classes, check_values=check_values)
        hard = F.cross_entropy(student_logits.float(), labels.long(), reduction="none")
        loss = loss + (1.0 - soft_weight) * hard
    return loss


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    *,
    temperature: float,
    soft_weight: float,
    weights: torch.Tensor | None = None,
    check_values: bool | None = None,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch, with optional per-example weights.

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits; detached, so the teacher never gets gradients from here.
        labels: (N,) class indices, needed unless soft_weight == 1.
        temperature: T > 0; the soft term is multiplied by T^2.
        soft_weight: weight of the soft term in [0, 1] (hard term: 1 - soft_weight). Named so, because "alpha"
            means the soft weight in some libraries and the hard weight in others.
        weights: optional (N,) non-negative finite per-example weights (DeDiER, JTT); each loss_i is multiplied by
            w_i and the result is still divided by N.
        check_values: check label range and weight values; None checks CPU tensors only (a check on a GPU tensor
            waits for the GPU, which a training step should not do).

    Returns:
        A scalar: mean over the batch of w_i * loss_i.
    """
    per_example = kd_loss_per_example(
        student_logits, teacher_logits, labels, temperature=temperature, soft_weight=soft_weight, check_values=check_values
    )
    if weights is not None:
        n = per_example.shape[0]
        if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
            shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise ValueError(f"weights must have shape ({n},), got {shape}")
        if checks.reads_values(weights, check_values):
            if not bool(torch.isfinite(weights).all()):
                raise ValueError("weights must be finite, got NaN or infinity")
            if bool((weights < 0).any()):
                raise ValueError("weights must be non-negative")
        per_example = per_example * weights.float()
    return per_example.mean()


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast by the package's precision rule (runtime.amp_dtype): bf16 on GPUs that have it natively, fp16 on
    older CUDA GPUs, nothing elsewhere."""
    dtype = amp_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


class FrozenTeacher(nn.Module):
    """A teacher that stays frozen: eval mode always, no parameter gradients, forward under no_grad.

    Calling .train() on it (or on a module that contains it) leaves it in eval mode, so BatchNorm keeps its
    running statistics and dropout stays off during distillation.

    Args:
        model: the trained teacher network.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":  # noqa: ARG002 - the point is to ignore mode
        """Ignores mode: the teacher stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the teacher's float32 logits for x."""
        with autocast_context(x.device):
            logits = self.model(x)
        return logits.float()


@torch.no_grad()
def cache_teacher_logits(teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor], batches: Batches, *, batch_size: int = 1024) -> torch.Tensor:
    """Runs the teacher once over a dataset and returns its logits in dataset order.

    Only valid when the student sees exactly the inputs the teacher saw: with augmentation the student's inputs
    change every epoch and cached logits would describe other images. So batches with an augment function are
    refused.

    Args:
        teacher: the teacher (wrapped in FrozenTeacher if it is not already).
        batches: the training Batches; must have augment=None. Its transform is applied, shuffling is ignored.
        batch_size: rows per teacher forward pass.

    Returns:
        (N, C) float32 logits on the batches' device; row i belongs to example i.
    """
    if batches.augment is not None:
        raise ValueError(
            "cache_teacher_logits: these batches are augmented (augment is set), so every epoch shows the student "
            "different inputs and cached teacher logits would not match them. Cache from un-augmented batches, "
            "or compute the teacher's logits in every step (KDLoss(teacher=...))."
        )
    if not isinstance(teacher, FrozenTeacher) and isinstance(teacher, nn.Module):
        teacher = FrozenTeacher(teacher)
    ordered = Batches(batches.tensors, batch_size, shuffle=False, transform=batches.transform)
    chunks = [teacher(batch["x"]) for batch in ordered]
    return torch.cat(chunks).float()


class InstanceWeightSource(Protocol):
    """Anything that gives per-example loss weights for a batch's rows: kdteach.debias.DeDiERReweighting (weights
    that change every epoch) or kdteach.debias.InstanceWeights (fixed ones, e.g. JTT's)."""

    def weights_for(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) weights of the dataset rows `index` (a batch's "index")."""
        ...


class KDLoss:
    """A loss_fn for kdteach.train.fit(): the distillation loss of a batch.

    The teacher's logits come from batch["teacher_logits"] when the training Batches carry cached logits
    (see cache_teacher_logits), else from running `teacher` on the batch's (possibly augmented) inputs.
    Per-example weights come only from `instance_weights`, an object the loss is given, looked up by the batch's
    row indices (batch["index"]): nothing reaches the loss through the batches unannounced.

    Args:
        temperature: T for the soft term.
        soft_weight: weight of the soft term in [0, 1].
        teacher: the teacher, needed when the batches carry no cached logits.
        instance_weights: per-example weights (e.g. DeDiERReweighting); None: every example weighs 1.
    """

    def __init__(self, *, temperature: float, soft_weight: float, teacher: nn.Module | None = None,
                 instance_weights: InstanceWeightSource | None = None) -> None:
        _check_temperature(temperature)
        if not 0.0 <= soft_weight <= 1.0:
            raise ValueError(f"soft_weight must be in [0, 1], got {soft_weight!r}")
        if instance_weights is not None:
            checks.check_weight_source("instance_weights", instance_weights)
        self.temperature = temperature
        self.soft_weight = soft_weight
        self.teacher = FrozenTeacher(teacher) if teacher is not None and not isinstance(teacher, FrozenTeacher) else teacher
        self.instance_weights = instance_weights

    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The batch's cached teacher logits, or the teacher's logits on batch["x"]."""
        if "teacher_logits" in batch:
            return batch["teacher_logits"]
        if self.teacher is None:
            if self.soft_weight == 0:
                return None
            raise ValueError("KDLoss: the batch has no 'teacher_logits' and no teacher was given")
        return self.teacher(batch["x"])

    def __call__(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = None if self.instance_weights is None else self.instance_weights.weights_for(batch["index"])
        return kd_loss(
            outputs,
            self.teacher_logits(batch),
            batch.get("y"),
            temperature=self.temperature,
            soft_weight=self.soft_weight,
            weights=weights,
        )


def soft_target_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The closed-form gradient of the T^2-scaled soft term with respect to the student's logits: T (q - p).

    Hinton et al., eq. 2: dC/dz_i = (1/T)(q_i - p_i) for the unscaled cross-entropy; times T^2 this is T (q_i - p_i).

    Args:
        student_logits: (N, C) logits z.
        teacher_logits: (N, C) logits v.
        temperature: T > 0.

    Returns:
        (N, C) gradient per example (before averaging over the batch).
    """
    checks.check_logits("student_logits", student_logits)
    checks.check_logits("teacher_logits", teacher_logits)
    checks.check_same_shape("teacher_logits", teacher_logits, "student_logits", student_logits, what="(N, classes)")
    return temperature * (softmax_t(student_logits, temperature) - softmax_t(teacher_logits, temperature))


def logit_matching_gap(temperatures: list[float], *, num_classes: int = 10, n: int = 10_000, logit_std: float = 3.0, seed: int = 0) -> list[dict[str, float]]:
    """How close distillation is to logit matching at each temperature.

    For zero-mean random logits z (student) and v (teacher), compares the soft-target gradient T (q - p) with its
    high-temperature limit (z - v) / N, and reports the mean relative gap ||T(q - p) - (z - v)/N|| / ||(z - v)/N||.
    Expanding the softmax in 1/T, T (q - p) = (z - v)/N + O(1/T) (the next term is (z^2 - v^2 - their means)/(2NT)),
    so the relative gap falls like 1/T: at high temperature, distillation is matching logits (Bucila et al. 2006).

    Args:
        temperatures: values of T to tabulate.
        num_classes: N.
        n: random logit pairs per temperature.
        logit_std: standard deviation of the random logits (the gap at low T depends on it).
        seed: seed of the logits (the table is deterministic).

    Returns:
        One row per temperature: {"T", "relative gap"}.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, num_classes, generator=generator, dtype=torch.float64) * logit_std
    v = torch.randn(n, num_classes, generator=generator, dtype=torch.float64) * logit_std
    z, v = z - z.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    limit = (z - v) / num_classes
    rows = []
    for t in temperatures:
        _check_temperature(t)
        exact = t * (torch.softmax(z / t, 1) - torch.softmax(v / t, 1))
        gap = ((exact - limit).norm(dim=1) / limit.norm(dim=1)).mean().item()
        rows.append({"T": float(t), "relative gap": round(gap, 4)})
    return rows


def mean_soft_targets(logits: torch.Tensor, labels: torch.Tensor, temperature: float, *, num_classes: int | None = None) -> torch.Tensor:
    """The average soft target of each true class: row c is the mean of softmax(logits / T) over examples of class c.

    Its off-diagonal entries are the "dark knowledge": which wrong classes the teacher thinks a 2 resembles.

    Args:
        logits: (N, C) teacher logits.
        labels: (N,) integer true classes in [0, num_classes).
        temperature: T > 0.
        num_classes: rows of the result, an int >= 1 (default logits.shape[1], the number of classes).

    Returns:
        (num_classes, C) matrix; rows of classes with no example are NaN.
    """
    check_logits("logits", logits)
    num_classes = logits.shape[1] if num_classes is None else checks.check_int("num_classes", num_classes, minimum=1)
    # Read on any device: this is analysis, not a training step, and index_add_ would fail deep inside torch.
    checks.check_labels("labels", labels, logits.shape[0], num_classes, check_values=True)
    probs = softmax_t(logits, temperature)
    labels = labels.long().to(logits.device)
    sums = torch.zeros(num_classes, logits.shape[1], device=logits.device).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).float()[:, None]
    return sums / counts
