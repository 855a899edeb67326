"""The headless command: `python -m kdteach hinton --mode smoke --out DIR` writes its table and figures."""
import json
import os
import subprocess
import sys

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
