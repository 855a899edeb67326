"""Every notebook: the shared setup cell first, a Colab badge, committed without outputs, no env parsing."""
import json
from pathlib import Path

import pytest

from kdteach.runtime import setup_cell_source

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"
    assert NOTEBOOKS[0].name.startswith("00_")  # the statistics primer comes first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_setup_cell(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert source(code[0]) == setup_cell_source(0)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    # The only stored outputs allowed are the references of cells nbval checks (marked NBVAL_CHECK_OUTPUT).
    for cell in cells(path):
        if cell["cell_type"] != "code":
            continue
        if source(cell).startswith(CHECK_MARK):
            # nbval needs the reference: stored outputs and an execution count (.ci/notebook_references.py).
            assert cell.get("outputs") and cell.get("execution_count") is not None, f"{path.name}: reference cell not stored"
            assert cell["metadata"].get("keep_output") is True, f"{path.name}: reference cell lacks keep_output"
        else:
            assert not cell.get("outputs"), f"{path.name}: a cell has stored outputs: {source(cell)[:60]!r}"
            assert cell.get("execution_count") is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_and_no_environment_parsing(path):
    text = path.read_text()
    assert f"notebooks/{path.name}" in source(cells(path)[0]) and "colab-badge" in source(cells(path)[0])
    assert "os.environ" not in text and "getenv" not in text and "KDTEACH_SMOKE" not in "".join(
        source(c) for c in cells(path) if c["cell_type"] == "code")
