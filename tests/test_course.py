"""course: every notebook's first call. kd.course.setup runs runtime.setup, then prints the notebook's measured
full-mode time (from its committed result) and whether each model it reuses from an earlier notebook is in the cache;
setup_cell_source is the first code cell of every notebook (tests/test_notebooks.py checks each against it)."""
import json

import pytest
import torch

import kdteach as kd
from kdteach import course, runtime
from kdteach.experiments import exits, spurious


@pytest.fixture
def chosen_mode(monkeypatch):
    """Restores the mode a test's setup(mode=...) chooses, so no other test runs in it; KDTEACH_SMOKE unset."""
    monkeypatch.delenv("KDTEACH_SMOKE", raising=False)
    monkeypatch.setattr(runtime, "_chosen_mode", runtime._chosen_mode)
    monkeypatch.setattr(runtime, "SMOKE", runtime.SMOKE)


def test_setup_refuses_a_bad_notebook_by_name_before_anything_changes(chosen_mode):
    with pytest.raises(ValueError, match="notebook must be one of 00, 01.*got 8"):
        course.setup(seed=0, mode="smoke", notebook=8, verbose=False)
    with pytest.raises(ValueError, match="notebook must be one of"):
        course.setup_cell_source("08")
    with pytest.raises(ValueError, match="mode must be one of"):
        course.setup(seed=0, mode="fast", notebook="01", verbose=False)
    assert runtime.mode() == "full"  # a refused call changed nothing


def test_setup_is_runtime_setup_then_the_notebooks_costs(chosen_mode, capsys):
    device = course.setup(seed=3, mode="smoke", notebook="01")
    first = torch.rand(1).item()
    out = capsys.readouterr().out
    assert device == runtime.pick_device() and runtime.mode() == "smoke"
    assert out.index("kdteach: device") < out.index("notebook 01")  # runtime's lines first, then the course's
    runtime.setup(seed=3, verbose=False)
    assert torch.rand(1).item() == first  # seeded exactly as runtime.setup seeds
    assert course.setup(seed=0, notebook="01", verbose=False) == device and capsys.readouterr().out == ""


def _minutes(seconds):
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def test_setup_prints_the_notebooks_measured_time_from_its_committed_result(chosen_mode, capsys):
    meta = json.loads((kd.results.results_dir() / "spurious" / "spurious.json").read_text(encoding="utf-8"))["meta"]
    course.setup(seed=0, mode="full", notebook="02")
    out = capsys.readouterr().out
    assert f"notebook 02's reference run (`python -m kdteach spurious --mode full`, {len(meta['seeds'])} seeds) takes " \
           f"{_minutes(kd.results.cold_run_seconds(meta))} from an empty cache on a {meta['device']}" in out
    # the code-version line: this checkout's version of the experiment beside the committed result's
    here = kd.code_version.experiment_code_version("spurious")
    assert f"kdteach: spurious's experiment code here is version {here}; the committed reference result's is " \
           f"{meta.get('code_version') or 'unknown'}" in out
    assert "reuses" not in out  # notebook 02 trains everything it uses
    course.setup(seed=0, mode="full", notebook="00")
    assert "notebook 00 has no committed reference result, so no measured full-mode time" in capsys.readouterr().out


def test_a_result_without_a_wall_time_says_so(chosen_mode, capsys, monkeypatch, tmp_path):
    (tmp_path / "hinton").mkdir()
    (tmp_path / "hinton" / "hinton.json").write_text(json.dumps({"meta": {"seeds": [0]}, "rows": []}))
    (tmp_path / "exits").mkdir()
    (tmp_path / "exits" / "exits.json").write_text("{not json")
    monkeypatch.setattr(kd.results, "results_dir", lambda: tmp_path)
    assert course.reference_time("01") == ("notebook 01's reference run (hinton) has no measured wall time committed", None)
    sentence, seconds = course.reference_time("05")
    assert seconds is None and "cannot be read" in sentence and "exits.json" in sentence
    assert course.reference_time("02")[1] is None  # no spurious.json in this folder


