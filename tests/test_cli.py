"""The headless command: `python -m kdteach hinton --mode smoke --out DIR` writes its table and figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdteach.__main__ import EXPERIMENTS, main


def test_cli_lists_every_notebooks_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("hinton", "spurious", "dedier", "text", "exits", "sets"):
        assert name in out and name in EXPERIMENTS


def test_hinton_smoke_writes_table_and_figures(tmp_path):
    env = {**os.environ, "KDTEACH_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "kdteach", "hinton", "--mode", "smoke", "--out", str(out), "--no-progress"],
                   check=True, env=env, timeout=1200)
    result = json.loads((out / "hinton.json").read_text())
    assert [row["model"] for row in result["rows"]] == ["teacher", "student alone", "distilled student"]
    assert all(0 <= row["test errors"] <= row["out of"] for row in result["rows"])
    assert result["meta"]["mode"] == "smoke"
    assert "| teacher |" in (out / "hinton.md").read_text()
    assert (out / "regularizer.png").stat().st_size > 1000
    assert (out / "hinton_sweep.json").exists() and (out / "hinton_omitted.json").exists()


def test_text_passes_its_dataset_on(monkeypatch):
    from kdteach.experiments import text

    seen = {}
    monkeypatch.setattr(text, "run", lambda **kwargs: seen.update(kwargs))
    assert main(["text", "--mode", "smoke", "--dataset", "standin", "--no-progress"]) == 0
    assert seen["dataset"] == "standin" and seen["mode"] == "smoke"


def _no_training(monkeypatch):
    from kdteach.experiments import hinton

    calls = []
    monkeypatch.setattr(hinton, "run", lambda **kwargs: calls.append(kwargs))
    return calls


def test_out_that_is_a_file_stops_before_training(tmp_path, monkeypatch, capsys):
    calls = _no_training(monkeypatch)
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    for out in (taken, taken / "sub"):  # the file itself, and a folder that would have to live inside it
        with pytest.raises(SystemExit) as exit_info:
            main(["hinton", "--mode", "smoke", "--out", str(out), "--no-progress"])
        assert exit_info.value.code == 2
        assert f"--out: {out}" in capsys.readouterr().err
    assert calls == [] and taken.read_text() == "not a folder"


def test_out_in_a_read_only_folder_stops_before_training(tmp_path, monkeypatch, capsys):
    calls = _no_training(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if getattr(os, "geteuid", lambda: 1)() == 0:  # root writes to read-only folders anyway; nobody creates folders in /proc
        if not os.path.isdir("/proc/self"):
            pytest.skip("running as root without /proc: no folder here refuses root")
        locked = Path("/proc")
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["hinton", "--mode", "smoke", "--out", str(locked / "kdteach-out"), "--no-progress"])
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert exit_info.value.code == 2 and "cannot be created or written to" in capsys.readouterr().err
    assert calls == []


def test_out_is_created_when_missing(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch)
    out = tmp_path / "new" / "deeper"
    assert main(["hinton", "--mode", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert out.is_dir() and list(out.iterdir()) == [] and calls[0]["out"] == out


def test_cache_variable_naming_a_file_is_a_clear_error(tmp_path, monkeypatch):
    from kdteach import runtime

    taken = tmp_path / "cache.txt"
    taken.write_text("")
    monkeypatch.setenv("KDTEACH_CACHE", str(taken))
    with pytest.raises(ValueError, match=r"KDTEACH_CACHE names .*cache.txt, which is a file, not a folder"):
        runtime.cache_dir()
    monkeypatch.setenv("KDTEACH_CACHE", str(taken / "inside"))
    with pytest.raises(ValueError, match=r"KDTEACH_CACHE names .*cache.txt/inside, which cannot be created"):
        runtime.cache_dir()
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "fresh"))
    assert runtime.cache_dir() == tmp_path / "fresh" and (tmp_path / "fresh").is_dir()
