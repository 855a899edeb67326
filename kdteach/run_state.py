"""The state of a fit() run between epochs: what it measured, what its checkpoint holds, and when that may be written.

fit() (kdteach.train) is the loop; this module is what the loop carries from epoch to epoch and puts on disk:
- `History` and `RunState`: the rows measured so far, the epoch selected, where the run stands;
- `save_run` and `restore_run`: a checkpoint with everything a resumed run needs to continue bitwise where this
  one stands (model, optimiser, scheduler, scaler, stateful losses, random streams), and its restoration, in full
  (resume=True) or weights only (resume="weights": weights, epoch, history and random streams, with the new
  optimiser and schedule the caller passes, for continuing at a lower learning rate);
- the good-weights rule: a checkpoint is written, or named as the last good one, only when its weights are good.
  After every epoch, and after a resume, `check_epoch_good` looks at the epoch's loss, at every floating tensor
  of the model, and at `probe_loss`: the cross-entropy of the model (eval mode) on the first rows of the training
  data. That probe must be finite and at most EXPLODED_FACTOR times the larger of the probe before training and
  ln(classes), the loss of a uniform guess. A learning rate that explodes in an epoch's last step records a finite
  loss (computed before the step) and leaves finite but enormous weights: only the probe sees it.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdteach.checkpoint import CheckpointError, check_signature, load_checkpoint, save_atomic, set_aside
from kdteach.data.batches import Batches
from kdteach.distill import autocast_context

# The probe's bound: this many times the larger of the probe before training and ln(classes). Cross-entropy on the
# run's own training rows does not grow a hundredfold in a run that is learning; an exploded step gives 1e3 to 1e6.
EXPLODED_FACTOR = 100.0
# Rows of the probe: the first rows of the training data in dataset order (no shuffling, no augmentation), at
# most one training batch, so it fits wherever training does.
PROBE_ROWS = 256


@dataclass
class History:
    """What fit() measured: one dict per epoch, and which epoch's weights the model ends with.

    Attributes:
        epochs: one dict per finished epoch ("epoch", "train_loss", "train_acc", "val_acc", ..., "seconds").
        best_epoch: the epoch whose weights were kept when fit() selected by a metric, else the last epoch.
        selected_by: the metric used for selection, or None (the last epoch is kept).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    selected_by: str | None = None

    def column(self, key: str) -> list[float]:
        """The values of one metric over epochs (NaN where an epoch did not record it)."""
        return [row.get(key, math.nan) for row in self.epochs]

    @property
    def last(self) -> dict[str, float]:
        """The last epoch's row."""
        return self.epochs[-1] if self.epochs else {}


@dataclass
class RunState:
    """What fit() carries from epoch to epoch, and what a checkpoint restores.

    Attributes:
        history: the rows so far.
        best_score, best_state: the selected epoch's metric and weights (fit(select=...)).
        next_epoch: the first epoch still to train.
        saved_epoch: the epoch of the checkpoint this run wrote or resumed from last (a good one), or None.
        probe_reference: the larger of the probe before training and ln(classes) (None: unlabelled data).
    """

    history: History
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    next_epoch: int = 0
    saved_epoch: int | None = None
    probe_reference: float | None = None


def final_logits(outputs: torch.Tensor) -> torch.Tensor:
    """The logits a metric reads: the last exit's for a multi-exit model's (exits, N, C), else outputs itself."""
    return outputs[-1] if outputs.dim() == 3 else outputs


def rng_state() -> dict[str, Any]:
    """The random streams a resumed run must continue (CPU, and every CUDA device when there is one)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores rng_state()'s streams."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Probe(NamedTuple):
    """The probe of a model's weights: cross-entropy on the first rows of the training data.

    Attributes:
        loss: the mean cross-entropy (NaN when the outputs are not finite).
        classes: the model's number of classes (0 when its outputs are not class logits).
        rows: how many rows it read.
    """

    loss: float
    classes: int
    rows: int


@torch.no_grad()
def probe_loss(model: nn.Module, train: Batches, *, device: torch.device, amp: bool) -> Probe | None:
    """Cross-entropy of model on the first rows of train, in eval mode (no dropout, no BatchNorm update).

    Reads no random stream and changes nothing, so a run with the probe ends bitwise where one without it would.

    Args:
        model: the network, on device.
        train: the training Batches (already on device).
        device: where model runs.
        amp: autocast as training does.

    Returns:
        Probe(loss, classes, rows); loss is NaN when the outputs are not finite. None when there is nothing to score (no
        labels "y", or outputs that are not class logits) and the outputs are finite.
    """
    rows = min(PROBE_ROWS, train.batch_size)
    x = train.tensors["x"][:rows]
    x = (train.transform(x) if train.transform is not None else x).to(device)
    was_training = model.training
    model.eval()
    try:
        with autocast_context(device) if amp else contextlib.nullcontext():
            logits = final_logits(model(x)).float()
    finally:
        model.train(was_training)
    finite = bool(torch.isfinite(logits).all())
    if "y" not in train.tensors or logits.dim() != 2:
        return None if finite else Probe(math.nan, 0, len(x))
    if not finite:
        return Probe(math.nan, logits.shape[1], len(x))
    return Probe(float(F.cross_entropy(logits, train.tensors["y"][:rows].to(device))), logits.shape[1], len(x))


def probe_reference(probe: Probe | None) -> float | None:
    """What the bound multiplies: the larger of the probe's loss (taken before training) and ln(classes)."""
    if probe is None or not math.isfinite(probe.loss):
        return None if probe is None or probe.classes < 2 else math.log(probe.classes)
    return max(probe.loss, math.log(probe.classes)) if probe.classes >= 2 else probe.loss


