"""Tables, provenance and result files: how every experiment writes what it measured.

A result file names the code that made it: provenance() records the commit and whether the package's own files
had uncommitted changes ("dirty", "dirty_files"), and write_report refuses to write a full-mode result (a reference
result) from such a tree unless told to, so a committed result always comes from committed code.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kdteach import run_state
from kdteach.code_version import experiment_code_version
from kdteach.groups import GroupMetrics

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # kdteach/: the code whose state provenance records
ALLOW_DIRTY_ENV = "KDTEACH_ALLOW_DIRTY"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
def markdown_table(rows: Sequence[Mapping[str, Any]] | Sequence[Any], columns: Sequence[str] | None = None) -> str:
    """Renders rows (dicts or dataclasses) as a Markdown table; floats get 4 significant digits.

    Args:
        rows: one dict (or dataclass) per row.
        columns: column order; default the keys of the first row, then any new keys in order of appearance.

    Returns:
        The table as a string.
    """
    dict_rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]
    if not dict_rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(key for row in dict_rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in dict_rows]
    return "\n".join(lines)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, mappings, sequences, numpy and torch values as plain JSON types (NaN stays a float)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return value.tolist()
    return value



def _git(*args: str) -> str | None:
    # git's output run in the package's folder, or None where there is no git or no repository (a pip install).
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=PACKAGE_DIR).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def working_tree_changes() -> int | None:
    """How many of the package's own files (kdteach/) differ from the commit: modified, staged, deleted or new
    (untracked and not ignored); None outside a git checkout (e.g. an installed package), where it cannot be known.

    Returns:
        The count of changed paths, or None.
    """
    status = _git("status", "--porcelain", "--untracked-files=all", "--", ".")
    return None if status is None else sum(1 for line in status.splitlines() if line.strip())


def provenance(*, config: Any, seeds: Sequence[int], wall_seconds: float, device: str, experiment: str) -> dict[str, Any]:
    """The provenance fields every result file carries: commit, dirty, dirty_files, code_version, date, device, torch,
    wall_seconds, reused_training, seeds, config.

    code_version names the experiment's code itself (kdteach.code_version), so a notebook's outputs can be checked
    against the result. reused_training is the training this run did not redo: the models it reloaded finished (or
    resumed) from the cache, with the seconds their training had taken when it ran (run_state.take_reused_training,
    which this call resets); wall_seconds plus those seconds is what the run costs from an empty cache.

    Args:
        experiment: the experiment's name (kdteach.code_version.EXPERIMENT_MODULES).
        config: the experiment's configuration (a dataclass).
        seeds: the seeds run.
        wall_seconds: how long the run took.
        device: the torch device it ran on ("cpu" becomes "N-core CPU", a CUDA device its card's name).

    Returns:
        A JSON-ready dict; "dirty" is True when the package's files had uncommitted changes (working_tree_changes()
        of them, in "dirty_files"), False when they had none, None (and dirty_files None) outside a git checkout.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))
    elif device == "cpu":
        device = f"{os.cpu_count()}-core CPU"
    commit = (_git("rev-parse", "--short", "HEAD") or "").strip() or "unknown"
    changed = working_tree_changes()
    return {"commit": commit, "dirty": None if changed is None else changed > 0, "dirty_files": changed,
            "code_version": experiment_code_version(experiment), "date": time.strftime("%Y-%m-%d"), "device": device,
            "torch": torch.__version__, "wall_seconds": round(float(wall_seconds), 1),
            "reused_training": run_state.take_reused_training(), "seeds": list(seeds), "config": to_jsonable(config)}


