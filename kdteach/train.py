"""One training loop for every model in the course: fit(), evaluate() and predict().

What makes it fast on a GPU, and why:
- data already on the device (kdteach.data.Batches): no DataLoader, no host-to-device copy per batch;
- bf16 autocast where supported (fp16 with a gradient scaler otherwise, fp32 on CPU);
- channels_last for image models, which cuDNN's convolutions prefer under autocast;
- no host synchronisation inside the step: the running loss and accuracy are summed on the device and read once
  per epoch, so the CPU can queue the next steps while the GPU works.

What makes it safe: a checkpoint after every epoch, written atomically (a temporary file, then a rename) and
loaded with weights_only=True; resume=True continues from it and ends with the weights an uninterrupted run has.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdteach.data.batches import Batch, Batches
from kdteach.distill import autocast_context

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy_loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Plain ERM: mean cross-entropy of the logits against batch["y"]; uses batch["weight"] when present."""
    per_example = F.cross_entropy(outputs.float(), batch["y"], reduction="none")
    if "weight" in batch:
        per_example = per_example * batch["weight"]
    return per_example.mean()


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


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with weights_only=True (tensors and plain containers only, no pickled code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _stateful(*objects: Any) -> list[Any]:
    # Losses and callbacks that carry state across epochs (Group DRO's group weights, DeDiER's instance weights)
    # expose state_dict / load_state_dict, and are checkpointed with the model.
    return [o for o in objects if hasattr(o, "state_dict") and hasattr(o, "load_state_dict") and not isinstance(o, nn.Module)]


def _final_logits(outputs: torch.Tensor) -> torch.Tensor:
    # Multi-exit models return (exits, N, C); accuracy is reported for the last exit.
    return outputs[-1] if outputs.dim() == 3 else outputs


def _check_labels_once(outputs: torch.Tensor, batches: Batches) -> None:
    # One look at the whole label tensor before training (not every step): a clear error instead of a CUDA assert.
    if "y" not in batches.tensors:
        return
    logits = _final_logits(outputs)
    if logits.dim() != 2:
        return
    y = batches.tensors["y"]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"labels (batches 'y') must be in [0, {logits.shape[1]}) for this model, got values in [{low}, {high}]")