def _bound(reference: float | None, probe: Probe) -> float:
    floor = math.log(probe.classes) if probe.classes >= 2 else 0.0
    return EXPLODED_FACTOR * max(reference if reference is not None else 0.0, floor)


def _weights_finite(model: nn.Module) -> bool:
    # Every floating tensor of the state (parameters and buffers such as BatchNorm's statistics), reduced on the
    # device and read once.
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _probe_problem(probe: Probe | None, reference: float | None) -> str | None:
    # Why the probe says the weights are bad, in words, or None when they are good.
    if probe is None:
        return None
    rows = f"the first {probe.rows} training rows"
    if not math.isfinite(probe.loss):
        return f"give non-finite outputs on {rows}"
    bound = _bound(reference, probe)
    if probe.loss > bound:
        return (f"give a cross-entropy of {probe.loss:.4g} on {rows}, above the bound {bound:.4g} "
                f"({EXPLODED_FACTOR:g} x the larger of the loss before training and ln(classes))")
    return None


def check_epoch_good(train_loss: float, model: nn.Module, probe: Probe | None, reference: float | None, epoch: int,
                     good_checkpoint: Path | None, good_epoch: int | None) -> None:
    """Raises FloatingPointError unless the weights after an epoch are good: called BEFORE its checkpoint is written.

    Good means: the epoch's mean training loss is finite, every floating tensor of the model is finite, and the
    probe (probe_loss of these weights) is finite and at most EXPLODED_FACTOR x reference.

    Args:
        train_loss: the epoch's mean training loss (already read from the device).
        model: the model after the epoch.
        probe: probe_loss(model) after the epoch.
        reference: RunState.probe_reference.
        epoch: the epoch (0-based).
        good_checkpoint: the checkpoint this run last wrote or resumed from (its weights passed this check), or None.
        good_epoch: its epoch (0-based), or None.

    Raises:
        FloatingPointError: what went wrong, what to do, and the last good checkpoint (kept, not overwritten).
    """
    if not math.isfinite(train_loss):
        what = f"the training loss became {train_loss} in epoch {epoch + 1}"
    elif not _weights_finite(model):
        what = f"the weights became NaN or infinite in epoch {epoch + 1} (its losses were finite: a late step exploded)"
    else:
        problem = _probe_problem(probe, reference)
        if problem is None:
            return
        what = (f"the weights after epoch {epoch + 1} {problem}: a step exploded (the epoch's recorded loss, "
                f"{train_loss:.4g}, was taken before it)")
    advice = "Lower the learning rate (or clip the gradients with max_grad_norm), check the inputs for NaN, or check the loss function"
    where = "."
    if good_checkpoint is not None and good_epoch is not None:
        where = (f"; the last good checkpoint is {good_checkpoint}, written after epoch {good_epoch + 1}, and it was "
                 "kept (this epoch's was not written): delete it to start over, or continue from its weights with a "
                 "new optimiser at the lower rate: fit(..., resume='weights').")
    raise FloatingPointError(f"fit: {what}. {advice}{where}")


def check_resumed_good(path: Path, epoch: int, probe: Probe | None, reference: float | None, model: nn.Module) -> None:
    """Refuses to continue from a checkpoint whose weights are not good (one written before this rule, or by hand).

    Raises:
        FloatingPointError: naming the file and what to do.
    """
    problem = "are NaN or infinite" if not _weights_finite(model) else _probe_problem(probe, reference)
    if problem is not None:
        raise FloatingPointError(
            f"fit: the weights in checkpoint {path} (after epoch {epoch + 1}) {problem}: it is not a good checkpoint "
            "(written before kdteach checked weights, or changed since). Delete it and train again at a lower "
            "learning rate."
        )