def check_clean_tree(mode: str, *, dirty_files: int | None, allow_dirty: bool = False) -> None:
    """Refuses a full-mode (reference) result from a tree with uncommitted changes, unless told to.

    Smoke mode always passes (its numbers are not evidence); so does a tree whose state is unknown (None: not a git
    checkout, e.g. an installed package reproducing a result).

    Args:
        mode: "full" or "smoke".
        dirty_files: working_tree_changes() (or the "dirty_files" a provenance recorded).
        allow_dirty: write it anyway (the result then says "dirty": true); the environment variable
            KDTEACH_ALLOW_DIRTY=1 does the same.

    Raises:
        RuntimeError: in full mode with dirty_files > 0 and neither allow_dirty nor KDTEACH_ALLOW_DIRTY=1.
    """
    if mode != "full" or not dirty_files or allow_dirty or os.environ.get(ALLOW_DIRTY_ENV) == "1":
        return
    raise RuntimeError(f"refusing to write a full-mode result: {dirty_files} file(s) of the package ({PACKAGE_DIR}) have uncommitted "
                       f"changes, so the result could not name the code that made it (`git status -- {PACKAGE_DIR.name}` lists them). "
                       f"Commit them first, or write it anyway with allow_dirty=True or {ALLOW_DIRTY_ENV}=1 (it then records dirty: true).")


def _findings_markdown(findings: Any) -> str:
    # The findings as a bullet list, one "- " line per sentence; a bare string would print one character per bullet.
    if isinstance(findings, str) or not isinstance(findings, Sequence) or not all(isinstance(f, str) for f in findings):
        raise ValueError(f"meta['findings'] must be a list of sentences (strings), got {type(findings).__name__}: {findings!r:.80}")
    return "## Findings\n\n" + "".join(f"- {line}\n" for line in findings if line) + "\n"


def write_report(out: str | Path, name: str, *, rows: Sequence[Any], meta: Mapping[str, Any],
                 figures: Mapping[str, Any] | None = None, title: str = "", result: object | None = None,
                 allow_dirty: bool = False) -> Path:
    """Writes NAME.json (meta, rows and the typed result), NAME.md (the provenance, the findings as a bullet list and
    the table) and one PNG per figure into out.

    Args:
        out: folder (created).
        name: file stem.
        rows: the table (dicts or dataclasses).
        meta: what produced it (provenance(), mode, findings: a list of sentences, ...).
        figures: name -> matplotlib Figure.
        title: a heading for the Markdown file.
        result: the typed result (a dataclass), stored whole under "result".
        allow_dirty: write a full-mode result even though meta says the package had uncommitted changes (see
            check_clean_tree; KDTEACH_ALLOW_DIRTY=1 does the same).

    Returns:
        The folder written to.
    """
    dirty_files = meta["dirty_files"] if "dirty_files" in meta else working_tree_changes()
    check_clean_tree(str(meta.get("mode", "")), dirty_files=dirty_files, allow_dirty=allow_dirty)
    findings = _findings_markdown(meta["findings"]) if "findings" in meta else ""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": to_jsonable(meta), "rows": to_jsonable(list(rows))}
    if result is not None:
        payload["result"] = to_jsonable(result)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    header = f"# {title or name}\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items() if k not in ("config", "findings"))
    (out / f"{name}.md").write_text(header + "\n" + findings + markdown_table(rows) + "\n", encoding="utf-8")
    for fig_name, fig in (figures or {}).items():
        fig.savefig(out / f"{fig_name}.png", dpi=100, bbox_inches="tight")
    return out


def group_metrics_rows(named: Mapping[str, GroupMetrics], *, digits: int = 1) -> list[dict[str, Any]]:
    """One table row per name of a {name: GroupMetrics} mapping, in percent: the three averages under their
    conventions' names, the worst group, and each group."""
    return [{"model": name, "average (train-weighted)": f"{100 * m.average_train_weighted:.{digits}f}",
             "average (test)": f"{100 * m.average_test:.{digits}f}", "mean over groups": f"{100 * m.mean_over_groups:.{digits}f}",
             "worst-group": f"{100 * m.worst_group:.{digits}f}", **{g: f"{100 * a:.{digits}f}" for g, a in zip(m.group_names, m.per_group)}}
            for name, m in named.items()]
