"""Each notebook's setup: the mode, seeds and device (kdteach.runtime), then what the notebook costs and reuses.

kdteach.runtime knows the environment: the run mode, the folders, seeds, the device. This module knows the course:
which experiment each notebook runs (kdteach.results), what its committed full-mode run took, and which models it
reloads from earlier notebooks (kdteach.experiments, kdteach.checkpoint). It sits above all of them and imports them
at its top; nothing in the package imports it (experiments import runtime, never the course), so there is no cycle.

Every notebook's first code cell is setup_cell_source(): it chooses the mode in the cell, visibly, then calls
setup(), which prints the mode it uses, the notebook's measured full-mode time and the models it reuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kdteach import results, runtime
from kdteach.code_version import experiment_code_version
from kdteach.checkpoint import CheckpointError, load_checkpoint
from kdteach.experiments import exits, spurious

__all__ = ["NOTEBOOKS", "Reuse", "REUSES", "VERSION_LINE", "code_version_sentence", "reference_time", "reuse_sentence", "setup",
           "setup_cell_source"]

# The course's notebooks, by number (the setup cell names its own).
NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06", "07")


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
    path = spurious.checkpoint(spurious.config(runtime.mode()), "teacher_balanced", 0)
    return [path] if path.exists() else []


def _exit_distilled_model() -> list[Path]:
    # Notebook 06 reloads notebook 05's exit-distilled model (distill weight 0.5). Its key hashes the digits' labels,
    # which only loading the data gives, so this looks for a checkpoint of the current mode's size (training rows and
    # epochs in its run signature) instead; train-or-load itself still checks every field before reusing one.
    cfg = exits.config(runtime.mode())
    found = []
    for path in sorted((runtime.cache_dir() / "exits").glob("distill0.5-*.pt")):
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


def _check_notebook(notebook: object) -> str:
    if not isinstance(notebook, str) or notebook not in NOTEBOOKS:
        raise ValueError(f"notebook must be one of {', '.join(NOTEBOOKS)} (a string), got {notebook!r}")
    return notebook


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _experiment_of(notebook: str) -> tuple[str, str] | None:
    """(experiment, its notebook label) of a notebook's headline experiment, or None (notebook 00 has none)."""
    return next(((name, label) for name, label in results.NOTEBOOK_OF.items() if label.split(" ")[0] == notebook), None)


def reference_time(notebook: str) -> tuple[str, float | None]:
    """What a notebook's full mode costs, measured: its experiment's committed wall time, read through kdteach.results.

    Args:
        notebook: "00" to "07".

    Returns:
        (a sentence, the wall time in seconds or None when no committed result measures it).

    Raises:
        ValueError: naming notebook when it is not one of NOTEBOOKS.
    """
    found = _experiment_of(_check_notebook(notebook))
    if found is None:
        return f"notebook {notebook} has no committed reference result, so no measured full-mode time", None
    name, label = found
    try:
        ref = results.load_reference(name)
    except ValueError as damaged:
        return f"notebook {notebook}'s reference result cannot be read ({damaged})", None
    seconds = results.cold_run_seconds(ref.meta) if ref is not None else 0.0
    if ref is None or seconds <= 0:
        return f"notebook {notebook}'s reference run ({name}) has no measured wall time committed", None
    seeds = len(ref.meta.get("seeds") or [])
    where = label[len(notebook):].strip()
    return (f"notebook {notebook}'s reference run{' ' + where if where else ''} (`python -m kdteach {name} --mode full`, "
            f"{seeds} seed{'s' if seeds != 1 else ''}) takes {_duration(seconds)} from an empty cache on a {ref.meta.get('device', '?')} "
            f"(results/{name}/{name}.json)"), seconds


VERSION_LINE = "kdteach: {name}'s experiment code here is version {here}; the committed reference result's is {committed}"