def save_run(
    path: Path, run: RunState, signature: dict[str, Any], *, epoch: int, model: nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any | None, scaler: torch.amp.GradScaler, stateful: list[Any],
) -> None:
    """Writes everything a resumed run needs to continue exactly where this one stands after epoch (atomically).

    Call it only after check_epoch_good passed for these weights.
    """
    _WRITTEN_HERE.add(Path(path).resolve())
    save_atomic(
        {
            "signature": signature,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "stateful": [obj.state_dict() for obj in stateful],
            "rng": rng_state(),
            "epoch": epoch,
            "history": run.history.epochs,
            "best_epoch": run.history.best_epoch,
            "best_score": run.best_score,
            "best_state": run.best_state,
            "probe_reference": run.probe_reference,
        },
        path,
    )
    run.saved_epoch = epoch


# The training a process did not redo because it reloaded it from the cache: models, epochs and the seconds those
# epochs took when they ran (their history's "seconds"). provenance() takes it, so a result written after reloading
# its models still says what a run from an empty cache costs.
_REUSED = {"models": 0, "epochs": 0, "seconds": 0.0}
# Checkpoints this process wrote: reloading one later in the same run (a run that reuses its own model) is not
# training saved, since the wall time already holds it.
_WRITTEN_HERE: set[Path] = set()
_COUNTED: set[Path] = set()


def take_reused_training() -> dict[str, float]:
    """The training reloaded from checkpoints since the last call (restore_run counts each checkpoint once), then
    resets the count.

    Returns:
        {"models": checkpoints resumed or reloaded, "epochs": epochs restored, "seconds": their recorded training time}.
    """
    taken = {"models": _REUSED["models"], "epochs": _REUSED["epochs"], "seconds": round(float(_REUSED["seconds"]), 1)}
    _REUSED.update(models=0, epochs=0, seconds=0.0)
    _COUNTED.clear()
    return taken


def restore_run(
    path: Path, signature: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any | None, scaler: torch.amp.GradScaler, stateful: list[Any], device: torch.device, select: str | None,
    weights_only: bool = False,
) -> RunState | None:
    """Loads a checkpoint written by this same run into the training objects.

    Args:
        path: the checkpoint.
        signature: run_signature() of this run.
        model, optimizer, scheduler, scaler, stateful: the training objects, loaded in place.
        device: where the tensors go.
        select: fit()'s select (the restored history's selected_by).
        weights_only: resume="weights": load the weights, the epoch, the history, the stateful losses and the
            random streams, but keep the optimiser, scheduler and scaler as passed (fresh, at a new learning rate);
            the signature may then differ in the optimiser, the scheduler and max_grad_norm, and nowhere else.

    Returns:
        The run's state, or None when there is nothing to resume: no file, or an unreadable one, which is moved
        to `<name>.corrupt` with a warning (only for a full resume: resume="weights" names the problem instead).

    Raises:
        ValueError: the checkpoint was written by a different run (check_signature names the field).
        FileNotFoundError, CheckpointError: resume="weights" and no readable file at path.
    """
    if weights_only and not path.exists():
        raise FileNotFoundError(f"resume='weights' continues from an existing checkpoint, and there is none at {path}")
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, map_location=device)
    except CheckpointError as error:
        if weights_only:
            raise
        corrupt = set_aside(path)
        warnings.warn(f"fit: checkpoint {path} cannot be read ({error.reason}); moved it to {corrupt} and training "
                      "from scratch", stacklevel=3)
        return None
    check_signature(path, state.get("signature"), signature, new_optimizer=weights_only)
    model.load_state_dict(state["model"])
    if not weights_only:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    for obj, obj_state in zip(stateful, state.get("stateful", [])):
        obj.load_state_dict(obj_state)
    set_rng_state(state["rng"])
    history = History(epochs=list(state["history"]), best_epoch=state["best_epoch"], selected_by=select)
    if Path(path).resolve() not in _WRITTEN_HERE | _COUNTED:  # a checkpoint reloaded twice saved its training once
        _COUNTED.add(Path(path).resolve())
        _REUSED["models"] += 1
        _REUSED["epochs"] += len(history.epochs)
        _REUSED["seconds"] += sum(float(row.get("seconds", 0.0)) for row in history.epochs)
    return RunState(history, state["best_score"], state.get("best_state"), next_epoch=state["epoch"] + 1,
                    saved_epoch=state["epoch"], probe_reference=state.get("probe_reference"))


def keep_if_best(run: RunState, row: dict[str, float], select: str | None, model: nn.Module, epoch: int) -> None:
    """Records epoch as the selected one when it is the last (select None) or beats the best score so far."""
    if select is None:
        run.history.best_epoch = epoch
        return
    if select not in row:
        raise KeyError(f"select={select!r} is not among the recorded metrics {sorted(row)}")
    if row[select] > run.best_score:
        run.best_score, run.history.best_epoch = row[select], epoch
        run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
