"""Where the course runs: the run mode, the data and cache folders, seeding and the device, and each notebook's setup.

Everything that depends on the environment is read here, so that notebooks and the rest of the package never parse
environment variables themselves. A notebook chooses its mode in its first cell (setup(mode=...)); KDTEACH_SMOKE=1
in the environment wins over that choice, so CI's smoke runs of the notebooks stay small.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

# The one place the repository's address is written; the notebooks' setup cell is generated from it.
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


# The course's notebooks, by number (the setup cell names its own).
NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06", "07")
# Colab: where Google Drive is mounted, and the cache folder kept on it when a notebook asks (DRIVE_CACHE = True).
DRIVE_MOUNT = "/content/drive"
DRIVE_CACHE_FOLDER = "/content/drive/MyDrive/kdteach/cache"


@dataclass(frozen=True)
class Reuse:
    """A model a notebook reloads from an earlier notebook's run, and trains first when the cache lacks it.

    Attributes:
        what: the model, in words.
        trained_by: the notebook that trains it ("02").
        experiment: the experiment whose reference run trains it (its wall time is what retraining is part of).
        find: the model's checkpoints in the cache for the current mode (empty: not there).
    """

    what: str
    trained_by: str
    experiment: str
    find: Callable[[], list[Path]]


def _group_balanced_teacher() -> list[Path]:
    # Exactly the file notebooks 03 and 07 load (dedier.prepare asks spurious for seed 0's teacher_balanced).
    from kdteach.experiments import spurious

    path = spurious.checkpoint(spurious.config(mode()), "teacher_balanced", 0)
    return [path] if path.exists() else []


def _exit_distilled_model() -> list[Path]:
    # Notebook 06 reloads notebook 05's exit-distilled model (distill weight 0.5). Its key hashes the digits' labels,
    # which only loading the data gives, so this looks for a checkpoint of the current mode's size (training rows and
    # epochs in its run signature) instead; train-or-load itself still checks every field before reusing one.
    from kdteach.checkpoint import CheckpointError, load_checkpoint
    from kdteach.experiments import exits

    cfg = exits.config(mode())
    found = []
    for path in sorted((cache_dir() / "exits").glob("distill0.5-*.pt")):
        try:
            signature = load_checkpoint(path).get("signature") or {}
        except (CheckpointError, OSError):
            continue
        if signature.get("train.rows") == cfg.train_size and signature.get("epochs") == cfg.epochs:
            found.append(path)
    return found


# What each notebook reloads from earlier notebooks (notebooks not named here train everything they use).
REUSES: dict[str, tuple[Reuse, ...]] = {
    "03": (Reuse("notebook 02's group-balanced teacher (waterbirds_like, seed 0)", "02", "spurious", _group_balanced_teacher),),
    "06": (Reuse("notebook 05's exit-distilled multi-exit ResNet (distill weight 0.5)", "05", "exits", _exit_distilled_model),),
    "07": (Reuse("notebook 02's group-balanced teacher (waterbirds_like, seed 0; notebook 03 reuses it too)", "02", "spurious",
                 _group_balanced_teacher),),
}


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _experiment_of(notebook: str) -> tuple[str, str] | None:
    """(experiment, its notebook label) of a notebook's headline experiment, or None (notebook 00 has none)."""
    from kdteach.results import NOTEBOOK_OF

    return next(((name, label) for name, label in NOTEBOOK_OF.items() if label.split(" ")[0] == notebook), None)


def reference_time(notebook: str) -> tuple[str, float | None]:
    """What a notebook's full mode costs, measured: its experiment's committed wall time, read through kdteach.results.

    Args:
        notebook: "00" to "07".

    Returns:
        (a sentence, the wall time in seconds or None when no committed result measures it).
    """
    from kdteach import results

    found = _experiment_of(notebook)
    if found is None:
        return f"notebook {notebook} has no committed reference result, so no measured full-mode time", None
    name, label = found
    try:
        ref = results.load_reference(name)
    except ValueError as damaged:
        return f"notebook {notebook}'s reference result cannot be read ({damaged})", None
    seconds = float(ref.meta.get("wall_seconds") or 0.0) if ref is not None else 0.0
    if ref is None or seconds <= 0:
        return f"notebook {notebook}'s reference run ({name}) has no measured wall time committed", None
    seeds = len(ref.meta.get("seeds") or [])
    where = label[len(notebook):].strip()
    return (f"notebook {notebook}'s reference run{' ' + where if where else ''} (`python -m kdteach {name} --mode full`, "
            f"{seeds} seed{'s' if seeds != 1 else ''}) took {_duration(seconds)} on a {ref.meta.get('device', '?')} "
            f"(results/{name}/{name}.json)"), seconds


