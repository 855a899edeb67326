"""Checkpoint files: written atomically, loaded safely, and tied to the run that wrote them.

- `save_atomic` writes to a temporary file in the same folder, then renames it over the old file: a kill during
  the write leaves the previous checkpoint intact (and a stale `<name>.<host>-<pid>.XXXXXXXX.tmp`, which
  `remove_stale_temporaries` deletes when a run with that checkpoint starts again, once the process that wrote it
  is gone: a temporary that a live run is writing is never touched).
- `checkpoint_lock` is the file lock (the `filelock` library) that fit() holds for a whole run with a checkpoint:
  two runs on one machine that share a cache (two notebooks, a notebook and the command line) and ask for the same
  checkpoint take turns, so one trains and the other then loads the finished file. The lock files live in the
  system's temporary folder (`lock_path`), not in the cache, which keeps holding checkpoints only.
- `load_checkpoint` loads with weights_only=True (tensors and plain containers, no pickled code); a truncated or
  corrupt file raises CheckpointError naming the file and what to do, never torch's zip message alone.
- `run_signature` describes what decides a run (epochs, data rows, parameter shapes, optimiser, scheduler, loss);
  fit() stores it in every checkpoint and `check_signature` refuses to resume a run that differs in any field.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import filelock
import torch
from torch import nn

# mkstemp's random part: 8 characters from this alphabet (tempfile._RandomNameSequence).
_RANDOM = r"[a-z0-9_]{8}"
# What save_atomic names a temporary: `<name>.<host>-<pid>.<random>.tmp`, so that remove_stale_temporaries can tell
# whether the process writing it is still alive. The host is part of the name because a cache on a shared disk
# can be written from several machines, and a process id means nothing on another machine.
_TEMPORARY_NAME = r"\.([0-9a-f]{8})-([0-9]+)\." + _RANDOM + r"\.tmp"
# What kdteach wrote before temporaries carried a process id: `<name><random>.tmp`.
_OLD_TEMPORARY_NAME = _RANDOM + r"\.tmp"
# param_group entries that choose an implementation, not the arithmetic of the run.
_IMPLEMENTATION_FLAGS = {"params", "foreach", "fused", "differentiable", "capturable"}
_ABSENT = "<absent>"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a torch file).

    Attributes:
        path: the file.
        reason: what went wrong, in a few words (torch's first line).
    """

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file.

    Args:
        obj: what to save (tensors and plain containers, so that it loads with weights_only=True).
        path: the destination; its folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{_host_id()}-{os.getpid()}.", suffix=".tmp")
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
    """Loads a checkpoint with weights_only=True (tensors and plain containers only, no pickled code).

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors.

    Returns:
        The saved dict.

    Raises:
        FileNotFoundError: no file at path.
        CheckpointError: the file is truncated, corrupt or not a checkpoint (the message names it).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the path of a .pt file", path, "a folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason}): the file is truncated or corrupt. Delete it and rerun; "
            "fit(resume=True) moves such a file aside by itself and trains from scratch.", path, reason,
        ) from error
    if not isinstance(state, dict):
        what = f"a {type(state).__name__}, not a checkpoint dict"
        raise CheckpointError(f"checkpoint {path} holds {what}; delete it or pass another path", path, what)
    return state


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _process_alive(pid: int) -> bool:
    # Signal 0 checks that a process exists without touching it (POSIX). On Windows os.kill would terminate the
    # process, so there every process counts as alive and its temporaries are left alone.
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Deletes the temporary files save_atomic left beside path when a run was killed during a write.

    Only names save_atomic makes are touched: `<name>.<host>-<pid>.` + 8 random characters + `.tmp`, in path's
    folder, and only when the process that made it is gone (same machine, no process with that id). A temporary
    of a live process, or of another machine sharing the folder, is left alone. Names without a process id
    (`<name>` + 8 random characters + `.tmp`) come from a kdteach older than this rule and are removed.

    Args:
        path: the checkpoint path.

    Returns:
        The files removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    current = re.compile(re.escape(path.name) + _TEMPORARY_NAME)
    old = re.compile(re.escape(path.name) + _OLD_TEMPORARY_NAME)
    host = _host_id()
    removed = []
    for candidate in path.parent.iterdir():
        match = current.fullmatch(candidate.name)
        if match is not None:
            stale = match.group(1) == host and not _process_alive(int(match.group(2)))
        else:
            stale = old.fullmatch(candidate.name) is not None
        if stale and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def lock_path(path: str | Path) -> Path:
    """Where the lock of checkpoint path lives: `<tmp>/kdteach-locks-<user>/<name>-<hash of the full path>.lock`.

    Not beside the checkpoint: a lock file must outlive its holder (deleting it on release would let a waiter and a
    newcomer lock two different files), and the cache should hold checkpoints only. The temporary folder is also
    always a local disk with working locks, where a cache on a network mount or Google Drive may not be. The cost:
    runs on two machines that share a cache over the network are not kept apart (each still leaves the other's
    temporaries alone, and every write is atomic, so the file stays valid; the work may be done twice).

    Args:
        path: the checkpoint path.

    Returns:
        The lock file's path (its folder is created).
    """
    path = Path(path).resolve()
    user = str(os.getuid()) if hasattr(os, "getuid") else hashlib.sha1(str(Path.home()).encode()).hexdigest()[:8]
    folder = Path(tempfile.gettempdir()) / f"kdteach-locks-{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def checkpoint_lock(path: str | Path) -> Iterator[None]:
    """Holds the file lock of checkpoint path (see lock_path) for the body of a with-statement.

    fit() holds it for a whole run with a checkpoint, so two processes that train the same checkpoint take turns:
    the second waits (and says so on stderr) until the first has finished, then resumes from or loads the file the
    first wrote. The lock is the operating system's (flock through the `filelock` library): a killed process
    releases it, so nothing stale ever blocks a later run. Where the temporary folder has no locks, filelock's
    fallback is used where it has one, else the run goes on unlocked with a warning.

    Args:
        path: the checkpoint path.
    """
    path = Path(path)
    lock = filelock.FileLock(str(lock_path(path)))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            print(f"kdteach: another run is training {path}; waiting for it to finish (lock {lock.lock_file})",
                  file=sys.stderr, flush=True)
            lock.acquire()
        held = True
    except NotImplementedError:  # filelock 3.x on a file system without flock
        warnings.warn(f"the file system of {lock.lock_file} has no file locks: runs that share this cache and train "
                      "the same checkpoint at the same time are not kept apart", stacklevel=3)
        held = False
    try:
        yield
    finally:
        if held:
            lock.release()


def set_aside(path: str | Path) -> Path:
    """Renames an unreadable checkpoint to `<name>.corrupt` (replacing an older one) and returns the new path."""
    path = Path(path)
    corrupt = path.with_name(path.name + ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def _plain(value: Any) -> Any:
    # What a signature may hold: values that survive weights_only loading and compare with ==. Anything else
    # (functions, modules) is left out by returning _ABSENT.
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else _ABSENT
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _ABSENT if _ABSENT in items else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _plain(v) for k, v in value.items()}
        return _ABSENT if _ABSENT in items.values() else items
    return _ABSENT


def _public_fields(prefix: str, values: dict[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    fields = {}
    for key, value in values.items():
        if key.startswith("_") or key in skip:
            continue
        value = _plain(value)
        if value != _ABSENT:
            fields[f"{prefix}.{key}"] = value
    return fields


def _name(obj: Any) -> str:
    kind = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def run_signature(
    *,
    epochs: int,
    model: nn.Module,
    rows: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    loss_fn: Callable[..., Any],
    settings: dict[str, Any],
    on_epoch_end: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """What decides a run, as a flat {field: plain value} dict, taken when fit() starts.

    Taken before a checkpoint is loaded and before the first step, so a scheduler that has only been constructed
    (OneCycleLR sets lr to max_lr / 25 at construction) looks the same in the first run and in a resumed one.

    Args:
        epochs: the total number of epochs.
        model: the network (the names and shapes of its state_dict).
        rows: rows of the training data.
        optimizer: its class and every param_group entry but the parameters and implementation flags.
        scheduler: its class and public state (total_steps, T_max, base_lrs, ...), or None.
        loss_fn: its qualified name, and for a loss object its public scalar attributes (temperature, ...).
        settings: anything else that decides the run (batch size, shuffling seed, select, max_grad_norm, ...).
        on_epoch_end: fit()'s callback (its qualified name), or None.

    Returns:
        The signature, in the order a difference is reported.
    """
    signature: dict[str, Any] = {"epochs": epochs, "train.rows": rows}
    signature.update({key: _plain(value) for key, value in settings.items()})
    signature.update({f"model.{name}": list(t.shape) for name, t in model.state_dict().items()})
    signature["optimizer"] = _name(optimizer)
    groups = optimizer.param_groups
    for i, group in enumerate(groups):
        signature.update(_public_fields("optimizer" if len(groups) == 1 else f"optimizer.group{i}", group, _IMPLEMENTATION_FLAGS))
    signature["scheduler"] = None if scheduler is None else _name(scheduler)
    if scheduler is not None and hasattr(scheduler, "state_dict"):
        signature.update(_public_fields("scheduler", scheduler.state_dict(), {"verbose"}))
    signature["loss"] = _name(loss_fn)
    if hasattr(loss_fn, "__dict__") and not hasattr(loss_fn, "__code__"):  # a loss object, not a function
        scalars = {k: v for k, v in vars(loss_fn).items() if isinstance(v, (bool, int, float, str)) and k != "training"}
        signature.update(_public_fields("loss", scalars))
    signature["on_epoch_end"] = None if on_epoch_end is None else _name(on_epoch_end)
    return signature


def _optimisation_field(key: str) -> bool:
    # The fields a resume="weights" may change: how the weights are stepped, not what they are or what they learn.
    return key in ("optimizer", "scheduler", "max_grad_norm") or key.startswith(("optimizer.", "scheduler."))


def check_signature(path: str | Path, saved: dict[str, Any] | None, current: dict[str, Any], *,
                    new_optimizer: bool = False) -> None:
    """Refuses to resume from a checkpoint written by a different run.

    Args:
        path: the checkpoint (named in the message).
        saved: the signature stored in it (None: it has none).
        current: run_signature() of this run.
        new_optimizer: fit(resume="weights"): the optimiser, the scheduler and max_grad_norm may differ (they are
            new), every other field must match.

    Raises:
        ValueError: naming the file and the first field that differs (and the others), with what to do.
    """
    if saved is None:
        raise ValueError(
            f"checkpoint {path} holds no run signature (written by an older kdteach, or not by fit()), so it cannot "
            "be checked against this run; delete it or pass a new path"
        )
    fields = list(current) + [k for k in saved if k not in current]
    differ = [k for k in fields if saved.get(k, _ABSENT) != current.get(k, _ABSENT)]
    if new_optimizer:
        differ = [k for k in differ if not _optimisation_field(k)]
    if differ:
        first = differ[0]
        also = f" (also differs: {', '.join(differ[1:6])}{', ...' if len(differ) > 6 else ''})" if len(differ) > 1 else ""
        hint = ""
        if not new_optimizer and all(_optimisation_field(k) for k in differ):
            hint = ("; or, to continue from its weights and epoch with this new optimiser (a lower learning rate, "
                    "say), pass resume='weights'")
        raise ValueError(
            f"checkpoint {path} was written for {first}={saved.get(first, _ABSENT)!r}, this run asks for "
            f"{current.get(first, _ABSENT)!r}{also}; delete it or pass a new path{hint}"
        )
