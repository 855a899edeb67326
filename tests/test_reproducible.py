"""Full-mode numbers reproduce from a clean clone: a small experiment of notebook 02's full shape (augmented batches,
group-balanced teacher, distilled students, validation selection), run twice in FRESH processes with EMPTY caches,
gives exactly the same numbers. Two processes, not two calls: a second call in one process could pass only because
of state the first left behind (a random stream, a cached teacher)."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import dataclasses, json, sys
from kdteach.experiments import spurious
cfg = dataclasses.replace(spurious.FULL_CONFIG, n_train=160, n_val=80, n_test=120, image_size=8, teacher_width=4, student_width=2,
                          teacher_epochs=2, student_epochs=2, batch_size=32, seeds=(0,), mode="full")
result = spurious.run_experiment(cfg, probes=False, progress=False)
print(json.dumps([[r.model, r.seed, r.epoch_kept, list(r.test.per_group)] for r in result.runs]))
"""


def _run_fresh(cache: str) -> list:
    env = {**os.environ, "KDTEACH_CACHE": cache, "KDTEACH_SMOKE": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_fresh_processes_with_empty_caches_give_the_same_numbers(tmp_path):
    first = _run_fresh(str(tmp_path / "cache-a"))
    second = _run_fresh(str(tmp_path / "cache-b"))
    assert len(first) == 5  # every model of notebook 02 was trained and scored
    assert first == second  # exactly: the same floats, not "close"
