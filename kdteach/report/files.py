"""Tables, provenance and result files: how every experiment writes what it measured."""
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

from kdteach.groups import GroupMetrics

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # kdteach/: the code whose commit provenance records


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


def provenance(*, config: Any, seeds: Sequence[int], wall_seconds: float, device: str) -> dict[str, Any]:
    """The provenance fields every result file carries: commit, date, device, torch, wall_seconds, seeds, config.

    Args:
        config: the experiment's configuration (a dataclass).
        seeds: the seeds run.
        wall_seconds: how long the run took.
        device: the torch device it ran on ("cpu" becomes "N-core CPU", a CUDA device its card's name).

    Returns:
        A JSON-ready dict.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))
    elif device == "cpu":
        device = f"{os.cpu_count()}-core CPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=PACKAGE_DIR).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "date": time.strftime("%Y-%m-%d"), "device": device, "torch": torch.__version__,
            "wall_seconds": round(float(wall_seconds), 1), "seeds": list(seeds), "config": to_jsonable(config)}


def write_report(out: str | Path, name: str, *, rows: Sequence[Any], meta: Mapping[str, Any],
                 figures: Mapping[str, Any] | None = None, title: str = "", result: object | None = None) -> Path:
    """Writes NAME.json (meta, rows and the typed result), NAME.md (the table) and one PNG per figure into out.

    Args:
        out: folder (created).
        name: file stem.
        rows: the table (dicts or dataclasses).
        meta: what produced it (provenance(), mode, ...).
        figures: name -> matplotlib Figure.
        title: a heading for the Markdown file.
        result: the typed result (a dataclass), stored whole under "result".

    Returns:
        The folder written to.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": to_jsonable(meta), "rows": to_jsonable(list(rows))}
    if result is not None:
        payload["result"] = to_jsonable(result)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    header = f"# {title or name}\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "config")
    (out / f"{name}.md").write_text(header + "\n" + markdown_table(rows) + "\n")
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
