"""runtime: the run mode (chosen by setup, KDTEACH_SMOKE wins), folders, seeding, device choice, the notebooks'
setup cell: what it prints about the notebook's measured time and reused models, and the Colab Drive cache."""
import importlib
import json
import random
import sys
import types

import numpy as np
import pytest
import torch

import kdteach as kd
from kdteach import runtime


def test_smoke_flag_is_read_from_the_environment(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("KDTEACH_SMOKE", value)
        assert importlib.reload(runtime).SMOKE is expected
    monkeypatch.delenv("KDTEACH_SMOKE")
    assert importlib.reload(runtime).mode() == "full"


def test_folders_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDTEACH_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "c"))
    assert runtime.data_dir() == tmp_path / "d"
    assert runtime.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_setup_seeds_everything_and_reports(capsys):
    device = runtime.setup(seed=5)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.setup(seed=5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    out = capsys.readouterr().out
    assert "device" in out and "mode" in out and "data" in out
    assert device == runtime.pick_device()
    with pytest.raises(ValueError, match="seed"):
        runtime.setup(seed=-1)


def test_cpu_without_gpu():
    if not torch.cuda.is_available():
        assert runtime.pick_device().type in ("cpu", "mps")


def test_one_cpu_thread_for_small_runs_only():
    assert kd.runtime.threads_for_rows(3000, "cpu") == 1 and kd.runtime.threads_for_rows(10_000, "cpu") == 1
    assert kd.runtime.threads_for_rows(60_000, "cpu") is None
    assert kd.runtime.threads_for_rows(3000, "cuda") is None
    before = torch.get_num_threads()
    with kd.runtime.cpu_threads(kd.runtime.threads_for_rows(3000, "cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture
def chosen_mode(monkeypatch):
    """Restores the mode a test's setup(mode=...) chooses, so no other test runs in it; KDTEACH_SMOKE unset."""
    monkeypatch.delenv("KDTEACH_SMOKE", raising=False)
    monkeypatch.setattr(runtime, "_chosen_mode", runtime._chosen_mode)
    monkeypatch.setattr(runtime, "SMOKE", runtime.SMOKE)


def _configs(mode):
    from kdteach.experiments import capstone, dedier, exits, hinton, sets, spurious, text

    return {"hinton": (hinton.config(), hinton.config(mode)), "spurious": (spurious.config(), spurious.config(mode)),
            "dedier": (dedier.config(), dedier.config(mode)), "text": (text.config(), text.config(mode)),
            "exits": (exits.config(), exits.config(mode)), "sets": (sets.config(), sets.config(mode)),
            "wiggle": (sets.wiggle_config(), sets.wiggle_config(mode)), "capstone": (capstone.config(), capstone.config(mode))}


def test_every_config_follows_the_mode_setup_chose(chosen_mode):
    assert runtime.mode() == "full" or runtime._chosen_mode is not None
    for chosen in ("smoke", "full", "smoke"):
        runtime.setup(seed=0, mode=chosen, verbose=False)
        assert runtime.mode() == chosen and runtime.SMOKE is (chosen == "smoke")
        for name, (by_default, explicit) in _configs(chosen).items():
            assert by_default == explicit, f"{name}.config(None) is not the {chosen} configuration after setup(mode={chosen!r})"
    full, smoke = _configs("full"), _configs("smoke")
    assert all(full[name][1] != smoke[name][1] for name in full), "a smoke and a full configuration are the same"
    runtime.setup(seed=0, verbose=False)  # mode=None keeps the choice
    assert runtime.mode() == "smoke"


def test_the_environment_wins_over_the_notebooks_mode(chosen_mode, monkeypatch, capsys):
    monkeypatch.setenv("KDTEACH_SMOKE", "1")
    runtime.setup(seed=0, mode="full")
    assert runtime.mode() == "smoke" and runtime.SMOKE is True
    from kdteach.experiments import hinton

    assert hinton.config() is hinton.SMOKE_CONFIG
    out = capsys.readouterr().out
    assert "mode smoke" in out and "KDTEACH_SMOKE=1 in the environment wins over MODE = 'full'" in out
    monkeypatch.setenv("KDTEACH_SMOKE", "0")  # a variable that does not ask for smoke leaves the notebook's choice
    assert runtime.mode() == "full"


def test_setup_refuses_bad_choices_by_name(chosen_mode):
    with pytest.raises(ValueError, match="mode must be one of 'smoke', 'full', got 'fast'"):
        runtime.setup(seed=0, mode="fast", verbose=False)
    with pytest.raises(ValueError, match="notebook must be one of 00, 01.*got 8"):
        runtime.setup(seed=0, notebook=8, verbose=False)
    with pytest.raises(ValueError, match="drive_cache must be True or False"):
        runtime.setup(seed=0, drive_cache="yes", verbose=False)
    with pytest.raises(ValueError, match="notebook must be one of"):
        runtime.setup_cell_source("08")
    assert runtime.mode() == "full"  # a refused call changed nothing


def _minutes(seconds):
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def test_setup_prints_the_notebooks_measured_time_from_its_committed_result(chosen_mode, capsys):
    meta = json.loads((kd.results.results_dir() / "spurious" / "spurious.json").read_text(encoding="utf-8"))["meta"]
    runtime.setup(seed=0, mode="full", notebook="02")
    out = capsys.readouterr().out
    assert f"notebook 02's reference run (`python -m kdteach spurious --mode full`, {len(meta['seeds'])} seeds) took " \
           f"{_minutes(meta['wall_seconds'])} on a {meta['device']}" in out
    assert "reuses" not in out  # notebook 02 trains everything it uses
    runtime.setup(seed=0, mode="full", notebook="00")
    assert "notebook 00 has no committed reference result, so no measured full-mode time" in capsys.readouterr().out


def test_a_result_without_a_wall_time_says_so(chosen_mode, capsys, monkeypatch, tmp_path):
    (tmp_path / "hinton").mkdir()
    (tmp_path / "hinton" / "hinton.json").write_text(json.dumps({"meta": {"seeds": [0]}, "rows": []}))
    (tmp_path / "exits").mkdir()
    (tmp_path / "exits" / "exits.json").write_text("{not json")
    monkeypatch.setattr(kd.results, "results_dir", lambda: tmp_path)
    assert runtime.reference_time("01") == ("notebook 01's reference run (hinton) has no measured wall time committed", None)
    sentence, seconds = runtime.reference_time("05")
    assert seconds is None and "cannot be read" in sentence and "exits.json" in sentence
    assert runtime.reference_time("02")[1] is None  # no spurious.json in this folder


def _fake_checkpoint(path, *, epochs, done, seconds=1.5, rows=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = {"epochs": epochs, **({"train.rows": rows} if rows is not None else {})}
    torch.save({"signature": signature, "history": [{"epoch": float(e), "seconds": seconds} for e in range(done)]}, path)


def test_setup_says_whether_a_reused_model_is_in_the_cache(chosen_mode, capsys, monkeypatch, tmp_path):
    from kdteach.experiments import exits, spurious

    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path))
    runtime.setup(seed=0, mode="smoke", notebook="03")
    assert "reuses notebook 02's group-balanced teacher (waterbirds_like, seed 0): not in the cache; the notebook " \
           "trains it first" in capsys.readouterr().out
    teacher = spurious.checkpoint(spurious.config("smoke"), "teacher_balanced", 0)
    _fake_checkpoint(teacher, epochs=3, done=1)
    runtime.setup(seed=0, mode="smoke", notebook="07")
    assert "in the cache, unfinished (1 of 3 epochs); the notebook resumes it" in capsys.readouterr().out
    _fake_checkpoint(teacher, epochs=3, done=3, seconds=20.0)
    runtime.setup(seed=0, mode="smoke", notebook="03", solutions=True)
    out = capsys.readouterr().out
    assert "group-balanced teacher (waterbirds_like, seed 0): in the cache (3 epochs, trained in 1 min 00 s)" in out
    assert "the solutions of notebook 03 reload its models" in out
    runtime.setup(seed=0, mode="full", notebook="03")  # the full-mode teacher is another file, not there
    meta = json.loads((kd.results.results_dir() / "spurious" / "spurious.json").read_text(encoding="utf-8"))["meta"]
    assert f"part of notebook 02's reference run, which took {_minutes(meta['wall_seconds'])}" in capsys.readouterr().out
    # Notebook 06: a checkpoint of notebook 05's exit-distilled model of the current mode's size counts, another does not.
    cfg = exits.config("smoke")
    _fake_checkpoint(tmp_path / "exits" / "distill0.5-000000000000.pt", epochs=cfg.epochs, done=cfg.epochs, rows=cfg.train_size + 1)
    runtime.setup(seed=0, mode="smoke", notebook="06")
    assert "exit-distilled multi-exit ResNet (distill weight 0.5): not in the cache" in capsys.readouterr().out
    _fake_checkpoint(tmp_path / "exits" / "distill0.5-111111111111.pt", epochs=cfg.epochs, done=cfg.epochs, rows=cfg.train_size)
    runtime.setup(seed=0, mode="smoke", notebook="06")
    assert f"(distill weight 0.5): in the cache ({cfg.epochs} epochs" in capsys.readouterr().out


def test_drive_cache_on_colab_only(chosen_mode, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "local"))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    runtime.setup(seed=0, drive_cache=True)
    assert "DRIVE_CACHE = True is for Colab; ignored here" in capsys.readouterr().out
    assert runtime.cache_dir() == tmp_path / "local"
    with pytest.raises(RuntimeError, match="Colab only"):
        runtime.use_drive_cache()
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(runtime, "DRIVE_CACHE_FOLDER", str(tmp_path / "drive" / "kdteach" / "cache"))
    runtime.setup(seed=0, drive_cache=True)
    assert mounted == [runtime.DRIVE_MOUNT]
    assert runtime.cache_dir() == tmp_path / "drive" / "kdteach" / "cache"
    assert f"Google Drive mounted; cache in {tmp_path / 'drive' / 'kdteach' / 'cache'}" in capsys.readouterr().out


def _runnable(source):
    """The setup cell as plain Python: Colab's %pip line (IPython syntax, run on Colab only) made a pass."""
    return "\n".join(line.split("%pip")[0] + "pass" if line.strip().startswith("%pip") else line for line in source.splitlines())


def test_setup_cell_chooses_the_mode_visibly_before_anything_runs(chosen_mode, capsys):
    source = runtime.setup_cell_source("03")
    lines = source.splitlines()
    assert runtime.REPO_URL in source and "google.colab" in source and kd.__version__
    mode_line = next(i for i, line in enumerate(lines) if line.startswith('MODE = "full"'))
    assert mode_line < next(i for i, line in enumerate(lines) if line.startswith("import"))
    assert '"smoke"' in lines[mode_line] and "KDTEACH_SMOKE=1" in source and "wins over MODE" in source
    assert lines[-1] == 'device = kd.runtime.setup(seed=0, mode=MODE, notebook="03", drive_cache=DRIVE_CACHE)'
    assert 'notebook="03", solutions=True,' in runtime.setup_cell_source("03", solutions=True)
    assert all(len(line) <= 120 for line in lines)
    namespace: dict = {}
    exec(compile(_runnable(source.replace('MODE = "full"', 'MODE = "smoke"')), "setup cell", "exec"), namespace)
    assert runtime.mode() == "smoke" and namespace["device"] == runtime.pick_device()
    assert "mode smoke" in capsys.readouterr().out
    exec(compile(_runnable(source), "setup cell", "exec"), namespace)
    assert runtime.mode() == "full" and namespace["DRIVE_CACHE"] is False
