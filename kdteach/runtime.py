"""Where the course runs: the run mode, the data and cache folders, seeding and the device.

Everything that depends on the environment is read here, so that notebooks and the rest of the package never parse
environment variables themselves. A notebook chooses its mode in its first cell (kdteach.course.setup(mode=...), which
calls setup() here); KDTEACH_SMOKE=1 in the environment wins over that choice, so CI's smoke runs of the notebooks stay
small. This module imports nothing of the package: everything else may import it. What a notebook costs and reuses
from earlier notebooks reads results and checkpoints, so it lives a layer up, in kdteach.course.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

# The one place the repository's address is written; the notebooks' setup cell (kdteach.course) is generated from it.
REPO_URL = "https://github.com/kdteach/kdteach"

# The two run modes. Smoke: the same code paths on small data and few epochs, so every notebook runs on a 2-core
# CPU in a minute or two (its numbers are not results). Full: the size of the committed reference results.
MODES = ("smoke", "full")
_TRUE = {"1", "true", "yes", "on"}


def smoke_from_environment() -> bool:
    """True when the environment variable KDTEACH_SMOKE asks for smoke mode (1, true, yes or on).

    CI runs the notebooks with KDTEACH_SMOKE=1, so the variable wins over the mode a notebook's first cell chooses.
    """
    return os.environ.get("KDTEACH_SMOKE", "").strip().lower() in _TRUE


# The mode the last setup(mode=...) chose; None until a notebook chose one (then the mode is full).
_chosen_mode: str | None = None
# Smoke mode as a flag: read from the environment at import and updated by every setup(). mode() is the one to ask.
SMOKE: bool = smoke_from_environment()

_PACKAGE_ROOT = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_ROOT.parent


def mode() -> str:
    """The run mode that every experiment's config(None) follows.

    Returns:
        "smoke" when KDTEACH_SMOKE asks for it (it wins, so CI's notebook runs stay small), else the mode the last
        setup(mode=...) chose, else "full".
    """
    if smoke_from_environment():
        return "smoke"
    return _chosen_mode or "full"


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def checkout_root() -> Path:
    """The folder of the repository clone the package runs from (where notebooks/ and results/ live)."""
    return _CHECKOUT_ROOT


def _in_checkout() -> bool:
    return (_CHECKOUT_ROOT / "pyproject.toml").exists() and (_CHECKOUT_ROOT / "notebooks").is_dir()


def data_dir() -> Path:
    """The folder real datasets are read from (and downloaded to).

    Returns:
        KDTEACH_DATA if set; else the checkout's data/ folder when running from a clone; else ~/.cache/kdteach/data.
    """
    if os.environ.get("KDTEACH_DATA"):
        return Path(os.environ["KDTEACH_DATA"]).expanduser()
    if _in_checkout():
        return _CHECKOUT_ROOT / "data"
    return Path.home() / ".cache" / "kdteach" / "data"


def data_search_path() -> list[Path]:
    """Folders searched for real datasets, in order: data_dir(), then an offline copy beside the checkout.

    Returns:
        Existing folders only.
    """
    candidates = [data_dir(), _CHECKOUT_ROOT.parent / "shared" / "data"]
    seen, found = set(), []
    for c in candidates:
        if c.is_dir() and c.resolve() not in seen:
            seen.add(c.resolve())
            found.append(c)
    return found


def cache_dir() -> Path:
    """The folder trained teachers, cached logits and checkpoints are kept in (created if missing).

    Returns:
        KDTEACH_CACHE if set; else the checkout's .cache/ when running from a clone; else ~/.cache/kdteach.

    Raises:
        ValueError: naming KDTEACH_CACHE when it names a regular file or a folder that cannot be created.
    """
    if os.environ.get("KDTEACH_CACHE"):
        path = Path(os.environ["KDTEACH_CACHE"]).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"KDTEACH_CACHE names {path}, which is a file, not a folder: set KDTEACH_CACHE to a "
                             "folder (it is created if missing), or unset it to use the default cache")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"KDTEACH_CACHE names {path}, which cannot be created ({error}): set KDTEACH_CACHE to a "
                             "folder you can write to") from error
        return path
    path = _CHECKOUT_ROOT / ".cache" if _in_checkout() else Path.home() / ".cache" / "kdteach"
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def threads_for_rows(n_rows: int, device: torch.device | str) -> int | None:
    """The CPU thread count for a training run: 1 for at most 10,000 rows on a CPU, else None (torch's default).

    Smoke-size runs multiply small matrices, where a second OpenMP thread costs more in synchronisation than it
    saves; on a busy 2-core machine, smoke notebooks with two threads took 5 to 10 times as long as with one.
    Pass the result to cpu_threads().
    """
    return 1 if torch.device(device).type == "cpu" and n_rows <= 10_000 else None


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Runs a block with torch on `count` CPU threads, then restores the previous count (None: leave it alone).

    The course's smoke-size models multiply small matrices: on a CPU a second thread costs more in synchronisation
    than it saves, and on a busy 2-core machine waiting OpenMP threads slowed smoke notebooks several times over.

    Args:
        count: threads to use inside the block, or None for no change.
    """
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1 or None, got {count}")
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pick_device() -> torch.device:
    """Returns cuda if available, then mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The precision rule: the autocast dtype for device, or None where the package runs in float32.

    bf16 only where the GPU computes it natively (compute capability 8.0 and above: A100, L4, H100, RTX 30xx);
    fp16 with a gradient scaler on older CUDA GPUs. torch.cuda.is_bf16_supported() is not the test: it is True on
    a Colab T4 (7.5), which emulates bf16 and runs it several times slower than fp16. CPU and MPS: None.

    Args:
        device: where the model runs.

    Returns:
        torch.bfloat16, torch.float16 or None.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.bfloat16 if tuple(torch.cuda.get_device_capability(device)) >= (8, 0) else torch.float16


# Colab: where Google Drive is mounted, and the cache folder kept on it when a notebook asks (DRIVE_CACHE = True).
DRIVE_MOUNT = "/content/drive"
DRIVE_CACHE_FOLDER = "/content/drive/MyDrive/kdteach/cache"


def use_drive_cache() -> Path:
    """On Colab: mounts Google Drive and keeps the cache folder on it, so trained models outlive the Colab machine.

    Returns:
        The cache folder (DRIVE_CACHE_FOLDER), set as KDTEACH_CACHE for this process.

    Raises:
        RuntimeError: outside Colab (there is no Drive to mount).
    """
    if not in_colab():
        raise RuntimeError("use_drive_cache: Google Drive can be mounted on Colab only; elsewhere set KDTEACH_CACHE")
    from google.colab import drive  # type: ignore[import-not-found]  # present on Colab only

    drive.mount(DRIVE_MOUNT)
    os.environ["KDTEACH_CACHE"] = DRIVE_CACHE_FOLDER
    return cache_dir()


def setup(seed: int = 0, *, mode: str | None = None, drive_cache: bool = False, verbose: bool = True,
          run_mode: str | None = None) -> torch.device:
    """Chooses the mode, seeds everything, picks the device and says what the run uses (every notebook calls it through
    kdteach.course.setup, which adds what the notebook costs and reuses; scripts and experiments call it alone).

    Args:
        seed: seeds Python, NumPy and torch.
        mode: "smoke" or "full"; every config(None) follows it from here on. KDTEACH_SMOKE=1 in the environment wins
            (CI runs the notebooks so). None keeps the current mode.
        drive_cache: on Colab, mount Google Drive and keep the cache there (use_drive_cache); elsewhere it says it is
            ignored.
        verbose: print the device, the mode and the folders.
        run_mode: the mode to report when a caller chose one explicitly without changing mode() (the CLI's --mode).

    Returns:
        The device to train on.

    Raises:
        ValueError: naming mode when it is not one of MODES, drive_cache when it is not a bool, or seed when it is
            negative.
    """
    global _chosen_mode, SMOKE
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if not isinstance(drive_cache, bool):
        raise ValueError(f"drive_cache must be True or False, got {drive_cache!r}")
    seed_everything(seed)
    if mode is not None:
        _chosen_mode = mode
    now = _current_mode()
    SMOKE = now == "smoke"
    drive_note = ""
    if drive_cache:
        drive_note = (f"Google Drive mounted; cache in {use_drive_cache()}" if in_colab() else
                      "DRIVE_CACHE = True is for Colab; ignored here")
    device = pick_device()
    if device.type == "cuda":
        # TF32 matmuls: free speed on Ampere and later, accuracy is unaffected at the course's scale.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if verbose:
        _report(device, seed, run_mode or now, mode, drive_note)
    return device


def _current_mode() -> str:
    # mode() under another name: inside setup() the name `mode` is its argument.
    return mode()


def _report(device: torch.device, seed: int, run_mode: str, chosen: str | None, drive_note: str) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"kdteach: device {name} | mode {run_mode} | seed {seed}")
    if chosen is not None and chosen != run_mode and smoke_from_environment():
        print(f"kdteach: KDTEACH_SMOKE=1 in the environment wins over MODE = {chosen!r}: smoke mode")
    if drive_note:
        print(f"kdteach: {drive_note}")
    searched = ", ".join(str(p) for p in data_search_path()) or f"{data_dir()} (not there yet)"
    print(f"kdteach: real data read from {searched}; cache in {cache_dir()}")
    if run_mode == "smoke":
        print("kdteach: smoke mode: small data and few epochs, so every cell runs in minutes; numbers are not results.")
    if device.type == "cpu" and in_colab():
        print("kdteach: no GPU. On Colab: Runtime > Change runtime type > T4 GPU, then rerun this cell.")
