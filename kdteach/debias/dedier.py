"""Early readouts and DeDiER's per-example weights (Tiwari et al., WACV 2024): a small head on an early stage of the
student, its confidence margin, and the weights exp(beta * margin**alpha) on the examples it gets wrong; the
reweighting that retrains the readout every epoch and hands fit() the weights.

Implemented as the paper describes it, not as the official code does: the readout never moves the student's
BatchNorm statistics, the weights are recomputed from scratch every epoch, nothing is frozen, and any number of
classes works. DeDiERReweighting has switches that reproduce the official code's behaviour, for comparison.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdteach import checks
from kdteach.data.batches import Batches
from kdteach.distill import autocast_context

__all__ = [
    "check_readout",
    "confidence_margin",
    "dedier_weights",
    "student_left_as_is",
    "parameters_upto",
    "EarlyReadout",
    "DeDiERReweighting",
]


def check_readout(readout_logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuses readout logits that are not (N, C >= 2) and finite, or labels that are not (N,) in [0, C), by name."""
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
    check_readout(readout_logits, labels)
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

    @property
    def first_reweighted_epoch(self) -> int:
        """The first epoch (0-based) trained with readout weights: THE rule for which epochs a DeDiER student may keep.

        Epochs before it are plain KD, so keeping one would count a KD model as DeDiER. Notebooks 03 and 04 and the
        capstone pass it as the first eligible epoch of epoch selection (kdteach.groups.selection_rule).
        """
        return self.start_after

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
