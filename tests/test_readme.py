"""The README a newcomer reads first: short, its commands real, every notebook listed, the package map current.

Its results lines are generated and checked in tests/test_results.py; its links are followed on the built site in
tests/test_site.py.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kdteach import runtime

ROOT = runtime.checkout_root()
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Words about how the project is being built, which mean nothing to a reader of the course.
DEVELOPMENT_WORDING = ("changed this turn", "this turn", "DESIGN.md", "../shared", "has been lent", "no GPU has been")


def section(title: str) -> str:
    """The text of one `## title` section of the README."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_it_reads_in_two_minutes_and_speaks_to_a_reader() -> None:
    assert len(README.splitlines()) <= 150, "README.md is long: full tables belong in results/README.md"
    for words in DEVELOPMENT_WORDING:
        assert words not in README, f"README.md says {words!r}"


def test_the_quick_start_commands_are_real_make_targets(tmp_path: Path) -> None:
    quick = section("Quick start")
    for command in ("make course", "make test", "KDTEACH_SMOKE=1 make course"):
        assert command in quick
    for target in ("course", "test"):
        dry = subprocess.run(["make", "-n", target, "NO_BROWSER=1"], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    # make test runs the unit tests and the notebooks side by side; the unit tests never share the notebooks' cache
    dry = subprocess.run(["make", "-n", "test", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    unit = next(line for line in dry if "pytest -q tests" in line)
    assert "-j2" in next(line for line in dry if "unit notebooks" in line) and unit.startswith("env -u KDTEACH_CACHE ")
    assert any("--nbval-lax" in line for line in dry)
    # CPU=1 installs the CPU-only torch before kdteach (pip keeps a torch that is already there).
    dry = subprocess.run(["make", "-n", "-B", "course", "CPU=1", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    cpu = next(i for i, line in enumerate(dry) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    kdteach = next(i for i, line in enumerate(dry) if "pip install -e" in line and "jupyterlab" in line)  # kdteach with its text extra
    assert cpu < kdteach and "CPU=1 make course" in section("Where to run it")


def test_the_course_table_lists_every_notebook_with_its_colab_badge() -> None:
    course = section("The course")
    colab = runtime.REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        assert f"](notebooks/{notebook.name})" in course, f"the course table does not link {notebook.name}"
        assert f"]({colab}/blob/main/notebooks/{notebook.name})" in course, f"{notebook.name} has no Colab badge"
    assert "](docs/facilitator.md)" in README


def test_the_package_map_names_every_module() -> None:
    package_map = section("Package map")
    package = ROOT / "kdteach"
    names = [p.stem for p in package.glob("*.py") if not p.stem.startswith("_")]
    names += [p.name for p in package.iterdir() if (p / "__init__.py").exists() and not p.name.startswith("_")]
    missing = [n for n in sorted(names) if f"`{n}`" not in package_map and f"`{n}/" not in package_map]
    assert not missing, f"README.md's Package map does not name: {missing}"


@pytest.mark.parametrize("path", ["docs/facilitator.md", "results/README.md", "data/README.md", "docs/development.md"])
def test_the_pages_it_links_exist(path: str) -> None:
    if f"]({path})" not in README:
        pytest.fail(f"README.md does not link {path}")
    assert (ROOT / path).exists(), f"README.md links {path}, which is missing"
