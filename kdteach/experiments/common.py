"""The plumbing every experiment shares: configs by mode, one train-or-load, CPU threads.

The optimiser builder lives in kdteach.train and the group-robustness validation metrics and epoch-selection rule
in kdteach.groups; they are re-exported here because every experiment reaches them as common.*. What runs a model
through kdteach.train.predict to score groups (selection_metrics, score_groups) lives here, not in kdteach.groups:
kdteach.train imports kdteach.data, which imports kdteach.groups, so groups cannot import train.

One train-or-load: every model an experiment trains (teachers and students, JTT's identification run, every sweep
member) goes through `train_or_load`, which keys its checkpoint by every value that decides the model, writes it
after each epoch and resumes from it. fit() itself refuses a checkpoint whose run signature differs, so a stale
file can never be reused silently even if a key missed a field.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from kdteach import runtime
from kdteach.data.batches import Batches
from kdteach.data.grouped import GroupedData
from kdteach.groups import SELECTION, TIE_BREAK, GroupMetrics, group_metrics, group_val_metrics, selection_rule  # noqa: F401 - used by experiments as common.*
from kdteach.train import History, fit, optimizer_and_schedule, predict  # noqa: F401 - used by experiments as common.*

C = TypeVar("C")


def config_for(mode: str | None, *, smoke: C, full: C) -> C:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE.

    Args:
        mode: "smoke", "full" or None.
        smoke, full: the two configurations.

    Returns:
        smoke or full.
    """
    mode = mode or runtime.mode()
    if mode not in ("smoke", "full"):
        raise ValueError(f"mode must be 'smoke' or 'full', got {mode!r}")
    return smoke if mode == "smoke" else full


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__class__": type(value).__qualname__, **{f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):  # a tensor decides a model by its content (e.g. a training subset)
        return hashlib.sha1(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return repr(value)


def run_key(*parts: Any) -> str:
    """A short stable hash of everything that decides a model (dataclass configs, names, seeds, tensors).

    Args:
        parts: the values; dataclasses are hashed field by field with their class name.

    Returns:
        12 hex digits.
    """
    text = json.dumps([_canonical(p) for p in parts], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def fields_of(config: Any, names: Sequence[str]) -> dict[str, Any]:
    """{name: value} of some fields of a config dataclass: the part of it that decides one model (for checkpoint_path).

    Args:
        config: the configuration.
        names: the fields that decide the model (an experiment lists them, and a test checks that every other field
            is named as not deciding).

    Returns:
        The fields and their values, in the order given.
    """
    missing = [name for name in names if not hasattr(config, name)]
    if missing:
        raise ValueError(f"names holds fields {type(config).__name__} does not have: {missing}")
    return {name: getattr(config, name) for name in names}


def checkpoint_path(experiment: str, role: str, *decides: Any) -> Path:
    """Where a model is kept: cache_dir()/EXPERIMENT/ROLE-KEY.pt, KEY = run_key(role, *decides).

    Args:
        experiment: the experiment's name (a folder).
        role: what the model is ("teacher", "kd-student", ...), readable in the file name.
        decides: every value that decides the model: the config, the seed, the data source, ...

    Returns:
        The path (its folder is created).
    """
    folder = runtime.cache_dir() / experiment
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{role}-{run_key(role, *decides)}.pt"


def threads_for(train: Batches, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The CPU thread rule of every experiment, as a context manager: runtime.threads_for_rows on train's rows."""
    return runtime.cpu_threads(runtime.threads_for_rows(train.n, device))


def train_or_load(
    model: nn.Module,
    train: Batches,
    *,
    path: Path,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    device: torch.device | str,
    progress: bool = True,
    desc: str = "fit",
    **fit_kwargs: Any,
) -> History:
    """THE way an experiment trains a model: fit() with a checkpoint at `path`, resumed when it exists.

    A finished run reloads at once (its history comes back from the checkpoint); an interrupted one continues from
    its last epoch and ends where an uninterrupted run would. Build `path` with checkpoint_path() from every value
    that decides the model.

    Args:
        model: the network (trained in place; it ends in eval mode).
        train: the training Batches.
        path: the checkpoint file.
        epochs: epochs of the run.
        optimizer, scheduler: from optimizer_and_schedule().
        device: where to train.
        progress: one progress bar for the run.
        desc: the bar's label.
        fit_kwargs: anything else fit() takes (loss_fn, metrics, select, on_epoch_end, val, max_grad_norm, ...).

    Returns:
        fit()'s History.
    """
    with threads_for(train, device):
        history = fit(model, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler, device=device,
                      checkpoint=path, resume=True, progress=progress, desc=desc, **fit_kwargs)
    model.eval()
    return history


def train_or_load_adamw(model: nn.Module, train: Batches, *, path: Path, epochs: int, lr: float, weight_decay: float,
                        device: torch.device | str, **kwargs: Any) -> History:
    """train_or_load() with optimizer_and_schedule()'s AdamW and a cosine schedule to zero over the whole run (the
    recipe of notebooks 02 and 03); kwargs go to train_or_load (progress, desc, loss_fn, metrics, select, ...)."""
    optimizer, scheduler = optimizer_and_schedule(model, total_steps=epochs * len(train), lr=lr, weight_decay=weight_decay)
    return train_or_load(model, train, path=path, epochs=epochs, optimizer=optimizer, scheduler=scheduler, device=device, **kwargs)




# Scoring groups: a model run through predict() on a grouped split, for fit()'s epoch choice and for the test table.


def selection_metrics(val: GroupedData, train: Batches, *, by: str = "val_mean_group", first_epoch: int = 0,
                      batch_size: int = 512) -> Callable[[nn.Module], dict[str, float]]:
    """fit()'s `metrics` for a group-robustness run: group_val_metrics on val, plus the epoch-selection rule of
    notebooks 02 and 03 as the column SELECTION (pass select=SELECTION to fit()).

    The rule (kdteach.groups.selection_rule): keep the epoch with the best `by` among epochs >= first_epoch (earlier
    ones score -inf, so a model can never be kept from before, e.g., DeDiER's first reweighting); exact ties go to the
    LATER epoch (score = value + TIE_BREAK * epoch), never silently to epoch 0.

    Args:
        val: the validation split.
        train: the training Batches fit() runs on (fit sets train.epoch before each epoch: the epoch counted here).
        by: "val_mean_group" (mean over groups, as in the official DeDiER code) or "val_worst_group".
        first_epoch: the first eligible epoch (0-based).
        batch_size: rows per validation forward pass.

    Returns:
        model -> {"val_worst_group", "val_mean_group", SELECTION}.

    Raises:
        ValueError: naming by when it is neither of the two.
    """
    if by not in ("val_mean_group", "val_worst_group"):
        raise ValueError(f"by must be 'val_mean_group' or 'val_worst_group', got {by!r}")
    batches = val.batches(batch_size, device=train.device)
    metrics = group_val_metrics(lambda model: predict(model, batches), val.labels, val.groups, val.num_groups)
    return selection_rule(metrics, train, by=by, first_epoch=first_epoch)


def score_groups(model: nn.Module, data: GroupedData, train_counts: np.ndarray | torch.Tensor | Sequence[int], *,
                 batch_size: int = 512) -> GroupMetrics:
    """A model's GroupMetrics on a grouped split. The model runs on its own device.

    Args:
        model: the trained network.
        data: the split to score (its labels, groups and group names).
        train_counts: training examples per group (GroupedData.group_counts() of the training split), for the
            Waterbirds convention's train-weighted average.
        batch_size: rows per forward pass.

    Returns:
        kdteach.groups.GroupMetrics.
    """
    device = next(model.parameters()).device
    logits = predict(model, data.batches(batch_size, device=device))
    return group_metrics(logits, data.labels, data.groups, data.num_groups, train_group_counts=train_counts,
                         group_names=data.group_names)
