"""runtime: the smoke flag, folders, seeding, device choice, the notebooks' setup cell."""
import importlib
import random

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


def test_setup_cell_installs_from_the_one_repo_url():
    source = runtime.setup_cell_source(0)
    assert runtime.REPO_URL in source and "kd.runtime.setup(seed=0)" in source
    assert "google.colab" in source
    assert kd.__version__


def test_one_cpu_thread_for_small_runs_only():
    assert kd.runtime.threads_for_rows(3000, "cpu") == 1 and kd.runtime.threads_for_rows(10_000, "cpu") == 1
    assert kd.runtime.threads_for_rows(60_000, "cpu") is None
    assert kd.runtime.threads_for_rows(3000, "cuda") is None
    before = torch.get_num_threads()
    with kd.runtime.cpu_threads(kd.runtime.threads_for_rows(3000, "cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
