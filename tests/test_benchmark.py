"""The throughput benchmark: it says it needs a GPU on a CPU machine, and its three timings run (tiny, on CPU)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_throughput.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kd_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_without_gpu_it_says_so_and_exits_zero(capsys):
    assert load_benchmark().main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_three_timings_run_and_are_reported(tmp_path):
    out = tmp_path / "bench.json"
    assert load_benchmark().main(["--allow-cpu", "--images", "64", "--batch-size", "32", "--tutorial-steps", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in ("fit_images_per_s", "tutorial_images_per_s", "limit_images_per_s"):
        assert results[key] > 0
    assert results["fit_over_limit"] == pytest.approx(results["fit_images_per_s"] / results["limit_images_per_s"])
