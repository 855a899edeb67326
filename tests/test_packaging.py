"""The installed package carries the reference results: a wheel built from the checkout, installed into a folder
of its own, and a notebook copied alone to an empty folder (the checkout invisible) shows the committed tables and
findings.

This is what a pip or Colab install sees. The wheel is built from a copy of the checkout's package files, so the
build writes nothing into the working tree, and installed with --no-deps (torch and the rest come from the running
environment; nothing is downloaded).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kdteach import runtime
from kdteach.report import markdown_table

ROOT = runtime.checkout_root()
RESULTS = ROOT / "results"
# The files a wheel is built from; everything else in the checkout (notebooks, tests, caches) stays out.
BUILD_INPUTS = ("kdteach", "results", "setup.py", "pyproject.toml", "README.md")

pytestmark = pytest.mark.timeout(300)


def committed(pattern: str) -> set[str]:
    """results/ files matching pattern, as paths relative to results/ (listed from the checkout, not the wheel)."""
    return {p.relative_to(RESULTS).as_posix() for p in RESULTS.glob(pattern)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of kdteach built from a copy of the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(out), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (found,) = out.glob("kdteach-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (pip install --target), as a fresh environment would hold it."""
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return target


def isolated_env(site: Path) -> dict[str, str]:
    """The environment of a process that sees the installed copy and not the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDTEACH_")}
    env.update(PYTHONPATH=str(site), KDTEACH_SMOKE="1", KDTEACH_CACHE=str(site.parent / "cache"), MPLBACKEND="Agg")
    return env


def test_the_wheel_carries_every_committed_result(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packed = {n.removeprefix("kdteach/_references/") for n in names if n.startswith("kdteach/_references/")}
    for pattern in ("*/*.json", "*/*.md", "*/*.png"):
        expected = committed(pattern)
        assert expected, f"no results/{pattern} in the checkout"
        assert expected <= packed, f"missing from the wheel: {sorted(expected - packed)[:5]}"
    # Every file of the package folder (modules and data such as paper_claims.json), listed from the checkout.
    package_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kdteach").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert package_files <= names, f"missing from the wheel: {sorted(package_files - names)[:5]}"


def reference_cells(notebook: dict) -> list[str]:
    """The sources of a notebook's code cells that only show references (comments and kd.results calls)."""
    cells = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if cell["cell_type"] == "code" and lines and all(line.startswith("kd.results.") for line in lines):
            cells.append(source)
    return cells


def test_a_notebook_copied_alone_shows_the_references_of_the_installed_copy(installed: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 02 copied alone to an empty folder, its reference cells run in smoke mode in a kernel that sees only
    the installed copy (PYTHONPATH is the install folder; the checkout is on no path): what a Colab reader sees."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    alone = tmp_path / "alone"
    alone.mkdir()
    copy = alone / "02_spurious_correlations.ipynb"
    shutil.copy(ROOT / "notebooks" / copy.name, copy)
    sources = reference_cells(json.loads(copy.read_text(encoding="utf-8")))
    assert sources, "notebook 02 has no cell that only shows references"
    where = "import kdteach as kd\nprint('FILE', kd.__file__)\nprint('DIR', kd.results.results_dir())"
    cells = [where, *sources, "kd.results.show_reference('spurious')\nkd.results.show_findings('spurious')",
             "kd.results.show_findings('hinton')"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    for key in [k for k in os.environ if k.startswith("KDTEACH_")]:
        monkeypatch.delenv(key)
    for key, value in isolated_env(installed).items():
        monkeypatch.setenv(key, value)
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(alone)}}).execute()
    outputs = ["".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream") for cell in notebook.cells]
    # Imported from the installed copy, reading its own results, not the checkout's.
    assert f"FILE {installed / 'kdteach' / '__init__.py'}" in outputs[0]
    assert f"DIR {installed / 'kdteach' / '_references'}" in outputs[0]
    spurious = json.loads((RESULTS / "spurious" / "spurious.json").read_text(encoding="utf-8"))
    table, findings = markdown_table(spurious["rows"]), [f"- {line}" for line in spurious["meta"]["findings"]]
    notebook_cells = "\n".join(outputs[1:1 + len(sources)])
    assert "none committed" not in "\n".join(outputs)
    if any("show_reference" in s for s in sources):
        assert table in notebook_cells
    if any("show_findings" in s for s in sources):
        assert all(line in notebook_cells for line in findings)
    assert table in outputs[-2] and f"commit {spurious['meta']['commit']}" in outputs[-2]
    assert all(line in outputs[-2] for line in findings)
    # hinton's sentences, or where a result stores none (results before it did), its companion tables instead
    hinton = json.loads((RESULTS / "hinton" / "hinton.json").read_text(encoding="utf-8"))["meta"].get("findings")
    if hinton:
        assert all(f"- {line}" in outputs[-1] for line in hinton)
    else:
        seeds = json.loads((RESULTS / "hinton" / "hinton_seeds.json").read_text(encoding="utf-8"))
        assert markdown_table(seeds["rows"]) in outputs[-1]
