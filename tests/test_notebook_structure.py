"""The course's notebook anatomy (DESIGN.md), checked on every notebook: a build-it cell checked against the
package, 3-5 exercises (one "predict before you run") with solutions in notebooks/solutions/ that CI executes,
questions to discuss, references with arXiv ids, a link to the next notebook, and short code cells."""
import json
from pathlib import Path

import pytest

from kdteach.course import setup_cell_source

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(ROOT.glob("[0-9][0-9]_*.ipynb"))
BUILD_MARK = "# Build it:"
SETUP_MARK = setup_cell_source("00").splitlines()[0]  # the setup cell (tests/test_notebooks.py checks it whole)
MAX_CODE_LINES = 25  # longer cells are package code in the wrong place (build-it cells excepted)
# arXiv ids each notebook must cite (Bucila et al. 2006 has none; it is cited by its KDD DOI).
REFERENCES = {
    "00": ["2107.07511", "2103.03098"],
    "01": ["1503.02531"],
    "02": ["1911.08731"],
    "03": ["2310.18590", "2107.09044", "1911.08731", "2203.14001"],
    "04": ["2310.18590", "1910.01108"],
    "05": ["1709.01686", "1703.09844"],
    "06": ["2009.14193", "2311.05931"],
    "07": ["2310.18590", "2311.05931", "2009.14193", "1908.05428"],
}


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def markdown(path):
    return [source(c) for c in cells(path) if c["cell_type"] == "markdown"]


def exercises(path):
    return [m for m in markdown(path) if m.lstrip().startswith("### Exercise")]


def solutions_of(path):
    return ROOT / "solutions" / path.name.replace(".ipynb", "_solutions.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_build_it_cell_checked_against_the_package(path):
    built = [source(c) for c in cells(path) if c["cell_type"] == "code" and source(c).startswith(BUILD_MARK)]
    assert built, f"{path.name}: no code cell starting with {BUILD_MARK!r}"
    assert any("assert_close" in b for b in built), f"{path.name}: no build-it cell checks itself with assert_close"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_three_to_five_exercises_one_predict_before_you_run(path):
    found = exercises(path)
    assert 3 <= len(found) <= 5, f"{path.name}: {len(found)} exercises (### Exercise ...), want 3-5"
    assert any("predict before you run" in e.lower() for e in found), f"{path.name}: no 'predict before you run' exercise"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_solution_in_the_solutions_notebook(path):
    solved = solutions_of(path)
    assert solved.exists(), f"{path.name}: no solutions notebook at {solved.relative_to(ROOT.parent)}"
    heads = [m for m in markdown(solved) if m.lstrip().startswith("### Solution")]
    assert len(heads) == len(exercises(path)), f"{solved.name}: {len(heads)} solutions for {len(exercises(path))} exercises"
    assert f"solutions/{solved.name}" in "".join(markdown(path)), f"{path.name}: exercises do not link their solutions"
    code = [c for c in cells(solved) if c["cell_type"] == "code"]
    assert code and source(code[0]) == setup_cell_source(path.name[:2], solutions=True), f"{solved.name}: first code cell is not the setup cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_questions_references_and_next(path):
    md = markdown(path)
    questions = next((m for m in md if m.lstrip().startswith("## Questions to discuss")), None)
    assert questions and questions.count("\n- ") + questions.count("\n1. ") + questions.count("\n2. ") >= 3, f"{path.name}: no list of questions to discuss"
    refs = next((m for m in md if m.lstrip().startswith("## References")), "")
    missing = [i for i in REFERENCES[path.name[:2]] if f"arxiv.org/abs/{i}" not in refs]
    assert not missing, f"{path.name}: references lack arXiv links {missing}"
    last = md[-1]
    assert last.lstrip().startswith("**Next:**") and (".ipynb" in last or "README" in last), f"{path.name}: last cell is not the next link"
    number = int(path.name[:2])
    following = [p.name for p in NOTEBOOKS if int(p.name[:2]) == number + 1]
    if following:
        assert following[0] in last, f"{path.name}: next link does not point to {following[0]}"


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_code_cells_are_short(path):
    long = [(len(source(c).splitlines()), source(c).splitlines()[0]) for c in cells(path) if c["cell_type"] == "code"
            and not source(c).startswith(BUILD_MARK) and not source(c).startswith(SETUP_MARK)
            and len(source(c).splitlines()) > MAX_CODE_LINES]
    assert not long, f"{path.name}: code cells longer than {MAX_CODE_LINES} lines: {long}"


SCORECARD_HEAD = "## Scorecard: the paper's claims beside this course's measurements"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] != "00"], ids=lambda p: p.name)
def test_a_scorecard_before_the_exercises(path):
    all_cells = cells(path)
    heads = [i for i, c in enumerate(all_cells) if c["cell_type"] == "markdown" and source(c).lstrip().startswith(SCORECARD_HEAD)]
    assert len(heads) == 1, f"{path.name}: want one markdown cell starting {SCORECARD_HEAD!r}"
    after = all_cells[heads[0] + 1]
    assert after["cell_type"] == "code" and f'kd.scorecard.scorecard_table("{path.name[:2]}")' in source(after), \
        f"{path.name}: the scorecard heading is not followed by kd.scorecard.scorecard_table({path.name[:2]!r})"
    exercises_at = next(i for i, c in enumerate(all_cells) if c["cell_type"] == "markdown" and source(c).lstrip().startswith("## Exercises"))
    assert heads[0] < exercises_at, f"{path.name}: the scorecard comes after the exercises"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_facilitator_guide_is_linked_near_the_top(path):
    first = [source(c) for c in cells(path)[:4] if c["cell_type"] == "markdown"]
    assert any("](../docs/facilitator.md)" in m for m in first), f"{path.name}: no link to ../docs/facilitator.md near the top"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_predict_before_each_headline_result(path):
    # At least one prediction is asked for outside the exercises, before a result is computed.
    md = [m for m in markdown(path) if not m.lstrip().startswith("### Exercise")]
    assert any("predict before you run" in m.lower() for m in md), f"{path.name}: no 'Predict before you run' before a result"


def test_the_core_of_03_fits_a_session_and_the_rest_is_marked():
    # The ablations, the official code's switches and real data come after the core, under one marked heading.
    path = ROOT / "03_early_readouts.ipynb"
    md = markdown(path)
    further = next((i for i, m in enumerate(md) if m.lstrip().startswith("## Going further (not needed for the 90-minute session)")), None)
    assert further is not None, "03: no 'Going further (not needed for the 90-minute session)' part"
    for step in ("## Step 5", "## Step 6", "## Step 7", "## Real data"):
        at = next(i for i, m in enumerate(md) if m.lstrip().startswith(step))
        assert at > further, f"03: {step!r} is in the core, before the going-further part"
    core_end = next(i for i, m in enumerate(md) if m.lstrip().startswith("## Questions to discuss"))
    assert core_end < further, "03: the going-further part must come after the core's exercises and questions"
