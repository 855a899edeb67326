"""runtime: the run mode (chosen by setup, KDTEACH_SMOKE wins), folders, seeding, device choice and the Colab Drive
cache. What a notebook's setup cell prints about its measured time and reused models: tests/test_course.py."""
import importlib
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
    with pytest.raises(ValueError, match="drive_cache must be True or False"):
        runtime.setup(seed=0, drive_cache="yes", verbose=False)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        runtime.setup(seed=-1, verbose=False)
    assert runtime.mode() == "full"  # a refused call changed nothing


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
