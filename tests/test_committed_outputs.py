"""The outputs committed in every notebook: a full-mode run of the experiment code that wrote results/.

`make notebook-outputs` stores them (.ci/store_notebook_outputs.py). Each notebook's setup cell prints the mode and,
for notebooks with an experiment, kdteach.course.VERSION_LINE: the version of the experiment's code that ran
(kdteach.code_version) beside the committed result's. This test reads those lines from the stored outputs and fails
when the outputs come from smoke mode, or from experiment code other than the code recorded in results/, which is
what happens when an experiment is rerun into results/ and its notebook is not re-executed (or the other way round).
"""
import json
import re
from pathlib import Path

import pytest

from kdteach import results
from kdteach.course import VERSION_LINE
from kdteach.report import smoke_note

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
SMOKE_NOTE = smoke_note("smoke")
MAX_PNG_BYTES = 250_000  # a figure stored at screen resolution; a bigger one bloats the repository
MAX_NOTEBOOK_BYTES = 4_000_000
VERSION = re.compile(re.escape(VERSION_LINE).replace(r"\{name\}", r"(?P<name>\w+)").replace(r"\{here\}", r"(?P<here>[0-9a-f]{12})")
                     .replace(r"\{committed\}", r"(?P<committed>\S+)"))


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def text_of(cell: dict) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain") or output.get("data", {}).get("text/markdown") or ""
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def experiment_of(path: Path) -> str | None:
    number = path.name[:2]
    return next((name for name, label in results.NOTEBOOK_OF.items() if label.split(" ")[0] == number), None)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_ran_once_in_order_without_errors(path):
    cells = code_cells(path)
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{path.name}: cell {counts.index(None) + 1} has no stored run: execute it with `make notebook-outputs`"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}: not one run from the top"
    errors = [text_of(c)[:80] or c["outputs"][0].get("ename") for c in cells if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert not errors, f"{path.name}: stored outputs hold errors: {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_outputs_are_a_full_mode_run(path):
    cells = code_cells(path)
    setup = text_of(cells[0])
    assert "| mode full |" in setup, f"{path.name}: the stored setup output does not say full mode:\n{setup[:400]}"
    smoke = [i + 1 for i, c in enumerate(cells) if SMOKE_NOTE in text_of(c)]
    assert not smoke, f"{path.name}: code cells {smoke} print the smoke-mode note: the outputs are a smoke run"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if experiment_of(p)], ids=lambda p: p.name)
def test_the_outputs_come_from_the_experiment_code_that_wrote_results(path):
    name = experiment_of(path)
    match = VERSION.search(text_of(code_cells(path)[0]))
    assert match, f"{path.name}: the stored setup output has no code-version line; execute it with `make notebook-outputs`"
    assert match["name"] == name
    recorded = results.load_reference(name).meta.get("code_version")
    assert recorded, f"results/{name}/ records no code_version: rerun `python -m kdteach {name} --mode full` into results/"
    assert match["here"] == recorded, (
        f"{path.name}: its outputs ran {name}'s experiment code version {match['here']}, results/{name}/ was written by "
        f"version {recorded}: re-execute the notebook (`make notebook-outputs`) with the cache of that run, or rerun the experiment")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_small_pngs(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    images = [o["data"]["image/png"] for c in code_cells(path) for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    sizes = [len(img if isinstance(img, str) else "".join(img)) * 3 // 4 for img in images]  # base64 -> bytes
    assert all(size < MAX_PNG_BYTES for size in sizes), f"{path.name}: figure sizes {sizes}"


def test_every_course_notebook_that_draws_stores_its_figures():
    course = [p for p in NOTEBOOKS if p.parent.name == "notebooks" and p.name[:2] != "00"]
    without = [p.name for p in course if not any("image/png" in o.get("data", {}) for c in code_cells(p) for o in c.get("outputs", []))]
    assert not without, f"course notebooks whose stored outputs hold no figure: {without}"


def test_the_version_pattern_reads_the_line_setup_prints():
    line = VERSION_LINE.format(name="exits", here="0123456789ab", committed="unknown") + " (different: ...)"
    match = VERSION.search(line)
    assert match and (match["name"], match["here"], match["committed"]) == ("exits", "0123456789ab", "unknown")


def test_the_checks_refuse_smoke_outputs_and_outputs_of_other_code(tmp_path):
    """The checks above, on altered copies of notebook 05: each alteration is refused, the unaltered copy passes."""
    original = ROOT / "notebooks" / "05_early_exits.ipynb"
    notebook = json.loads(original.read_text(encoding="utf-8"))
    setup = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    text = text_of(setup)  # the setup cell's lines, however the kernel split them into outputs
    stream = {"output_type": "stream", "name": "stdout", "text": text}
    setup["outputs"] = [stream]

    def copy_with(new_text: str) -> Path:
        stream["text"] = new_text
        path = tmp_path / original.name
        path.write_text(json.dumps(notebook), encoding="utf-8")
        return path

    test_the_outputs_are_a_full_mode_run(copy_with(text))
    test_the_outputs_come_from_the_experiment_code_that_wrote_results(copy_with(text))
    with pytest.raises(AssertionError, match="does not say full mode"):
        test_the_outputs_are_a_full_mode_run(copy_with(text.replace("| mode full |", "| mode smoke |")))
    version = VERSION.search(text)["here"]
    with pytest.raises(AssertionError, match="re-execute the notebook"):
        test_the_outputs_come_from_the_experiment_code_that_wrote_results(copy_with(text.replace(version, "0" * 12, 1)))
    with pytest.raises(AssertionError, match="print the smoke-mode note"):
        test_the_outputs_are_a_full_mode_run(copy_with(text + SMOKE_NOTE))
    setup["execution_count"] = None
    with pytest.raises(AssertionError, match="has no stored run"):
        test_every_cell_ran_once_in_order_without_errors(copy_with(text))
