"""Tables and result files shared by every experiment: mean +- std over seeds, Markdown, JSON, figures."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float], *, scale: float = 1.0, digits: int = 1) -> str:
    """Formats values as "mean +- std" (sample std, ddof=1; a single value is printed alone).

    Args:
        values: one number per seed.
        scale: multiply before printing (100 for percentages).
        digits: decimals.

    Returns:
        e.g. "91.3 ± 1.2 (n=3)".
    """
    array = np.asarray(values, dtype=float) * scale
    if array.size == 0:
        return "n/a"
    if array.size == 1:
        return f"{array[0]:.{digits}f} (n=1)"
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f} (n={array.size})"


def paired_differences(rows: Sequence[Mapping[str, Any]], model: str, reference: str, metric: str, *, key: str = "model") -> list[float]:
    """Per-seed differences model - reference in points (x100), over the seeds where both have a finite value.

    Runs of the same seed share the initialisation and the batch order, so the difference within a seed removes
    much of the seed-to-seed noise that the two means carry.

    Args:
        rows: one row per (model, seed), with "seed", key and metric.
        model, reference: the two values of rows' key column to compare.
        metric: the column compared (a fraction).
        key: the column naming the model or method.

    Returns:
        One difference per shared seed, in seed order.
    """
    def values(name: str) -> dict[Any, float]:
        return {row["seed"]: float(row[metric]) for row in rows if row[key] == name and not math.isnan(float(row[metric]))}

    ours, theirs = values(model), values(reference)
    return [100 * (ours[s] - theirs[s]) for s in sorted(set(ours) & set(theirs))]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Renders rows (dicts) as a Markdown table; floats get 4 significant digits.

    Args:
        rows: one dict per row.
        columns: column order; default the keys of the first row, then any new keys in order of appearance.

    Returns:
        The table as a string.
    """
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return value.tolist()
    return value


def write_report(out: str | Path, name: str, *, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], figures: Mapping[str, Any] | None = None, title: str = "") -> Path:
    """Writes NAME.json (rows and meta), NAME.md (the table) and one PNG per figure into out.

    Args:
        out: folder (created).
        name: file stem.
        rows: the table.
        meta: what produced it (mode, seeds, device, timings, ...).
        figures: name -> matplotlib Figure.
        title: a heading for the Markdown file.

    Returns:
        The folder written to.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": _jsonable(meta), "rows": _jsonable(list(rows))}, indent=2))
    header = f"# {title or name}\n\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items())
    (out / f"{name}.md").write_text(header + "\n" + markdown_table(rows) + "\n")
    for fig_name, fig in (figures or {}).items():
        fig.savefig(out / f"{fig_name}.png", dpi=120, bbox_inches="tight")
    return out