def fit(
    model: nn.Module,
    train: Batches,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn = cross_entropy_loss,
    scheduler: Any | None = None,
    val: Batches | None = None,
    metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    select: str | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    device: torch.device | str | None = None,
    amp: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    max_grad_norm: float | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "fit",
) -> History:
    """Trains model on train for a number of epochs; see the module docstring for what it does for speed and safety.

    Args:
        model: the network; moved to device. If it has apply_constraints() (max-norm), that runs after each step.
        train: training Batches (moved to device once if elsewhere).
        epochs: total number of epochs (with resume, the run continues until this many are done).
        optimizer: an optimiser over model's parameters.
        loss_fn: (outputs, batch) -> scalar loss; batch holds "x", "y", "index" and any other tensors of train.
        scheduler: optional LR scheduler, stepped after every optimiser step.
        val: optional validation Batches; adds "val_loss" and "val_acc" to each epoch's row.
        metrics: optional model -> {name: value}, called after every epoch (e.g. validation worst-group accuracy).
        select: a row key to maximise (e.g. "val_acc"); the model ends with that epoch's weights. None: last epoch.
        on_epoch_end: optional (epoch, model) -> dict|None, called after each epoch before metrics (e.g. to retrain
            an early readout and recompute instance weights); a returned dict is added to the row.
        device: where to train; None uses the model's device.
        amp: autocast on CUDA (bf16 where supported, else fp16 with a gradient scaler); ignored on CPU.
        channels_last: use the channels_last memory format for 4-D inputs and the model.
        compile: wrap the model in torch.compile for the training steps.
        max_grad_norm: clip the gradients' total norm to this before each step (None: no clipping; BERT's
            fine-tuning recipe uses 1.0).
        checkpoint: file to write after every epoch (atomically); None disables checkpoints.
        resume: continue from checkpoint if it exists (a finished run returns at once with its history).
        progress: show tqdm progress bars.
        desc: label of the progress bar.

    Returns:
        The History of the run.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    if len(train) == 0:
        raise ValueError("train has no batches (is the dataset empty, or drop_last with too few rows?)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if train.device != device:
        train.to(device)
    if val is not None and val.device != device:
        val.to(device)

    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    step_model = torch.compile(model) if compile else model
    stateful = _stateful(loss_fn, on_epoch_end)
    history = History(selected_by=select)
    best_score, best_state = -math.inf, None
    start_epoch = 0

    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        for obj, obj_state in zip(stateful, state.get("stateful", [])):
            obj.load_state_dict(obj_state)
        _set_rng_state(state["rng"])
        history = History(epochs=list(state["history"]), best_epoch=state["best_epoch"], selected_by=select)
        best_score = state["best_score"]
        best_state = state.get("best_state")
        start_epoch = state["epoch"] + 1

    checked_labels = False
    epoch_bar = tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, initial=start_epoch, total=epochs)
    for epoch in epoch_bar:
        started = time.perf_counter()
        model.train()
        train.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for batch in tqdm(train, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            x = batch["x"]
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device) if use_amp else contextlib.nullcontext():
                outputs = step_model(x)
                if not checked_labels:
                    _check_labels_once(outputs, train)
                    checked_labels = True
                loss = loss_fn(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if max_grad_norm is not None:
                scaler.unscale_(optimizer)
                # No host sync: the norm and the clipping factor stay on the device.
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            if hasattr(model, "apply_constraints"):
                model.apply_constraints()
            n = len(batch["index"])
            seen += n
            loss_sum += loss.detach().float() * n
            if "y" in batch:
                logits = _final_logits(outputs.detach())
                if logits.dim() == 2:
                    correct += (logits.argmax(dim=1) == batch["y"]).sum()

        row: dict[str, float] = {"epoch": float(epoch), "train_loss": float(loss_sum) / seen}
        if not math.isfinite(row["train_loss"]):
            where = f"; the last good checkpoint is {checkpoint}" if checkpoint and Path(checkpoint).exists() else ""
            raise FloatingPointError(
                f"fit: the training loss became {row['train_loss']} in epoch {epoch + 1}. Lower the learning rate, "
                f"check the inputs for NaN, or check the loss function{where}."
            )
        if "y" in train.tensors:
            row["train_acc"] = float(correct) / seen
        if on_epoch_end is not None:
            row.update(on_epoch_end(epoch, model) or {})
        if val is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, val, device=device, amp=amp).items() if k in ("loss", "accuracy")})
            row["val_acc"] = row.pop("val_accuracy")
        if metrics is not None:
            row.update(metrics(model))
        row["seconds"] = time.perf_counter() - started
        history.epochs.append(row)

        if select is not None:
            if select not in row:
                raise KeyError(f"select={select!r} is not among the recorded metrics {sorted(row)}")
            if row[select] > best_score:
                best_score, history.best_epoch = row[select], epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            history.best_epoch = epoch
        epoch_bar.set_postfix({k: round(v, 4) for k, v in row.items() if k in ("train_loss", "train_acc", "val_acc")})

        if checkpoint is not None:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "stateful": [obj.state_dict() for obj in stateful],
                    "rng": _rng_state(),
                    "epoch": epoch,
                    "history": history.epochs,
                    "best_epoch": history.best_epoch,
                    "best_score": best_score,
                    "best_state": best_state,
                },
                checkpoint,
            )

    if select is not None and best_state is not None:
        model.load_state_dict(best_state)
    return history


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, *, device: torch.device | str | None = None, amp: bool = True) -> torch.Tensor:
    """Runs model over batches in eval mode and returns its outputs in dataset order.

    Args:
        model: the network.
        batches: Batches (shuffling is ignored: rows come back in dataset order).
        device: where to run; None uses the model's device.
        amp: autocast on CUDA.

    Returns:
        float32 outputs: (N, C) for a classifier, (exits, N, C) for a multi-exit model.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    ordered = Batches(batches.tensors, batches.batch_size, shuffle=False, transform=batches.transform)
    outputs = []
    for batch in ordered:
        x = batch["x"].to(device)
        with autocast_context(device) if amp else contextlib.nullcontext():
            outputs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outputs, dim=1 if outputs[0].dim() == 3 else 0)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, device: torch.device | str | None = None, amp: bool = True) -> dict[str, float]:
    """Accuracy, error count and cross-entropy of model on labelled batches (last exit for multi-exit models).

    Args:
        model: a classifier.
        batches: Batches with "x" and "y".
        device: where to run; None uses the model's device.
        amp: autocast on CUDA.

    Returns:
        {"accuracy", "errors", "n", "loss"}.
    """
    if "y" not in batches.tensors:
        raise ValueError("evaluate needs labelled batches (a 'y' tensor)")
    logits = _final_logits(predict(model, batches, device=device, amp=amp))
    y = batches.tensors["y"].to(logits.device)
    errors = int((logits.argmax(dim=1) != y).sum())
    return {
        "accuracy": 1.0 - errors / len(y),
        "errors": float(errors),
        "n": float(len(y)),
        "loss": float(F.cross_entropy(logits, y)),
    }