def _fake_checkpoint(path, *, epochs, done, seconds=1.5, rows=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = {"epochs": epochs, **({"train.rows": rows} if rows is not None else {})}
    torch.save({"signature": signature, "history": [{"epoch": float(e), "seconds": seconds} for e in range(done)]}, path)


def test_setup_says_whether_a_reused_model_is_in_the_cache(chosen_mode, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path))
    course.setup(seed=0, mode="smoke", notebook="03")
    assert "reuses notebook 02's group-balanced teacher (waterbirds_like, seed 0): not in the cache; the notebook " \
           "trains it first" in capsys.readouterr().out
    teacher = spurious.checkpoint(spurious.config("smoke"), "teacher_balanced", 0)
    _fake_checkpoint(teacher, epochs=3, done=1)
    course.setup(seed=0, mode="smoke", notebook="07")
    assert "in the cache, unfinished (1 of 3 epochs); the notebook resumes it" in capsys.readouterr().out
    _fake_checkpoint(teacher, epochs=3, done=3, seconds=20.0)
    course.setup(seed=0, mode="smoke", notebook="03", solutions=True)
    out = capsys.readouterr().out
    assert "group-balanced teacher (waterbirds_like, seed 0): in the cache (3 epochs, trained in 1 min 00 s)" in out
    assert "the solutions of notebook 03 reload its models" in out
    course.setup(seed=0, mode="full", notebook="03")  # the full-mode teacher is another file, not there
    meta = json.loads((kd.results.results_dir() / "spurious" / "spurious.json").read_text(encoding="utf-8"))["meta"]
    assert f"part of notebook 02's reference run, which took {_minutes(kd.results.cold_run_seconds(meta))}" in capsys.readouterr().out
    # Notebook 06: a checkpoint of notebook 05's exit-distilled model of the current mode's size counts, another does not.
    cfg = exits.config("smoke")
    _fake_checkpoint(tmp_path / "exits" / "distill0.5-000000000000.pt", epochs=cfg.epochs, done=cfg.epochs, rows=cfg.train_size + 1)
    course.setup(seed=0, mode="smoke", notebook="06")
    assert "exit-distilled multi-exit ResNet (distill weight 0.5): not in the cache" in capsys.readouterr().out
    _fake_checkpoint(tmp_path / "exits" / "distill0.5-111111111111.pt", epochs=cfg.epochs, done=cfg.epochs, rows=cfg.train_size)
    course.setup(seed=0, mode="smoke", notebook="06")
    assert f"(distill weight 0.5): in the cache ({cfg.epochs} epochs" in capsys.readouterr().out


def _runnable(source):
    """The setup cell as plain Python: Colab's %pip line (IPython syntax, run on Colab only) made a pass."""
    return "\n".join(line.split("%pip")[0] + "pass" if line.strip().startswith("%pip") else line for line in source.splitlines())


def test_setup_cell_chooses_the_mode_visibly_before_anything_runs(chosen_mode, capsys):
    source = course.setup_cell_source("03")
    lines = source.splitlines()
    assert runtime.REPO_URL in source and "google.colab" in source and kd.__version__
    mode_line = next(i for i, line in enumerate(lines) if line.startswith('MODE = "full"'))
    assert mode_line < next(i for i, line in enumerate(lines) if line.startswith("import"))
    assert '"smoke"' in lines[mode_line] and "KDTEACH_SMOKE=1" in source and "wins over MODE" in source
    assert lines[-1] == 'device = kd.course.setup(seed=0, mode=MODE, notebook="03", drive_cache=DRIVE_CACHE)'
    assert 'notebook="03", solutions=True,' in course.setup_cell_source("03", solutions=True)
    assert all(len(line) <= 120 for line in lines)
    namespace: dict = {}
    exec(compile(_runnable(source.replace('MODE = "full"', 'MODE = "smoke"')), "setup cell", "exec"), namespace)
    assert runtime.mode() == "smoke" and namespace["device"] == runtime.pick_device()
    assert "mode smoke" in capsys.readouterr().out
    exec(compile(_runnable(source), "setup cell", "exec"), namespace)
    assert runtime.mode() == "full" and namespace["DRIVE_CACHE"] is False


def test_the_code_version_line_says_same_or_different(monkeypatch, tmp_path):
    here = kd.code_version.experiment_code_version("exits")
    for committed, word in ((here, "(the same:"), ("0123456789ab", "(different:")):
        (tmp_path / "exits").mkdir(exist_ok=True)
        (tmp_path / "exits" / "exits.json").write_text(json.dumps({"meta": {"seeds": [0], "code_version": committed}, "rows": []}))
        monkeypatch.setattr(kd.results, "results_dir", lambda: tmp_path)
        line = course.code_version_sentence("05")
        assert line.startswith(course.VERSION_LINE.format(name="exits", here=here, committed=committed)) and word in line
    assert course.code_version_sentence("00") is None
