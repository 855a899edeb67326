"""One training loop for every model in the course: fit(), evaluate() and predict().

What makes it fast on a GPU, and why:
- data already on the device (kdteach.data.Batches): no DataLoader, no host-to-device copy per batch;
- autocast by runtime.amp_dtype: bf16 on GPUs that have it natively (compute capability 8.0+), fp16 with a
  gradient scaler on older ones (a Colab T4), float32 on a CPU;
- channels_last for image models, which cuDNN's convolutions prefer under autocast;
- no host synchronisation inside the step (train_one_epoch): the running loss and accuracy are summed on the
  device and read once per epoch, so the CPU can queue the next steps while the GPU works.

What it promises:
- Checked inputs. Before the first step, fit() looks at the first rows of train (and val): x's dtype and its
  shape against the model (one forward of two rows in eval mode), y integer and in range of the model's classes.
  predict() and evaluate() check their first batch the same way. A mismatch is a ValueError naming the argument
  ("train['y'] must be in [0, 3) ..."), not a traceback from inside torch.
- Checkpoints after every epoch, written atomically and loaded with weights_only=True; resume=True continues
  from one and ends with the weights an uninterrupted run has.
- A checkpoint carries the signature of the run that wrote it (epochs, training rows, batch size, parameter
  shapes, optimiser and scheduler with their hyperparameters, loss); resume refuses one that differs, naming the
  file and the field. A checkpoint that cannot be read is moved to `<name>.corrupt` with a warning and the run
  starts from scratch; temporary files left by a kill during a write are removed (only those whose process is gone).
- Runs that share a cache are kept apart: fit() holds the checkpoint's file lock (checkpoint.checkpoint_lock) for
  the whole run, so a second process asking for the same checkpoint waits, then resumes from (or loads) the file
  the first one finished; no run deletes or overwrites the files of a live one.
- The good-weights rule (kdteach.run_state): after each epoch fit() reads the loss sum, checks that the weights
  are finite, and probes them (cross-entropy in eval mode on the first training rows, at most 100 x the larger of
  the probe before training and ln(classes)), BEFORE the epoch's checkpoint is written. A blow-up, including a
  learning rate that explodes in an epoch's last step, raises FloatingPointError naming the last good checkpoint
  and its epoch; the exploded weights never replace it, and fit(resume="weights") continues from it with a new
  optimiser at a lower rate.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdteach.checkpoint import (  # noqa: F401 - save_atomic and load_checkpoint were public here first
    checkpoint_lock,
    load_checkpoint,
    remove_stale_temporaries,
    run_signature,
    save_atomic,
)
from kdteach.checks import check_int, check_labels, check_not_empty, check_number
from kdteach.data.batches import Batch, Batches
from kdteach.distill import autocast_context
from kdteach.run_state import (  # noqa: F401 - History was defined here first; experiments import it from here
    History,
    RunState,
    check_epoch_good,
    check_resumed_good,
    final_logits,
    keep_if_best,
    probe_loss,
    probe_reference,
    restore_run,
    save_run,
)
from kdteach.runtime import amp_dtype

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy_loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Plain ERM: mean cross-entropy of the logits against batch["y"] (instance weights: debias.WeightedCrossEntropy)."""
    per_example = F.cross_entropy(outputs.float(), batch["y"], reduction="none")
    return per_example.mean()


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """The gradient scaler fit() uses: enabled exactly when the precision rule picks fp16 (runtime.amp_dtype)."""
    return torch.amp.GradScaler("cuda", enabled=amp and amp_dtype(device) == torch.float16)


def _stateful(*objects: Any) -> list[Any]:
    # Losses and callbacks that carry state across epochs (Group DRO's group weights, DeDiER's instance weights)
    # expose state_dict / load_state_dict, and are checkpointed with the model.
    return [o for o in objects if hasattr(o, "state_dict") and hasattr(o, "load_state_dict") and not isinstance(o, nn.Module)]


