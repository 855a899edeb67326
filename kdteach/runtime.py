"""Where the course runs: the smoke flag, the data and cache folders, seeding and the device.

Everything that depends on the environment is read here, once, so that notebooks and the rest of the package
never parse environment variables themselves.
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

# The one place the repository's address is written; the notebooks' setup cell is generated from it.
REPO_URL = "https://github.com/kdteach/kdteach"

# Smoke mode: the same code paths on small data and few epochs, so every notebook runs on a 2-core CPU.
SMOKE: bool = os.environ.get("KDTEACH_SMOKE", "").strip().lower() in {"1", "true", "yes", "on"}

_PACKAGE_ROOT = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_ROOT.parent


def mode() -> str:
    """Returns "smoke" or "full"."""
    return "smoke" if SMOKE else "full"


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


def setup(seed: int = 0, *, verbose: bool = True, run_mode: str | None = None) -> torch.device:
    """The first call of every notebook: seeds everything, picks the device and says what the run uses.

    Args:
        seed: seeds Python, NumPy and torch.
        verbose: print the device, the mode and the data folder.
        run_mode: the mode to report when a caller chose one explicitly (the CLI's --mode); default mode().

    Returns:
        The device to train on.
    """
    seed_everything(seed)
    device = pick_device()
    run_mode = run_mode or mode()
    if device.type == "cuda":
        # TF32 matmuls: free speed on Ampere and later, accuracy is unaffected at the course's scale.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if verbose:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        print(f"kdteach: device {name} | mode {run_mode} | seed {seed}")
        searched = ", ".join(str(p) for p in data_search_path()) or f"{data_dir()} (not there yet)"
        print(f"kdteach: real data read from {searched}; cache in {cache_dir()}")
        if run_mode == "smoke":
            print("kdteach: smoke mode (KDTEACH_SMOKE=1): small data and few epochs; numbers are not results.")
        if device.type == "cpu" and in_colab():
            print("kdteach: no GPU. On Colab: Runtime > Change runtime type > T4 GPU, then rerun this cell.")
    return device


def setup_cell_source(seed: int = 0) -> str:
    """The source of the first code cell of every notebook (a test checks each notebook against it).

    Args:
        seed: the seed passed to setup().

    Returns:
        Python source for a notebook cell.
    """
    return (
        "# Setup: on Colab, install kdteach; everywhere, seed and pick the device (cuda, then mps, then cpu).\n"
        "import sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    %pip install -q \"kdteach[text] @ git+{REPO_URL}\"\n"
        "import kdteach as kd\n"
        f"device = kd.runtime.setup(seed={seed})"
    )