def code_version_sentence(notebook: str) -> str | None:
    """Whether this notebook runs the same experiment code as its committed reference result (kdteach.code_version):
    the same version means the same numbers for the same models. tests/test_committed_outputs.py reads this line in
    the committed outputs.

    Args:
        notebook: "00" to "07".

    Returns:
        VERSION_LINE filled in, with what a difference means, or None for a notebook without an experiment (00).

    Raises:
        ValueError: naming notebook when it is not one of NOTEBOOKS.
    """
    found = _experiment_of(_check_notebook(notebook))
    if found is None:
        return None
    name, here = found[0], experiment_code_version(found[0])
    try:
        ref = results.load_reference(name)
    except ValueError:
        ref = None
    committed = (ref.meta.get("code_version") if ref is not None else None) or "unknown"
    line = VERSION_LINE.format(name=name, here=here, committed=committed)
    if committed == here:
        return line + " (the same: full mode reproduces its numbers from the same models)"
    return line + " (different: the code changed since that result was made, so numbers may differ from it)"


def reuse_sentence(reuse: Reuse) -> str:
    """Whether a reused model is in the cache now (finished, unfinished or unreadable), and if not, what training it
    first costs.

    Args:
        reuse: one entry of REUSES.

    Returns:
        One sentence, starting "reuses ...".
    """
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
    if runtime.mode() == "smoke":
        return f"reuses {reuse.what}: not in the cache; the notebook trains it first (smoke size)"
    cost, seconds = reference_time(reuse.trained_by)
    part = (f"training it is part of notebook {reuse.trained_by}'s reference run, which took {_duration(seconds)} "
            "for all of its models" if seconds is not None else cost)
    return (f"reuses {reuse.what}: not in the cache; the notebook trains it first ({part}; run notebook "
            f"{reuse.trained_by} first with the same cache to reuse its model)")


def setup(seed: int = 0, *, mode: str | None = None, notebook: str, solutions: bool = False, drive_cache: bool = False,
          verbose: bool = True) -> torch.device:
    """The first call of every notebook: runtime.setup (the mode, seeds, device and folders), then the notebook's
    measured full-mode time and the models it reuses from earlier notebooks.

    Args:
        seed: seeds Python, NumPy and torch.
        mode: the notebook's choice, "smoke" or "full" (runtime.setup: KDTEACH_SMOKE=1 in the environment wins).
        notebook: "00" to "07".
        solutions: the solutions notebook of `notebook` (it reloads that notebook's models).
        drive_cache: on Colab, mount Google Drive and keep the cache there (runtime.use_drive_cache).
        verbose: print the device, the mode, the folders and the notebook's costs.

    Returns:
        The device to train on.

    Raises:
        ValueError: naming notebook when it is not one of NOTEBOOKS (checked before anything changes), or whatever
            runtime.setup refuses (mode, seed, drive_cache) by name.
    """
    _check_notebook(notebook)
    device = runtime.setup(seed, mode=mode, drive_cache=drive_cache, verbose=verbose)
    if not verbose:
        return device
    cost, seconds = reference_time(notebook)
    if solutions:
        print(f"kdteach: the solutions of notebook {notebook} reload its models from the cache and train any that are "
              f"missing; {cost}")
    else:
        print(f"kdteach: {cost}")
    if seconds is not None and runtime.mode() == "full" and device.type == "cpu" and seconds > 600 and not solutions:
        print("kdteach: expect about that here on a CPU. MODE = \"smoke\" in this cell runs every cell in minutes "
              "(to check the code, not the results).")
    version = code_version_sentence(notebook)
    if version is not None:
        print(version)
    for reuse in REUSES.get(notebook, ()):
        print(f"kdteach: {reuse_sentence(reuse)}")
    return device


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
    call = f'device = kd.course.setup(seed={seed}, mode=MODE, notebook="{notebook}"'
    call += ", solutions=True" if solutions else ""
    return (
        "# Setup: choose the mode, then install kdteach (on Colab), seed, and pick the device (cuda, then mps, then cpu).\n"
        'MODE = "full"  # "smoke": small data and few epochs, minutes (numbers are not results); "full": the reference run\n'
        "DRIVE_CACHE = False  # Colab: True keeps trained models on your Google Drive between sessions\n"
        "# KDTEACH_SMOKE=1 in the environment (how CI runs the notebooks) wins over MODE. setup() prints the mode it uses,\n"
        "# this notebook's measured full-mode time, and the models it reuses from earlier notebooks.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "kdteach[text] @ git+{runtime.REPO_URL}"\n'
        "import kdteach as kd\n"
        f"{call}, drive_cache=DRIVE_CACHE)"
    )
