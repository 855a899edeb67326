"""Notebook 00, the statistics primer: each "your turn" skeleton fails its grader until completed, and the worked
answers of the solutions notebook pass the course notebook's own graders.

The notebooks' code cells run here in one namespace each (the setup cell replaced by its import, which is all the
later cells use), so the graders are called directly: on the skeleton they must raise AssertionError, and the
course notebook's guarded cells must print "not yet" instead of failing CI's notebook run."""
import contextlib
import io
import json
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
COURSE, SOLUTIONS = ROOT / "00_primer.ipynb", ROOT / "solutions" / "00_primer_solutions.ipynb"
TURNS = (1, 2)


def code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells if c["cell_type"] == "code"]


def run(path):
    """Executes every code cell of a notebook after its setup cell; returns the namespace and each cell's stdout."""
    matplotlib.use("Agg")
    namespace: dict = {}
    exec("import kdteach as kd", namespace)
    printed = {}
    for source in code_cells(path)[1:]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, str(path), "exec"), namespace)
        printed[source.splitlines()[0]] = out.getvalue()
    return namespace, printed


@pytest.fixture(scope="module")
def course():
    return run(COURSE)


@pytest.fixture(scope="module")
def solutions():
    return run(SOLUTIONS)


def test_each_turn_has_a_skeleton_and_a_guarded_check():
    sources = code_cells(COURSE)
    for turn in TURNS:
        skeleton = [s for s in sources if s.startswith(f"# Your turn {turn}:")]
        check = [s for s in sources if s.startswith(f"# Check your turn {turn}")]
        assert len(skeleton) == 1 and len(check) == 1, f"your turn {turn}: want one skeleton and one check cell"
        assert sources.index(check[0]) == sources.index(skeleton[0]) + 1, f"your turn {turn}: the check must follow the skeleton"
        assert "except AssertionError" in check[0] and "not yet" in check[0], f"your turn {turn}: the course's check is not guarded"


def test_skeletons_fail_their_graders(course):
    namespace, printed = course
    for turn in TURNS:
        check = next(text for first, text in printed.items() if first.startswith(f"# Check your turn {turn}"))
        assert check.startswith("not yet:"), f"your turn {turn}: the skeleton printed {check!r}"
    with pytest.raises(AssertionError, match="expected 'too few seeds', got None"):
        namespace["check_your_turn_1"](namespace["my_verdict"])
    with pytest.raises(AssertionError, match="set `sets`"):
        namespace["check_your_turn_2"](namespace["sets"])


def test_graders_catch_a_wrong_answer(course):
    namespace, _ = course
    with pytest.raises(AssertionError, match="expected"):
        namespace["check_your_turn_1"](lambda d: "clearly higher")  # ignores the rule below 3 seeds
    probs = namespace["probs_test"]
    with pytest.raises(AssertionError, match="entries differ"):
        namespace["check_your_turn_2"]((1.0 - probs) < namespace["threshold"] * 0.9)  # the wrong threshold


def test_worked_answers_pass_the_course_graders(course, solutions):
    namespace, _ = course
    solved, printed = solutions
    namespace["check_your_turn_1"](solved["my_verdict"])
    namespace["check_your_turn_2"](solved["sets"])
    checks = [text for first, text in printed.items() if first.startswith("# Check your turn")]
    assert len(checks) == len(TURNS) and all(text.startswith("correct") for text in checks)
