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


# ---------------------------------------------------------------------------------------------------------------
# Every bad choice is a usage error (exit 2) naming the argument and what it allows; nothing runs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["text", "--dataset", "bogus"], ["argument --dataset: invalid choice: 'bogus'", "'standin', 'multinli', 'civilcomments'"]),
    (["bogus"], ["argument NAME: invalid choice: 'bogus'", "'hinton', 'spurious', 'dedier', 'text', 'exits', 'sets', 'capstone'"]),
    (["hinton", "--mode", "fast"], ["argument --mode: invalid choice: 'fast'", "'full', 'smoke'"]),
    (["exits", "--seed", "-1"], ["argument --seed: must be a non-negative integer, got -1"]),
    (["sets", "--seed", "1.5"], ["argument --seed: must be a non-negative integer, got '1.5'"]),
    (["hinton", "--dataset", "standin"], ["unrecognized arguments: --dataset standin"]),
    ([], ["the following arguments are required: NAME"]),
])
def test_a_bad_choice_is_a_usage_error_naming_the_argument(argv, names, monkeypatch, capsys, tmp_path):
    calls = _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(argv + (["--out", str(tmp_path)] if argv and argv[0] in EXPERIMENTS else []))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for words in names:
        assert words in err
    assert "Traceback" not in err and calls == []


def test_text_with_a_bogus_dataset_exits_2_from_the_command_line(tmp_path):
    """The issue's case end to end: `python -m kdteach text --dataset bogus` (was exit 1 with a traceback)."""
    done = subprocess.run([sys.executable, "-m", "kdteach", "text", "--dataset", "bogus", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "argument --dataset: invalid choice: 'bogus' (choose from 'standin', 'multinli', 'civilcomments')" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cache_variable_naming_a_file_is_a_usage_error(tmp_path, monkeypatch, capsys):
    calls = _no_training(monkeypatch)
    taken = tmp_path / "cache.txt"
    taken.write_text("")
    monkeypatch.setenv("KDTEACH_CACHE", str(taken))
    with pytest.raises(SystemExit) as exit_info:
        main(["hinton", "--mode", "smoke", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and f"KDTEACH_CACHE names {taken}, which is a file" in capsys.readouterr().err
    assert calls == []


# ---------------------------------------------------------------------------------------------------------------
# The header line, and what --help says
# ---------------------------------------------------------------------------------------------------------------
def test_a_header_line_says_mode_device_data_and_folders_before_the_run(tmp_path, monkeypatch, capsys):
    from kdteach import runtime
    from kdteach.experiments import hinton

    monkeypatch.setattr(hinton, "run", lambda **kwargs: print("RUN STARTED"))
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["hinton", "--mode", "smoke", "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    head = printed[0]
    assert printed.index("RUN STARTED") == 1  # the header comes first
    assert head.startswith("kdteach hinton: mode smoke | device ")
    assert f"device {runtime.pick_device().type}" in head and "| seed 3 |" in head
    assert "data MNIST from the data folder" in head and f"| out {out} |" in head and f"cache {tmp_path / 'cache'}" in head


@pytest.mark.parametrize("mode, dataset, words", [("smoke", None, "data standin (generated, offline)"),
                                                  ("full", None, "data standin (generated, offline)"), ("full", "multinli", "data multinli (from the Hugging Face Hub)"),
                                                  ("smoke", "civilcomments", "data civilcomments (from the Hugging Face Hub)")])
def test_the_text_header_names_the_dataset_the_mode_picks(mode, dataset, words, tmp_path, monkeypatch, capsys):
    from kdteach.experiments import text

    monkeypatch.setattr(text, "run", lambda **kwargs: None)
    argv = ["text", "--mode", mode, "--out", str(tmp_path)] + (["--dataset", dataset] if dataset else [])
    assert main(argv) == 0
    assert words in capsys.readouterr().out.splitlines()[0]


def test_help_says_what_each_experiment_does_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "runs in mode 'full' unless --mode says otherwise" in top
    for name, experiment in EXPERIMENTS.items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert " ".join(experiment.does.split()) in text and "Data:" in text
        assert "(default: full)" in text and f"(default: runs/{name})" in text and "(default: 0)" in text
        assert ("--dataset {standin,multinli,civilcomments}" in text) == (name == "text")
