"""Two runs on one cache: neither deletes the other's files, and two processes asked for the same checkpoint take
turns (fit() holds the checkpoint's file lock), so one trains and the other loads the finished file."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kdteach.checkpoint import checkpoint_lock, load_checkpoint, lock_path, remove_stale_temporaries, save_atomic

# One process of the test: a tiny MLP through the experiments' one train-or-load, on the cache in KDTEACH_CACHE.
# Both processes reach train_or_load at the same moment (a barrier of marker files); the one that trains holds its
# first epoch until both have called it, and a second longer, so that the other is surely waiting on the lock.
CHILD = textwrap.dedent("""
    import hashlib, json, sys, time
    from pathlib import Path

    import torch

    import kdteach as kd
    from kdteach.experiments import common

    barrier, me = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    batches = kd.data.Batches({"x": x, "y": (x[:, 0] > 0).long()}, 16, shuffle=True)
    torch.manual_seed(0)
    model = kd.models.MLP((6, 8, 2))
    path = common.checkpoint_path("shared-cache-test", "mlp", 0)
    epochs_trained = []

    def metrics(_model):
        if not epochs_trained:
            while len(list(barrier.glob("calling-*"))) < 2:
                time.sleep(0.01)
            time.sleep(1.0)
        epochs_trained.append(1)
        return {}

    (barrier / f"ready-{me}").touch()
    while len(list(barrier.glob("ready-*"))) < 2:
        time.sleep(0.01)
    (barrier / f"calling-{me}").touch()
    common.train_or_load_adamw(model, batches, path=path, epochs=3, lr=0.05, weight_decay=0.0, device="cpu",
                               progress=False, metrics=metrics)
    digest = hashlib.sha1(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    print(json.dumps({"trained": len(epochs_trained), "weights": digest, "path": str(path)}))
""")


def test_two_processes_training_one_checkpoint_take_turns_and_end_equal(tmp_path):
    env = {**os.environ, "KDTEACH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", CHILD, str(barrier), name], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, f"a run failed:\n{err}"
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    # One trained all three epochs; the other waited on the lock and then loaded the finished checkpoint.
    assert sorted(r["trained"] for r in results) == [0, 3]
    loader_err = outputs[[r["trained"] for r in results].index(0)][1]
    assert "another run is training" in loader_err and "waiting for it to finish" in loader_err
    assert results[0]["weights"] == results[1]["weights"]
    path = Path(results[0]["path"])
    state = load_checkpoint(path)  # a valid, finished checkpoint
    assert state["epoch"] == 2 and len(state["history"]) == 3
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing but the checkpoint in the cache


def test_a_temporary_of_a_live_process_is_kept_and_one_of_a_dead_process_removed(tmp_path):
    ckpt = tmp_path / "run.pt"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead_pid = int(finished.stdout)  # a process that has exited (and was reaped by subprocess.run)
    from kdteach.checkpoint import _host_id

    live = tmp_path / f"run.pt.{_host_id()}-{os.getpid()}.abcd1234.tmp"  # this process: writing, as far as anyone knows
    dead = tmp_path / f"run.pt.{_host_id()}-{dead_pid}.abcd1234.tmp"
    elsewhere = tmp_path / f"run.pt.0000beef-{dead_pid}.abcd1234.tmp"  # another machine on a shared disk
    other_checkpoint = tmp_path / f"other.pt.{_host_id()}-{dead_pid}.abcd1234.tmp"
    for f in (live, dead, elsewhere, other_checkpoint):
        f.write_bytes(b"half a checkpoint")
    assert remove_stale_temporaries(ckpt) == [dead]
    assert live.exists() and elsewhere.exists() and other_checkpoint.exists() and not dead.exists()


def test_save_atomic_names_its_temporary_by_process(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_atomic({"w": torch.ones(2)}, tmp_path / "run.pt")
    assert len(seen) == 1 and f"-{os.getpid()}." in seen[0] and seen[0].startswith("run.pt.")
    # While save_atomic writes, another run's cleanup of the same checkpoint leaves the file alone.
    assert remove_stale_temporaries(tmp_path / "run.pt") == []


def test_the_lock_keeps_a_second_holder_out_until_the_first_lets_go(tmp_path):
    import filelock

    ckpt = tmp_path / "run.pt"
    with checkpoint_lock(ckpt):
        with pytest.raises(filelock.Timeout):  # what a second process meets: held
            filelock.FileLock(str(lock_path(ckpt))).acquire(timeout=0.05)
    other = filelock.FileLock(str(lock_path(ckpt)))
    other.acquire(timeout=0.05)  # released when the with-statement ended
    other.release()
    assert list(tmp_path.iterdir()) == []  # the cache holds checkpoints only: the lock lives elsewhere


def test_one_checkpoint_has_one_lock_however_its_path_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "cache")
    same = {lock_path(p) for p in (tmp_path / "cache" / "m.pt", Path("cache/m.pt"), tmp_path / "link" / "m.pt",
                                   tmp_path / "cache" / ".." / "cache" / "m.pt")}
    assert len(same) == 1
    assert lock_path(tmp_path / "cache" / "n.pt") not in same and lock_path(tmp_path / "m.pt") not in same
