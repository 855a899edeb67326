"""Result files (kdteach.report.files): provenance records whether the package's files had uncommitted changes, a
full-mode result from such a tree is refused unless allowed, and findings are a Markdown bullet list."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from kdteach import report
from kdteach.report import files

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(folder, *args):
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=folder, check=True, capture_output=True)


@needs_git
def test_working_tree_changes_counts_the_packages_uncommitted_files(tmp_path, monkeypatch):
    package = tmp_path / "repo" / "kdteach"
    package.mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (tmp_path / "repo" / "outside.txt").write_text("not the package\n")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-q", "-m", "start")
    monkeypatch.setattr(files, "PACKAGE_DIR", package)
    assert report.working_tree_changes() == 0
    (package / "a.py").write_text("x = 2\n")  # modified
    (package / "b.py").write_text("y = 1\n")  # new, untracked
    (tmp_path / "repo" / "outside.txt").write_text("changed, but not the package's code\n")
    assert report.working_tree_changes() == 2
    meta = report.provenance(experiment="exits", config={"n": 1}, seeds=[0], wall_seconds=1.0, device="cpu")
    assert meta["dirty"] is True and meta["dirty_files"] == 2 and len(meta["commit"]) >= 7
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-q", "-m", "more")
    clean = report.provenance(experiment="exits", config={"n": 1}, seeds=[0], wall_seconds=1.0, device="cpu")
    assert clean["dirty"] is False and clean["dirty_files"] == 0
    monkeypatch.setattr(files, "PACKAGE_DIR", tmp_path)  # not a git checkout (an installed package): unknown
    assert report.working_tree_changes() is None
    unknown = report.provenance(experiment="exits", config={}, seeds=[0], wall_seconds=1.0, device="cpu")
    assert unknown["dirty"] is None and unknown["commit"] == "unknown"


def _meta(mode: str, dirty_files: int | None, findings=("The first finding.", "The second one.")) -> dict:
    return {"mode": mode, "commit": "abc1234", "dirty": None if dirty_files is None else dirty_files > 0, "dirty_files": dirty_files,
            "findings": list(findings) if not isinstance(findings, str) else findings}


def test_a_full_mode_result_from_a_dirty_tree_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv(report.ALLOW_DIRTY_ENV, raising=False)
    rows = [{"model": "a", "accuracy": 0.9}]
    with pytest.raises(RuntimeError, match=r"refusing to write a full-mode result: 3 file\(s\) .* uncommitted .* allow_dirty=True or KDTEACH_ALLOW_DIRTY=1"):
        report.write_report(tmp_path / "refused", "x", rows=rows, meta=_meta("full", 3))
    assert not (tmp_path / "refused").exists()  # nothing half-written
    report.write_report(tmp_path / "allowed", "x", rows=rows, meta=_meta("full", 3), allow_dirty=True)
    assert json.loads((tmp_path / "allowed" / "x.json").read_text())["meta"]["dirty"] is True  # it says so
    report.write_report(tmp_path / "smoke", "x", rows=rows, meta=_meta("smoke", 3))  # smoke numbers are not references
    report.write_report(tmp_path / "clean", "x", rows=rows, meta=_meta("full", 0))
    report.write_report(tmp_path / "unknown", "x", rows=rows, meta=_meta("full", None))  # an installed package
    monkeypatch.setenv(report.ALLOW_DIRTY_ENV, "1")
    report.write_report(tmp_path / "by-env", "x", rows=rows, meta=_meta("full", 3))
    assert all((tmp_path / d / "x.json").exists() for d in ("allowed", "smoke", "clean", "unknown", "by-env"))


def test_findings_are_a_bullet_list_in_the_markdown(tmp_path):
    report.write_report(tmp_path, "x", rows=[{"a": 1}], meta=_meta("smoke", 0, ["First, with [brackets].", "", "Second."]))
    text = (tmp_path / "x.md").read_text(encoding="utf-8")
    assert "## Findings\n\n- First, with [brackets].\n- Second.\n" in text  # one "- " line per finding, empty ones dropped
    assert "['" not in text and "- findings:" not in text  # not a Python list
    assert json.loads((tmp_path / "x.json").read_text())["meta"]["findings"][0] == "First, with [brackets]."
    with pytest.raises(ValueError, match=r"meta\['findings'\] must be a list of sentences"):
        report.write_report(tmp_path / "bad", "x", rows=[], meta=_meta("smoke", 0, "one string, not a list"))