def _reuse_sentence(reuse: Reuse) -> str:
    from kdteach.checkpoint import CheckpointError, load_checkpoint

    found = reuse.find()
    if found:
        try:
            state = load_checkpoint(found[0])
            done, planned = len(state.get("history") or []), int((state.get("signature") or {}).get("epochs", 0))
            took = sum(float(row.get("seconds", 0.0)) for row in state.get("history") or [])
        except (CheckpointError, OSError):
            return f"reuses {reuse.what}: a checkpoint is in the cache but cannot be read; the notebook retrains it"
        if planned and done < planned:
            return f"reuses {reuse.what}: in the cache, unfinished ({done} of {planned} epochs); the notebook resumes it"
        return f"reuses {reuse.what}: in the cache ({done} epochs, trained in {_duration(took)})"
    if mode() == "smoke":
        return f"reuses {reuse.what}: not in the cache; the notebook trains it first (smoke size)"
    cost, seconds = reference_time(reuse.trained_by)
    part = (f"training it is part of notebook {reuse.trained_by}'s reference run, which took {_duration(seconds)} "
            "for all of its models" if seconds is not None else cost)
    return (f"reuses {reuse.what}: not in the cache; the notebook trains it first ({part}; run notebook "
            f"{reuse.trained_by} first with the same cache to reuse its model)")


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


def _check_notebook(notebook: object) -> str:
    if not isinstance(notebook, str) or notebook not in NOTEBOOKS:
        raise ValueError(f"notebook must be one of {', '.join(NOTEBOOKS)} (a string), got {notebook!r}")
    return notebook


def setup(seed: int = 0, *, mode: str | None = None, notebook: str | None = None, solutions: bool = False,
          drive_cache: bool = False, verbose: bool = True, run_mode: str | None = None) -> torch.device:
    """The first call of every notebook: chooses the mode, seeds everything, picks the device and says what the run uses.

    Args:
        seed: seeds Python, NumPy and torch.
        mode: the notebook's choice, "smoke" or "full"; every config(None) follows it from here on. KDTEACH_SMOKE=1
            in the environment wins (CI runs the notebooks so). None keeps the current mode.
        notebook: "00" to "07": print this notebook's measured full-mode time and the models it reuses from earlier
            notebooks (whether each is in the cache now, and what retraining it costs).
        solutions: the solutions notebook of `notebook` (it reloads that notebook's models).
        drive_cache: on Colab, mount Google Drive and keep the cache there (use_drive_cache); elsewhere it says it is
            ignored.
        verbose: print the device, the mode, the folders and the notebook's costs.
        run_mode: the mode to report when a caller chose one explicitly without changing mode() (the CLI's --mode).

    Returns:
        The device to train on.

    Raises:
        ValueError: naming mode or notebook when it is not one of the allowed values, or seed when it is negative.
    """
    global _chosen_mode, SMOKE
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if notebook is not None:
        _check_notebook(notebook)
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
        _report(device, seed, run_mode or now, mode, notebook, solutions, drive_note)
    return device


def _current_mode() -> str:
    # mode() under another name: inside setup() the name `mode` is its argument.
    return mode()


def _report(device: torch.device, seed: int, run_mode: str, chosen: str | None, notebook: str | None, solutions: bool,
            drive_note: str) -> None:
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
    if notebook is not None:
        cost, seconds = reference_time(notebook)
        if solutions:
            print(f"kdteach: the solutions of notebook {notebook} reload its models from the cache and train any that "
                  f"are missing; {cost}")
        else:
            print(f"kdteach: {cost}")
        if seconds is not None and run_mode == "full" and device.type == "cpu" and seconds > 600 and not solutions:
            print("kdteach: expect about that here on a CPU. MODE = \"smoke\" in this cell runs every cell in minutes "
                  "(to check the code, not the results).")
        for reuse in REUSES.get(notebook, ()):
            print(f"kdteach: {_reuse_sentence(reuse)}")
    if device.type == "cpu" and in_colab():
        print("kdteach: no GPU. On Colab: Runtime > Change runtime type > T4 GPU, then rerun this cell.")


def setup_cell_source(notebook: str, *, solutions: bool = False, seed: int = 0) -> str:
    """The source of the first code cell of every notebook (a test checks each notebook against it).

    The mode is chosen in the cell, visibly, before anything runs; setup() then prints the mode it uses, the
    notebook's measured full-mode time and the models it reuses.

    Args:
        notebook: "00" to "07".
        solutions: the cell of the notebook's solutions notebook.
        seed: the seed passed to setup().

    Returns:
        Python source for a notebook cell (with Colab's %pip line).

    Raises:
        ValueError: naming notebook when it is not one of NOTEBOOKS.
    """
    _check_notebook(notebook)
    call = f'device = kd.runtime.setup(seed={seed}, mode=MODE, notebook="{notebook}"'
    call += ", solutions=True" if solutions else ""
    return (
        "# Setup: choose the mode, then install kdteach (on Colab), seed, and pick the device (cuda, then mps, then cpu).\n"
        'MODE = "full"  # "smoke": small data and few epochs, minutes (numbers are not results); "full": the reference run\n'
        "DRIVE_CACHE = False  # Colab: True keeps trained models on your Google Drive between sessions\n"
        "# KDTEACH_SMOKE=1 in the environment (how CI runs the notebooks) wins over MODE. setup() prints the mode it uses,\n"
        "# this notebook's measured full-mode time, and the models it reuses from earlier notebooks.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "kdteach[text] @ git+{REPO_URL}"\n'
        "import kdteach as kd\n"
        f"{call}, drive_cache=DRIVE_CACHE)"
    )