def _check_batches(batches: Any, name: str) -> None:
    # What can be said without the model: a Batches with rows, an "x", and integer labels if it has "y".
    if not isinstance(batches, Batches):
        raise ValueError(f"{name} must be kdteach.data.Batches, got {type(batches).__name__}")
    if "x" not in batches.tensors:
        raise ValueError(f"{name} has no 'x' tensor (it holds {sorted(batches.tensors)})")
    check_not_empty(name, batches.tensors["x"])
    if "y" in batches.tensors:  # fit() and evaluate() read "y" as class indices
        check_labels(f"{name}['y']", batches.tensors["y"], batches.n, None)


def _forward_checked(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """model(x) for the first batch of name: a dtype or shape the model does not take becomes a ValueError."""
    try:
        return model(x)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not x.is_floating_point() and not any(isinstance(m, nn.Embedding) for m in model.modules()):
            raise ValueError(
                f"{name}['x'] holds {x.dtype}, but the model has no embedding layer and needs floating-point inputs "
                f"(for uint8 images pass Batches(transform=...) that converts them); torch said \"{reason}\""
            ) from error
        raise ValueError(
            f"{name}['x'] does not fit the model: rows of shape {tuple(x.shape[1:])} ({x.dtype}) gave \"{reason}\"; "
            "check the data against the model's input size"
        ) from error


def _check_label_range(name: str, batches: Batches, outputs: torch.Tensor) -> None:
    # One look at the whole label tensor (min and max: one wait for a GPU, once per call, never per step).
    logits = final_logits(outputs)
    if "y" in batches.tensors and logits.dim() == 2:
        check_labels(f"{name}['y']", batches.tensors["y"], batches.n, logits.shape[1], check_values=True)


@torch.no_grad()
def check_first_batch(model: nn.Module, batches: Batches, name: str, *, device: torch.device, amp: bool = True) -> None:
    """Checks batches against model before training, naming the argument in every error.

    One forward of the first two rows in eval mode: no dropout draw, no BatchNorm update and no shuffling, so the
    check leaves the random streams and the model exactly as they were (resume stays bitwise equal).

    Args:
        model: the network, already on device.
        batches: the Batches fit() will train or validate on.
        name: the argument's name for messages ("train", "val").
        device: where model runs.
        amp: autocast as training will.

    Raises:
        ValueError: no rows; no "x"; x of a dtype or shape the model does not take; "y" not integer or out of
            range of the model's outputs.
    """
    _check_batches(batches, name)
    x = batches.tensors["x"][:2]
    x = (batches.transform(x) if batches.transform is not None else x).to(device)
    was_training = model.training
    model.eval()
    try:
        with autocast_context(device) if amp else contextlib.nullcontext():
            outputs = _forward_checked(model, x, name)
    finally:
        model.train(was_training)
    _check_label_range(name, batches, outputs)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    step_model: nn.Module | None = None,
    amp: bool = False,
    channels_last: bool = False,
    max_grad_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over batches: forward, loss, backward, clip, optimiser and scheduler step, constraints.

    Nothing here reads a value back from the GPU (no float(loss), no .item(), no check of a tensor's values): the
    CPU only queues kernels and runs ahead of the GPU, which is what keeps small models fast. The loss and the
    correct count are summed into device tensors; the caller reads them once per epoch. A NaN or inf in any step
    stays in the loss sum, so that one read also tells whether the epoch stayed finite. (In fp16 mode GradScaler
    itself reads its overflow flag at each step; bf16 and float32 have no scaler.)

    Args:
        model: the network (gradients are clipped over its parameters; apply_constraints() runs after each step).
        batches: the epoch's batches (set_epoch already called).
        optimizer: the optimiser.
        loss_fn: (outputs, batch) -> scalar loss.
        scheduler: stepped after every optimiser step, if given.
        scaler: the gradient scaler (grad_scaler()); None: a disabled one.
        step_model: what runs the forward (model wrapped in torch.compile); None: model.
        amp: autocast by the precision rule.
        channels_last: 4-D inputs in channels_last memory format.
        max_grad_norm: clip the gradients' total norm to this (None: no clipping).

    Returns:
        (loss summed over rows, correct predictions, rows), the sums as device tensors.
    """
    device = next(model.parameters()).device
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
    step_model = step_model if step_model is not None else model
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in batches:
        x = batch["x"]
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device) if amp else contextlib.nullcontext():
            outputs = step_model(x)
            loss = loss_fn(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            # The norm and the clipping factor stay on the device: clip_grad_norm_ returns a tensor we never read.
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if hasattr(model, "apply_constraints"):
            model.apply_constraints()
        n = len(batch["index"])  # a shape, known on the host
        seen += n
        loss_sum += loss.detach().float() * n
        if "y" in batch:
            logits = final_logits(outputs.detach())
            if logits.dim() == 2:
                correct += (logits.argmax(dim=1) == batch["y"]).sum()
    return loss_sum, correct, seen


def _check_fit_arguments(model: nn.Module, train: Batches, epochs: Any, optimizer: Any, loss_fn: Any,
                         max_grad_norm: Any, checkpoint: Any, resume: Any) -> None:
    check_int("epochs", epochs, minimum=1)
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
    if not (isinstance(resume, bool) or (isinstance(resume, str) and resume == "weights")):
        raise ValueError(f"resume must be False, True or 'weights', got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError(f"resume={resume!r} needs a checkpoint path")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (outputs, batch) -> loss, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer holds none of model's parameters (was it built for another model?)")
    _check_batches(train, "train")
    if len(train) == 0:
        raise ValueError("train has no batches (drop_last with fewer rows than batch_size?)")


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
    resume: bool | Literal["weights"] = False,
    progress: bool = True,
    desc: str = "fit",
) -> History:
    """Trains model on train for a number of epochs; see the module docstring for what it does for speed and safety.

    Args:
        model: the network; moved to device. If it has apply_constraints() (max-norm), that runs after each step.
        train: training Batches (moved to device once if elsewhere); its first rows are checked against model.
        epochs: total number of epochs, an int >= 1 (with resume, the run continues until this many are done).
        optimizer: an optimiser over model's parameters.
        loss_fn: (outputs, batch) -> scalar loss; batch holds "x", "y", "index" and any other tensors of train.
        scheduler: optional LR scheduler, stepped after every optimiser step.
        val: optional validation Batches; adds "val_loss" and "val_acc" to each epoch's row.
        metrics: optional model -> {name: value}, called after every epoch (e.g. validation worst-group accuracy).
        select: a row key to maximise (e.g. "val_acc"); the model ends with that epoch's weights. None: last epoch.
        on_epoch_end: optional (epoch, model) -> dict|None, called after each epoch before metrics (e.g. to retrain
            an early readout and recompute instance weights); a returned dict is added to the row.
        device: where to train; None uses the model's device.
        amp: autocast on CUDA by runtime.amp_dtype (bf16 on compute capability 8.0+, else fp16 with a gradient
            scaler); ignored on CPU.
        channels_last: use the channels_last memory format for 4-D inputs and the model.
        compile: wrap the model in torch.compile for the training steps.
        max_grad_norm: clip the gradients' total norm to this before each step (None: no clipping; BERT's
            fine-tuning recipe uses 1.0).
        checkpoint: file to write after every epoch (atomically); None disables checkpoints. Its lock
            (checkpoint.checkpoint_lock) is held for the whole call: another process training the same file waits.
        resume: True: continue from checkpoint if it exists and was written by this same run (same signature; a
            different run is a ValueError naming the field). A finished run returns at once with its history; an
            unreadable file is moved to `<name>.corrupt` and the run starts from scratch. "weights": continue from
            the checkpoint's weights, epoch, history and random streams with the optimizer and scheduler passed
            here, fresh (their state in the file is not loaded). Asked for explicitly, it is the way to go on from
            the last good checkpoint at a lower learning rate after a blow-up, without deleting the file; the
            signature may differ in the optimiser, the scheduler and max_grad_norm only, so build the scheduler
            for the epochs still to run. The next checkpoint carries the new optimiser's signature.
        progress: show one tqdm progress bar over the epochs.
        desc: label of the progress bar.

    Returns:
        The History of the run.

    Raises:
        ValueError: a bad argument, data that do not fit the model, or a checkpoint of a different run.
        FloatingPointError: the loss or the weights became NaN, infinite or exploded (run_state's good-weights rule:
            the last good checkpoint is kept and named), or the checkpoint resumed from holds such weights.
    """
    _check_fit_arguments(model, train, epochs, optimizer, loss_fn, max_grad_norm, checkpoint, resume)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if train.device != device:
        train.to(device)
    if val is not None and val.device != device:
        val.to(device)
    check_first_batch(model, train, "train", device=device, amp=amp)
    if val is not None:
        check_first_batch(model, val, "val", device=device, amp=amp)

    use_amp = amp and device.type == "cuda"
    scaler = grad_scaler(device, use_amp)
    step_model = torch.compile(model) if compile else model
    stateful = _stateful(loss_fn, on_epoch_end)
    # Taken before anything is loaded or stepped, so a first run and its resumed rerun compute the same signature.
    signature = run_signature(
        epochs=epochs, model=model, rows=train.n, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        settings={"train.batch_size": train.batch_size, "train.drop_last": train.drop_last, "train.shuffle": train.shuffle,
                  "train.seed": train.seed, "select": select, "max_grad_norm": max_grad_norm},
        on_epoch_end=on_epoch_end,
    )
    path = Path(checkpoint) if checkpoint is not None else None
    # Held for the whole run: a second process asking for the same checkpoint waits here, then loads the result.
    with checkpoint_lock(path) if path is not None else contextlib.nullcontext():
        run = None
        if path is not None:
            remove_stale_temporaries(path)
            if resume:
                training = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, stateful=stateful)
                run = restore_run(path, signature, device=device, select=select, weights_only=resume == "weights", **training)
        probe = probe_loss(model, train, device=device, amp=amp)
        if run is None:  # from scratch: the probe of the initial weights is the reference of the bound
            run = RunState(History(selected_by=select), probe_reference=probe_reference(probe))
        else:  # resumed: a file is named as the last good one only if its weights pass the rule too
            check_resumed_good(path, run.next_epoch - 1, probe, run.probe_reference, model)
        epoch_bar = tqdm(range(run.next_epoch, epochs), desc=desc, disable=not progress, initial=run.next_epoch, total=epochs)
        for epoch in epoch_bar:
            started = time.perf_counter()
            model.train()
            train.set_epoch(epoch)
            loss_sum, correct, seen = train_one_epoch(
                model, train, optimizer=optimizer, loss_fn=loss_fn, scheduler=scheduler, scaler=scaler, step_model=step_model,
                amp=use_amp, channels_last=channels_last, max_grad_norm=max_grad_norm,
            )
            row: dict[str, float] = {"epoch": float(epoch), "train_loss": float(loss_sum) / seen}  # the epoch's one read
            # Before anything else reads the weights, and before they may be written: only good weights are saved.
            probe = probe_loss(model, train, device=device, amp=amp) if math.isfinite(row["train_loss"]) else None
            check_epoch_good(row["train_loss"], model, probe, run.probe_reference, epoch,
                             path if run.saved_epoch is not None else None, run.saved_epoch)
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
            run.history.epochs.append(row)
            keep_if_best(run, row, select, model, epoch)
            epoch_bar.set_postfix({k: round(v, 4) for k, v in row.items() if k in ("train_loss", "train_acc", "val_acc")})
            if path is not None:
                save_run(path, run, signature, epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                         scaler=scaler, stateful=stateful)

    if select is not None and run.best_state is not None:
        model.load_state_dict(run.best_state)
    return run.history


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, *, device: torch.device | str | None = None, amp: bool = True) -> torch.Tensor:
    """Runs model over batches in eval mode and returns its outputs in dataset order.

    Args:
        model: the network.
        batches: Batches with rows and an "x" (shuffling is ignored: rows come back in dataset order); a first
            batch the model does not take is a ValueError naming `batches`.
        device: where to run; None uses the model's device.
        amp: autocast on CUDA.

    Returns:
        float32 outputs: (N, C) for a classifier, (exits, N, C) for a multi-exit model.
    """
    _check_batches(batches, "batches")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    ordered = Batches(batches.tensors, batches.batch_size, shuffle=False, transform=batches.transform)
    outputs = []
    try:
        for batch in ordered:
            x = batch["x"].to(device)
            with autocast_context(device) if amp else contextlib.nullcontext():
                out = model(x) if outputs else _forward_checked(model, x, "batches")
            outputs.append(out.float())
    finally:
        model.train(was_training)
    return torch.cat(outputs, dim=1 if outputs[0].dim() == 3 else 0)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, device: torch.device | str | None = None, amp: bool = True) -> dict[str, float]:
    """Accuracy, error count and cross-entropy of model on labelled batches (last exit for multi-exit models).

    Args:
        model: a classifier.
        batches: Batches with "x" and integer "y" in range of the model's classes, at least one row.
        device: where to run; None uses the model's device.
        amp: autocast on CUDA.

    Returns:
        {"accuracy", "errors", "n", "loss"}.
    """
    if isinstance(batches, Batches) and "y" not in batches.tensors:
        raise ValueError("evaluate needs labelled batches (a 'y' tensor)")
    outputs = predict(model, batches, device=device, amp=amp)
    _check_label_range("batches", batches, outputs)
    logits = final_logits(outputs)
    y = batches.tensors["y"].to(logits.device)
    errors = int((logits.argmax(dim=1) != y).sum())
    return {
        "accuracy": 1.0 - errors / len(y),
        "errors": float(errors),
        "n": float(len(y)),
        "loss": float(F.cross_entropy(logits, y)),
    }


def optimizer_and_schedule(
    model: nn.Module,
    *,
    total_steps: int,
    lr: float,
    weight_decay: float = 0.0,
    kind: str = "adamw",
    schedule: str = "cosine",
    warmup_fraction: float = 0.0,
    warmup_steps: int | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimiser and learning-rate schedule of every experiment (only trainable parameters are optimised).

    Args:
        model: the network.
        total_steps: optimiser steps of the whole run (the schedule's length).
        lr: the (peak) learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        kind: "adamw", "adam" or "sgd" (Nesterov momentum 0.9).
        schedule: "cosine" (to zero), "onecycle", "linear" (warm-up, then linear decay to zero) or "constant".
        warmup_fraction: share of steps of linear warm-up for "linear".
        warmup_steps: the warm-up as a number of steps instead (overrides warmup_fraction; BERT's recipe counts steps).

    Returns:
        (optimizer, scheduler or None), to pass to fit().
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif kind == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        raise ValueError(f"kind must be 'adamw', 'adam' or 'sgd', got {kind!r}")
    if schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "onecycle":
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    if schedule == "linear":
        warmup = max(1, warmup_steps if warmup_steps is not None else int(warmup_fraction * total_steps))

        def factor(step: int) -> float:
            return (step + 1) / warmup if step < warmup else max(0.0, (total_steps - step) / max(1, total_steps - warmup))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if schedule == "constant":
        return optimizer, None
    raise ValueError(f"schedule must be 'cosine', 'onecycle', 'linear' or 'constant', got {schedule!r}")
