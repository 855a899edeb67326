"""Early readouts and DeDiER (Tiwari et al., WACV 2024): find the examples an early layer gets confidently wrong,
and weight their distillation loss up.

A readout is a small head trained on an early stage of the student. Early layers see simple cues (a background,
a colour) better than the object itself, so where such a cue contradicts the label, the readout tends to be wrong
and sure of it. DeDiER turns that into per-example weights for the distillation loss:

    margin_i = p_(1) - p_(2)          top-1 minus top-2 softmax probability of the readout (binary: |p0 - p1|)
    w_i      = exp(beta * margin_i ** alpha)   if the readout is wrong on example i
             = 1                                otherwise

alpha is an exponent on the margin (with the paper's small alpha, margin**alpha is close to 1 for most margins,
so the weight is close to a constant e^beta on readout errors); beta sets how large the upweight is.

Implemented as the paper describes it, not as the official code does: the readout never moves the student's
BatchNorm statistics, the weights are recomputed from scratch every epoch, nothing is frozen, and any number of
classes works. DeDiERReweighting has switches that reproduce the official code's behaviour, for comparison.

Also here: the baselines the paper compares with (JTT's error set and weights, the Group DRO loss, a SimKD-style
student reading the teacher's frozen head) and diagnostics (readout accuracy and margins per group, precision and
recall of "readout wrong with margin >= m" for minority membership, the weights each group receives).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdteach import checks
from kdteach.data.batches import Batch, Batches
from kdteach.distill import autocast_context
from kdteach.train import predict

__all__ = [
    "confidence_margin",
    "dedier_weights",
    "EarlyReadout",
    "DeDiERReweighting",
    "student_left_as_is",
    "parameters_upto",
    "jtt_error_set",
    "jtt_weights",
    "InstanceWeights",
    "WeightedCrossEntropy",
    "GroupDROLoss",
    "SimKDLogits",
    "SimKDStudent",
    "SimKDLoss",
    "teacher_features",
    "readout_by_group",
    "confident_error_retrieval",
    "weights_by_group",
    "ReadoutDiagnosis",
    "diagnose_readout",
]


def _check_readout(readout_logits: torch.Tensor, labels: torch.Tensor) -> None:
    # Once per epoch or per diagnostic, never per step: the values are read even on a GPU (one sync).
    checks.check_logits("readout_logits", readout_logits, min_classes=2, check_values=True)
    checks.check_labels("labels", labels, readout_logits.shape[0], readout_logits.shape[1], check_values=True)


def confidence_margin(logits: torch.Tensor) -> torch.Tensor:
    """The readout's confidence margin: top-1 minus top-2 softmax probability of each row.

    Args:
        logits: (N, C) logits, C >= 2.

    Returns:
        (N,) float32 margins in [0, 1]; for two classes this is |p0 - p1|.
    """
    checks.check_logits("logits", logits, min_classes=2)
    top2 = torch.softmax(logits.detach().float(), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def dedier_weights(readout_logits: torch.Tensor, labels: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """DeDiER's per-example weights: exp(beta * margin**alpha) where the readout is wrong, 1 where it is right.

    Args:
        readout_logits: (N, C) logits of the early readout on the training set.
        labels: (N,) true class indices.
        alpha: exponent on the margin, >= 0 (the official defaults are 0.05 to 0.2: margin**alpha is near 1).
        beta: scale in the exponent, >= 0 (official defaults 3 to 4, so wrong examples get up to e^beta).

    Returns:
        (N,) float32 weights, >= 1, on the logits' device.
    """
    _check_readout(readout_logits, labels)
    checks.check_number("alpha", alpha, low=0.0)
    checks.check_number("beta", beta, low=0.0)
    margin = confidence_margin(readout_logits)
    wrong = readout_logits.argmax(dim=1) != labels.to(readout_logits.device)
    upweight = torch.exp(beta * margin.pow(alpha))
    return torch.where(wrong, upweight, torch.ones_like(margin))


# ---------------------------------------------------------------------------------------------------------------
# The early readout
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def student_left_as_is(model: nn.Module, *, train_mode: bool = False) -> Iterator[nn.Module]:
    """Runs a block with model in eval mode, then puts every submodule's train/eval flag back as it was.

    model.train(was_training) would not be enough: a frozen teacher or a frozen block inside the model keeps its
    own mode, and a blanket call would overwrite it. Eval mode is what keeps BatchNorm's running statistics still
    (in train mode every forward pass moves them, which is what the official DeDiER code's readout epoch does).

    Args:
        model: the student.
        train_mode: put the model in train mode instead (reproduces the official code's BatchNorm drift).

    Yields:
        The model.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.train(train_mode)
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


def _stage_features(model: nn.Module, x: torch.Tensor, stage: str) -> torch.Tensor:
    if not hasattr(model, "features") or stage not in getattr(model, "stage_names", ()):
        names = getattr(model, "stage_names", None)
        raise ValueError(f"stage must be one of the model's stage_names {names}, got {stage!r}")
    return model.features(x, upto=stage)[stage]


def parameters_upto(model: nn.Module, stage: str, x: torch.Tensor) -> list[nn.Parameter]:
    """The parameters that the features at `stage` depend on (the modules a readout there shares with the model).

    Found by differentiating the stage's output on a small batch, so it works for any model with features(),
    without knowing how its modules are named. Runs in eval mode and leaves the model exactly as it was.

    Args:
        model: a model with stage_names and features(x, upto=...).
        stage: one of model.stage_names.
        x: a few example inputs.

    Returns:
        The parameters with a non-zero path to that stage's features, in model.parameters() order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with student_left_as_is(model), torch.enable_grad():
        out = _stage_features(model, x, stage)
        grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None]


class EarlyReadout:
    """A small classifier on an early stage of the student, retrained from scratch on the student's current features.

    The readout's features are computed under no_grad and with the student in eval mode: it learns nothing into
    the student, and the student's BatchNorm statistics, train/eval flags and requires_grad flags are exactly as
    before (the official code let the readout epoch move BatchNorm statistics).

    Args:
        stage: the student's stage to read (one of its stage_names, e.g. "layer1").
        num_classes: number of classes.
        head: "conv" (3x3 conv, ReLU, global average pool, linear: the official code's kind of head) or "linear"
            (global average pool, then a linear probe). 2-D features (an MLP's) only take "linear".
        epochs: epochs the head trains for each time fit() is called (the official code: 1).
        lr: Adam learning rate of the head (high, because the head gets one short epoch to find the easy cue).
        batch_size: rows per step; None uses the training batches' batch size.
        hidden_channels: channels of the conv head; None keeps the stage's channel count.
        seed: seeds the head's initialisation and its shuffling (together with how often fit() has run).
        features_in_train_mode: reproduce the official code's defect (student in train mode while the readout reads
            it, so BatchNorm statistics move). Off by default.
    """

    def __init__(
        self,
        stage: str,
        num_classes: int,
        *,
        head: str = "conv",
        epochs: int = 1,
        lr: float = 1e-2,
        batch_size: int | None = None,
        hidden_channels: int | None = None,
        seed: int = 0,
        features_in_train_mode: bool = False,
    ) -> None:
        if head not in ("conv", "linear"):
            raise ValueError(f"head must be 'conv' or 'linear', got {head!r}")
        checks.check_int("num_classes", num_classes, minimum=2)
        checks.check_int("epochs", epochs, minimum=1)
        checks.check_number("lr", lr, low=0.0, low_open=True)
        if batch_size is not None:
            checks.check_int("batch_size", batch_size, minimum=1)
        self.stage = stage
        self.num_classes = num_classes
        self.head_kind = head
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.hidden_channels = hidden_channels
        self.seed = seed
        self.features_in_train_mode = features_in_train_mode
        self.head: nn.Module | None = None
        self.fits = 0  # how often the head was retrained: part of its seed, so every refit differs but reproducibly

    def _build_head(self, features: torch.Tensor) -> nn.Module:
        if features.dim() == 2:
            if self.head_kind == "conv":
                raise ValueError(f"head='conv' needs (N, C, H, W) features; stage {self.stage!r} gives {tuple(features.shape)}: use head='linear'")
            return nn.Linear(features.shape[1], self.num_classes)
        if features.dim() != 4:
            raise ValueError(f"stage {self.stage!r} gives features of shape {tuple(features.shape)}; expected (N, C) or (N, C, H, W)")
        channels = features.shape[1]
        if self.head_kind == "linear":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, self.num_classes))
        hidden = self.hidden_channels or channels
        # No BatchNorm in the head: after a single short epoch its running statistics lag behind the weights,
        # and the head in eval mode then disagrees with the head that was trained.
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, self.num_classes),
        )

    @torch.no_grad()
    def features(self, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The student's features at the readout's stage, with no gradient path back (float32)."""
        with autocast_context(x.device):
            return _stage_features(student, x, self.stage).float()

    def fit(self, student: nn.Module, batches: Batches) -> dict[str, float]:
        """Re-initialises the head and trains it with cross-entropy on the student's frozen features.

        Args:
            student: the student (left exactly as it was).
            batches: labelled training Batches ("x", "y"); its augmentation and transform are used, its order is
                reshuffled with the readout's own seed.

        Returns:
            {"readout_train_loss": mean loss of the last readout epoch}.
        """
        if "y" not in batches.tensors:
            raise ValueError("batches must carry labels 'y' to train the readout")
        device = batches.device
        stream = Batches(
            batches.tensors,
            self.batch_size or batches.batch_size,
            shuffle=True,
            seed=self.seed * 7919 + self.fits,
            augment=batches.augment,
            transform=batches.transform,
        )
        with student_left_as_is(student, train_mode=self.features_in_train_mode):
            first = next(iter(Batches(batches.tensors, 2, transform=batches.transform)))
            # A fresh head each time, initialised from its own seeded stream (the global RNG is left alone).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + self.fits)
                head = self._build_head(self.features(student, first["x"])).to(device)
            optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
            head.train()
            loss_sum = torch.zeros((), device=device)
            for epoch in range(self.epochs):
                stream.set_epoch(epoch)
                loss_sum.zero_()
                seen = 0
                for batch in stream:
                    features = self.features(student, batch["x"])
                    with autocast_context(device):
                        logits = head(features)
                    loss = F.cross_entropy(logits.float(), batch["y"])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach() * len(batch["index"])
                    seen += len(batch["index"])
        head.eval()
        self.head = head
        self.fits += 1
        return {"readout_train_loss": float(loss_sum) / max(seen, 1)}

    @torch.no_grad()
    def predict(self, student: nn.Module, batches: Batches) -> torch.Tensor:
        """The readout's logits on every row of batches, in dataset order, without augmentation.

        Args:
            student: the student the head was trained on.
            batches: Batches with "x".

        Returns:
            (N, num_classes) float32 logits.
        """
        if self.head is None:
            raise RuntimeError("EarlyReadout.predict: the head has not been trained yet; call fit() first")
        ordered = Batches(batches.tensors, self.batch_size or batches.batch_size, transform=batches.transform)
        with student_left_as_is(student):
            chunks = []
            for batch in ordered:
                features = self.features(student, batch["x"])
                with autocast_context(features.device):
                    chunks.append(self.head(features).float())
        return torch.cat(chunks)

    def state_dict(self) -> dict:
        """The head's weights, its kind and the refit counter (for checkpoints)."""
        return {"fits": self.fits, "head": None if self.head is None else self.head.state_dict()}

    def load_state_dict(self, state: dict, *, example_features: torch.Tensor | None = None) -> None:
        """Restores the refit counter, and the head when example_features (one batch of stage features) is given."""
        self.fits = int(state["fits"])
        if state.get("head") is not None and example_features is not None:
            head = self._build_head(example_features).to(example_features.device)
            head.load_state_dict(state["head"])
            self.head = head.eval()


class DeDiERReweighting:
    """fit()'s on_epoch_end for DeDiER: retrain the readout, then rewrite the training set's instance weights.

    After each student epoch: re-initialise and train the readout on the student's current (frozen) features,
    run it over the training set, and keep dedier_weights(...) as `weights`. The loss reads them explicitly: pass
    this object to it (KDLoss(..., instance_weights=reweighting)), which looks up weights_for(batch["index"]).
    A reweighting whose weights no loss read during an epoch raises at its next call, so forgetting to hand it to
    the loss cannot turn DeDiER into plain KD silently. Epoch 0 is plain KD (all weights start at 1). The weights
    are recomputed from scratch each epoch, as the paper describes. A student trained from random weights (the
    course's tiny text models) has only noise in its early layer after one epoch, so start_after can hold the
    first reweighting back for more epochs of plain KD. Two switches reproduce the official code:

    - sticky=True: an example keeps the weight it got when last wrong, even after the readout gets it right;
    - freeze_shared=True: after the first reweighting, the student's modules up to the readout's stage (stem and
      layer1 for a layer1 readout) get requires_grad=False and stop learning.

    Checkpointing: fit() saves state_dict() with the model, so a resumed run continues with the same weights.

    Args:
        student: the student being distilled (the model fit() trains).
        readout: the EarlyReadout.
        train: the training Batches (the readout trains on them; they are not modified).
        alpha: exponent on the margin.
        beta: scale in the exponent.
        start_after: epochs of plain KD before the first reweighting (1, the paper's: epoch 0 is plain KD).
        sticky: reproduce the official code's never-reset weights.
        freeze_shared: reproduce the official code's freezing of the shared early modules.
    """

    def __init__(
        self,
        student: nn.Module,
        readout: EarlyReadout,
        train: Batches,
        *,
        alpha: float,
        beta: float,
        start_after: int = 1,
        sticky: bool = False,
        freeze_shared: bool = False,
    ) -> None:
        if "y" not in train.tensors:
            raise ValueError("train must carry labels 'y'")
        checks.check_int("start_after", start_after, minimum=1)
        checks.check_number("alpha", alpha, low=0.0)
        checks.check_number("beta", beta, low=0.0)
        self.student = student
        self.readout = readout
        self.train = train
        self.alpha = alpha
        self.beta = beta
        self.start_after = start_after
        self.sticky = sticky
        self.freeze_shared = freeze_shared
        self.frozen = False
        self.readout_logits: torch.Tensor | None = None  # the last readout's logits on the training set, for plots
        self._weights = torch.ones(train.n, device=train.device)
        self._unread = False  # set when new weights are made, cleared when a loss reads them

    @property
    def weights(self) -> torch.Tensor:
        """The current (N,) instance weights."""
        return self._weights

    def weights_for(self, index: torch.Tensor) -> torch.Tensor:
        """The weights of the dataset rows `index` (a batch's "index"), for the loss."""
        self._unread = False
        return self._weights[index]

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if model is not self.student:
            raise ValueError("DeDiERReweighting was called with a model that is not its student")
        if self._unread:
            raise RuntimeError(
                f"DeDiERReweighting: no loss read its weights during epoch {epoch + 1}, so that epoch was plain KD; "
                "pass it to the loss (KDLoss(..., instance_weights=reweighting))"
            )
        if epoch + 1 < self.start_after:
            return {}  # still plain KD: every weight stays 1
        row = self.readout.fit(model, self.train)
        logits = self.readout.predict(model, self.train)
        labels = self.train.tensors["y"]
        fresh = dedier_weights(logits, labels, alpha=self.alpha, beta=self.beta)
        wrong = logits.argmax(dim=1) != labels
        weights = torch.where(wrong, fresh, self.weights) if self.sticky else fresh
        self._weights, self._unread = weights, True
        self.readout_logits = logits
        if self.freeze_shared and not self.frozen:
            self._freeze()
        row.update(
            readout_train_acc=float((~wrong).float().mean()),
            upweighted_fraction=float((weights > 1).float().mean()),
            mean_weight=float(weights.mean()),
        )
        return row

    def _freeze(self) -> None:
        example = next(iter(Batches(self.train.tensors, 2, transform=self.train.transform)))["x"]
        for p in parameters_upto(self.student, self.readout.stage, example):
            p.requires_grad_(False)
        self.frozen = True

    def state_dict(self) -> dict:
        """Weights, readout and freezing state, for fit()'s checkpoints."""
        return {"weight": self.weights.detach().clone(), "frozen": self.frozen, "readout": self.readout.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restores the weights and the readout's counter, and re-applies the official-code freezing if it was on."""
        weight = state["weight"].to(self.train.device)
        if weight.shape != (self.train.n,):
            raise ValueError(f"state weight has shape {tuple(weight.shape)}, the training set has {self.train.n} rows")
        self._weights = weight
        self.readout.load_state_dict(state["readout"])
        if state["frozen"] and not self.frozen:
            self._freeze()


# ---------------------------------------------------------------------------------------------------------------
# Baselines: JTT, Group DRO, a SimKD-style student
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics: does "confidently wrong early" find the minority groups?
# ---------------------------------------------------------------------------------------------------------------
def readout_by_group(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> list[dict[str, float]]:
    """The readout's accuracy and confidence margins in each group.

    Args:
        readout_logits: (N, C) readout logits.
        labels: (N,) true classes.
        groups: (N,) group ids in [0, num_groups).
        num_groups: number of groups.

    Returns:
        One dict per group: group, n, accuracy, mean_margin, mean_margin_wrong (margin where the readout is wrong;
        NaN if it never is).
    """
    _check_readout(readout_logits, labels)
    checks.check_int("num_groups", num_groups, minimum=1)
    checks.check_labels("groups", groups, readout_logits.shape[0], num_groups, check_values=True)
    margin = confidence_margin(readout_logits).cpu()
    wrong = (readout_logits.argmax(dim=1) != labels.to(readout_logits.device)).cpu()
    groups = groups.cpu()
    rows = []
    for g in range(num_groups):
        member = groups == g
        n = int(member.sum())
        wrong_g = wrong & member
        rows.append(
            {
                "group": g,
                "n": n,
                "accuracy": 1.0 - float(wrong_g.sum()) / n if n else math.nan,
                "mean_margin": float(margin[member].mean()) if n else math.nan,
                "mean_margin_wrong": float(margin[wrong_g].mean()) if bool(wrong_g.any()) else math.nan,
            }
        )
    return rows


def confident_error_retrieval(readout_logits: torch.Tensor, labels: torch.Tensor, minority: torch.Tensor, *, margin: float) -> dict[str, float]:
    """How well "readout wrong with margin >= m" picks out minority-group examples.

    Args:
        readout_logits: (N, C) readout logits.
        labels: (N,) true classes.
        minority: (N,) bool, True for examples of the minority (bias-conflicting) groups.
        margin: the margin threshold m in [0, 1].

    Returns:
        {"margin", "flagged" (count), "precision" (share of flagged that are minority; NaN if none flagged),
        "recall" (share of minority that are flagged), "base_rate" (share of minority overall: the precision of
        flagging at random), "lift" (precision / base_rate)}.
    """
    _check_readout(readout_logits, labels)
    if not isinstance(minority, torch.Tensor) or minority.dtype != torch.bool or minority.shape != labels.shape:
        raise ValueError(f"minority must be a bool tensor of shape {tuple(labels.shape)}")
    margin = checks.check_number("margin", margin, low=0.0, high=1.0)
    wrong = (readout_logits.argmax(dim=1) != labels.to(readout_logits.device)).cpu()
    flagged = wrong & (confidence_margin(readout_logits).cpu() >= margin)
    minority = minority.cpu()
    hits = int((flagged & minority).sum())
    n_flagged, n_minority = int(flagged.sum()), int(minority.sum())
    base_rate = n_minority / len(minority) if len(minority) else math.nan
    precision = hits / n_flagged if n_flagged else math.nan
    return {
        "margin": float(margin),
        "flagged": float(n_flagged),
        "precision": precision,
        "recall": hits / n_minority if n_minority else math.nan,
        "base_rate": base_rate,
        "lift": precision / base_rate if n_flagged and base_rate > 0 else math.nan,
    }


def weights_by_group(weights: torch.Tensor, groups: torch.Tensor, num_groups: int) -> list[dict[str, float]]:
    """The instance weights each group receives: mean weight, share upweighted, and share of the total weight.

    Args:
        weights: (N,) instance weights.
        groups: (N,) group ids.
        num_groups: number of groups.

    Returns:
        One dict per group: group, n, mean_weight, upweighted (share with weight > 1), weight_share (the group's
        share of the summed weight: how much of the loss it carries).
    """
    checks.check_tensor("weights", weights, dims=(1,), what="(N,)")
    checks.check_int("num_groups", num_groups, minimum=1)
    checks.check_labels("groups", groups, len(weights), num_groups, check_values=True)
    weights, groups = weights.float().cpu(), groups.cpu()
    total = float(weights.sum())
    rows = []
    for g in range(num_groups):
        w = weights[groups == g]
        rows.append(
            {
                "group": g,
                "n": len(w),
                "mean_weight": float(w.mean()) if len(w) else math.nan,
                "upweighted": float((w > 1).float().mean()) if len(w) else math.nan,
                "weight_share": float(w.sum()) / total if total > 0 else math.nan,
            }
        )
    return rows


@dataclass(frozen=True)
class ReadoutDiagnosis:
    """What DeDiER relies on, measured on one readout's outputs over the training set.

    Attributes:
        stage: the student's stage the readout sat on.
        by_group: per group (named): n, accuracy, mean_margin, mean_margin_wrong (readout_by_group).
        retrieval: per margin m: flagged, precision, recall, base_rate, lift of "wrong with margin >= m" for
            minority membership (confident_error_retrieval).
        weights: per group (named): the DeDiER weights it would get (weights_by_group).
        conflicting, aligned: (examples, readout accuracy, mean margin of its errors or NaN without errors) on the
            bias-conflicting and on the bias-aligned examples.
    """

    stage: str
    by_group: tuple[dict, ...]
    retrieval: tuple[dict, ...]
    weights: tuple[dict, ...]
    conflicting: tuple[int, float, float]
    aligned: tuple[int, float, float]


def diagnose_readout(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, group_names: list[str],
                     minority: torch.Tensor, *, alpha: float, beta: float, margins: tuple[float, ...], stage: str) -> ReadoutDiagnosis:
    """Every diagnostic of one readout at once: accuracy and margins per group, how well its confident errors find
    the minority groups at each margin threshold, and the DeDiER weights each group would get.

    Args:
        readout_logits: (N, C) readout logits on the training set.
        labels, groups: (N,) classes and group ids; group_names: one name per group.
        minority: (N,) bool, True for bias-conflicting examples.
        alpha, beta: DeDiER's weight settings.
        margins: the thresholds m of the retrieval table.
        stage: where the readout sat (carried into the result).

    Returns:
        ReadoutDiagnosis.
    """
    logits, labels, groups, minority = readout_logits.cpu(), labels.cpu(), groups.cpu(), minority.cpu()
    right, margin = logits.argmax(1) == labels, confidence_margin(logits)

    def part(mask: torch.Tensor) -> tuple[int, float, float]:
        wrong = mask & ~right
        accuracy = float(right[mask].float().mean()) if bool(mask.any()) else math.nan
        return int(mask.sum()), accuracy, float(margin[wrong].mean()) if bool(wrong.any()) else math.nan

    def named(rows: list[dict]) -> tuple[dict, ...]:
        return tuple({**row, "group": group_names[row["group"]]} for row in rows)

    weights = dedier_weights(logits, labels, alpha=alpha, beta=beta)
    return ReadoutDiagnosis(
        stage=stage,
        by_group=named(readout_by_group(logits, labels, groups, len(group_names))),
        retrieval=tuple(confident_error_retrieval(logits, labels, minority, margin=m) for m in margins),
        weights=named(weights_by_group(weights, groups, len(group_names))),
        conflicting=part(minority),
        aligned=part(~minority),
    )
