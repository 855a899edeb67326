"""The baselines DeDiER is compared with: JTT's error set and weights (Liu et al. 2021), per-example weighted cross
entropy, the Group DRO loss (Sagawa et al. 2020), and a SimKD-style student that reads the teacher's frozen head
(Chen et al. 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdteach import checks
from kdteach.data.batches import Batch, Batches
from kdteach.debias.dedier import student_left_as_is
from kdteach.distill import autocast_context
from kdteach.train import predict

__all__ = [
    "jtt_error_set",
    "jtt_weights",
    "InstanceWeights",
    "WeightedCrossEntropy",
    "GroupDROLoss",
    "SimKDLogits",
    "SimKDStudent",
    "SimKDLoss",
    "teacher_features",
]


def jtt_error_set(model: nn.Module, batches: Batches) -> torch.Tensor:
    """JTT's first stage: the training examples an ERM model gets wrong (Liu et al. 2021).

    Args:
        model: the identification model (ERM, usually trained for only a few epochs).
        batches: the labelled training Batches.

    Returns:
        (N,) bool mask of misclassified examples, in dataset order.
    """
    if "y" not in batches.tensors:
        raise ValueError("batches must carry labels 'y'")
    logits = predict(model, batches)
    return logits.argmax(dim=1) != batches.tensors["y"].to(logits.device)


def jtt_weights(errors: torch.Tensor, *, upweight: float) -> torch.Tensor:
    """JTT's second stage: weight upweight on the error set, 1 elsewhere.

    Args:
        errors: (N,) bool mask from jtt_error_set.
        upweight: the factor (lambda_up in the paper, e.g. 20 to 100), >= 1.

    Returns:
        (N,) float32 weights.

    Raises:
        ValueError: when the error set is empty. Then JTT is ERM again, and saying so is better than returning
            all-ones weights: train the identification model for fewer epochs or with more regularisation.
    """
    if not isinstance(errors, torch.Tensor) or errors.dtype != torch.bool or errors.dim() != 1:
        raise ValueError(f"errors must be a 1-D bool tensor, got {getattr(errors, 'dtype', type(errors).__name__)}")
    checks.check_number("upweight", upweight, low=1.0)
    if not bool(errors.any()):
        raise ValueError(
            f"JTT: the error set is empty (the identification model classifies all {len(errors)} training examples "
            "correctly), so upweighting it would change nothing. Train the identification model for fewer epochs "
            "or with more regularisation."
        )
    return torch.where(errors, torch.full_like(errors, upweight, dtype=torch.float32), torch.ones_like(errors, dtype=torch.float32))


class InstanceWeights:
    """Fixed per-example loss weights (JTT's), handed to a loss explicitly and looked up by a batch's row indices.

    Args:
        weights: (N,) finite non-negative weights, one per training row, on the training data's device.
    """

    def __init__(self, weights: torch.Tensor) -> None:
        checks.check_tensor("weights", weights, dims=(1,), floating=True, what="(N,)")
        if checks.reads_values(weights, None) and not bool((torch.isfinite(weights) & (weights >= 0)).all()):
            raise ValueError("weights must be finite and non-negative")
        self.weights = weights

    def weights_for(self, index: torch.Tensor) -> torch.Tensor:
        """The weights of the dataset rows `index` (a batch's "index")."""
        return self.weights[index]


class WeightedCrossEntropy:
    """ERM with per-example weights (JTT's second stage): mean over the batch of w_i * cross-entropy_i.

    Args:
        instance_weights: where the weights come from (InstanceWeights, or anything with weights_for(index)).
    """

    def __init__(self, instance_weights: "InstanceWeights") -> None:
        checks.check_weight_source("instance_weights", instance_weights)
        self.instance_weights = instance_weights

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        per_example = F.cross_entropy(outputs.float(), batch["y"], reduction="none")
        return (per_example * self.instance_weights.weights_for(batch["index"])).mean()


class GroupDROLoss:
    """Online Group DRO (Sagawa et al. 2020): minimise a weighted sum of group losses, weights chasing the worst.

    Each step: the mean cross-entropy of each group present in the batch; then an exponentiated-gradient step on
    the group weights q <- q * exp(step_size * loss_g), renormalised; the loss is sum_g q_g * loss_g. Needs the
    group label of every training example (batch["group"]): an advantage over ERM, KD, JTT and DeDiER, which
    never see group labels in training.

    Group ids outside [0, num_groups) are refused with a ValueError (on a GPU, index_add would stop the process
    with a device-side assert instead). Checking reads the values, so it runs on every CPU batch, but on a GPU
    only on the first batch (one wait for the GPU, once) and on `groups` when given: pass the training set's
    group ids to have every id checked before training starts.

    Args:
        num_groups: number of groups.
        step_size: the exponentiated-gradient step size (eta_q; Sagawa et al. used 0.01).
        groups: optional (N,) group ids of the whole training set, checked here against num_groups.
    """

    def __init__(self, num_groups: int, *, step_size: float = 0.01, groups: torch.Tensor | None = None) -> None:
        self.num_groups = checks.check_int("num_groups", num_groups, minimum=1)
        self.step_size = checks.check_number("step_size", step_size, low=0.0, low_open=True)
        if groups is not None:
            checks.check_labels("groups", groups, None, self.num_groups, check_values=True)
        self.group_weights = torch.full((self.num_groups,), 1.0 / self.num_groups)
        self._checked_a_batch = False

    def group_losses(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy per group (0 for absent groups) and the group counts of the batch."""
        if "group" not in batch:
            raise ValueError("GroupDROLoss needs group labels: the batch has no 'group' tensor")
        n = outputs.shape[0]
        read = None if self._checked_a_batch else True  # the first batch always; later ones only off the GPU
        checks.check_labels("batch['group']", batch["group"], n, self.num_groups, check_values=read)
        checks.check_labels("batch['y']", batch["y"], n, outputs.shape[1], check_values=read)
        self._checked_a_batch = True
        per_example = F.cross_entropy(outputs.float(), batch["y"], reduction="none")
        group = batch["group"].long()
        sums = torch.zeros(self.num_groups, device=outputs.device).index_add(0, group, per_example)
        # Counted with index_add, not bincount: bincount sizes its output from the largest id, a wait for the GPU.
        counts = torch.zeros(self.num_groups, device=outputs.device).index_add(0, group, torch.ones_like(per_example))
        return sums / counts.clamp(min=1), counts

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        losses, _ = self.group_losses(outputs, batch)
        q = self.group_weights.to(outputs.device)
        with torch.no_grad():
            q = q * torch.exp(self.step_size * losses.detach())
            q = q / q.sum()
        self.group_weights = q
        return (q * losses).sum()

    def state_dict(self) -> dict:
        """The group weights (checkpointed by fit())."""
        return {"group_weights": self.group_weights.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restores the group weights."""
        weights = state["group_weights"]
        if not isinstance(weights, torch.Tensor) or weights.shape != (self.num_groups,):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise ValueError(f"state['group_weights'] must have shape ({self.num_groups},) for num_groups={self.num_groups}, got {got}")
        self.group_weights = weights.clone()


def _pooled(features: torch.Tensor) -> torch.Tensor:
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features


class SimKDLogits(torch.Tensor):
    """A SimKDStudent's training-mode output: the (N, C) logits, carrying the (N, D) projected features they were
    computed from as `.projected`, for SimKDLoss. A plain tensor everywhere else (fit's accuracy, argmax, ...).

    A tensor subclass rather than a tuple because fit() hands the forward's output to the loss as it is and reads
    logits from it: this way the loss gets what the model returned, and nothing is stored on the model.
    """

    projected: torch.Tensor


class SimKDStudent(nn.Module):
    """A SimKD-style student (Chen et al. 2022): its last features, projected to the teacher's width and read by
    the teacher's own frozen classifier head.

    Trained with SimKDLoss (squared distance between the projected student features and the teacher's features);
    the logits always come from the teacher's head, which never changes. In training mode the forward returns
    SimKDLogits (logits with their projected features attached); in eval mode plain logits.

    Args:
        student: a backbone with stage_names and features().
        teacher_head: the teacher's nn.Linear classifier (copied and frozen here).
        hidden: width of the projector's hidden layer (None: a single linear projection).
    """

    def __init__(self, student: nn.Module, teacher_head: nn.Linear, *, hidden: int | None = None) -> None:
        super().__init__()
        if not isinstance(teacher_head, nn.Linear):
            raise ValueError(f"teacher_head must be an nn.Linear, got {type(teacher_head).__name__}")
        self.student = student
        self.stage_names = tuple(student.stage_names)
        student_dim = int(getattr(student, "feature_dim", 0) or student.classifier.in_features)
        teacher_dim = teacher_head.in_features
        if hidden is None:
            self.projector: nn.Module = nn.Linear(student_dim, teacher_dim)
        else:
            self.projector = nn.Sequential(nn.Linear(student_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, teacher_dim))
        self.teacher_head = nn.Linear(teacher_dim, teacher_head.out_features)
        self.teacher_head.load_state_dict(teacher_head.state_dict())
        self.teacher_head.requires_grad_(False)

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """The backbone's features (so an early readout can sit on a SimKD-style student too)."""
        return self.student.features(x, upto=upto)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the teacher's head on the projected student features (SimKDLogits in training mode)."""
        projected = self.projector(_pooled(self.student.features(x)[self.stage_names[-1]]))
        logits = self.teacher_head(projected)
        if not self.training:
            return logits
        out = logits.as_subclass(SimKDLogits)  # stays in the autograd graph
        out.projected = projected
        return out


class SimKDLoss:
    """SimKD's loss: mean squared distance between a SimKDStudent's projected features and the teacher's features.

    The teacher's features come from batch["teacher_features"] (cached with teacher_features, for un-augmented
    inputs) or from running `teacher` on the batch's (augmented) inputs. The student's projected features come
    with its outputs (SimKDLogits.projected): the loss reads only what it is called with.

    Args:
        teacher: the teacher, needed when the batches carry no cached features.
    """

    def __init__(self, *, teacher: nn.Module | None = None) -> None:
        self.teacher = teacher

    def teacher_features(self, batch: Batch) -> torch.Tensor:
        """The batch's cached teacher features, or the teacher's pooled last-stage features on batch["x"]."""
        if "teacher_features" in batch:
            return batch["teacher_features"]
        if self.teacher is None:
            raise ValueError("SimKDLoss needs batch['teacher_features'] (cache them with kdteach.debias.teacher_features) or a teacher")
        with torch.no_grad(), student_left_as_is(self.teacher):
            return _pooled(self.teacher.features(batch["x"])[self.teacher.stage_names[-1]]).float()

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not isinstance(outputs, SimKDLogits):
            raise ValueError(f"SimKDLoss needs a SimKDStudent's training-mode outputs (SimKDLogits), got {type(outputs).__name__}")
        target = self.teacher_features(batch)
        return (outputs.projected.float() - target.float()).pow(2).sum(dim=1).mean()


@torch.no_grad()
def teacher_features(teacher: nn.Module, batches: Batches) -> torch.Tensor:
    """The teacher's last-stage (pooled) features on every row of batches, in dataset order (for SimKD).

    Args:
        teacher: a model with stage_names and features(); run in eval mode, its flags restored after.
        batches: un-augmented Batches (cached features must describe the inputs the student sees).

    Returns:
        (N, feature_dim) float32 features.
    """
    if batches.augment is not None:
        raise ValueError("teacher_features: the batches are augmented, so cached features would not match the inputs")
    ordered = Batches(batches.tensors, batches.batch_size, transform=batches.transform)
    last = teacher.stage_names[-1]
    with student_left_as_is(teacher):
        chunks = []
        for batch in ordered:
            with autocast_context(batch["x"].device):
                chunks.append(_pooled(teacher.features(batch["x"])[last]).float())
    return torch.cat(chunks)
