"""kdteach.code_version: the version of an experiment's code, and the training a run reloaded instead of redoing."""
import shutil

import pytest
import torch

import kdteach as kd
from kdteach import code_version, run_state


def test_an_experiments_closure_holds_what_it_imports_and_nothing_it_does_not():
    closure = code_version.module_closure("kdteach.experiments.hinton")
    assert {"kdteach.experiments.hinton", "kdteach.distill", "kdteach.train", "kdteach.report.rule", "kdteach.report",
            "kdteach.models.mlp"} <= set(closure)
    # the notebooks' layer and the scorecard are no experiment's code: editing them never makes outputs stale
    assert not {"kdteach.course", "kdteach.scorecard", "kdteach.widgets", "kdteach.__main__"} & set(closure)
    assert "kdteach.sets.anytime" in code_version.module_closure("kdteach.experiments.capstone_report")


def _copy_package(tmp_path, monkeypatch):
    copy = tmp_path / "kdteach"
    shutil.copytree(code_version.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "_references"))
    monkeypatch.setattr(code_version, "PACKAGE_DIR", copy)
    return copy


def test_a_docstring_or_comment_keeps_the_version_and_a_code_change_does_not(tmp_path, monkeypatch):
    copy = _copy_package(tmp_path, monkeypatch)
    before = code_version.code_version("kdteach.experiments.exits")
    distill = copy / "distill.py"  # in every experiment's closure, through the training loop
    source = distill.read_text(encoding="utf-8")
    distill.write_text(source.replace('"""', '"""Reworded. ', 1) + "\n# a new comment\n", encoding="utf-8")
    assert code_version.code_version("kdteach.experiments.exits") == before
    distill.write_text(source + "\nEXTRA = 1\n", encoding="utf-8")
    assert code_version.code_version("kdteach.experiments.exits") != before
    # a module outside the closure changes nothing
    (copy / "scorecard.py").write_text("X = 2\n", encoding="utf-8")
    distill.write_text(source, encoding="utf-8")
    assert code_version.code_version("kdteach.experiments.exits") == before


def test_bad_names_are_refused_by_name():
    with pytest.raises(ValueError, match="name must be one of hinton"):
        code_version.experiment_code_version("bogus")
    with pytest.raises(ValueError, match="module must be a kdteach module"):
        code_version.module_closure("numpy")


def test_provenance_records_the_code_version_and_the_training_it_reloaded(tmp_path, monkeypatch):
    run_state.take_reused_training()  # start from zero
    model = torch.nn.Linear(4, 2)
    train = kd.data.Batches({"x": torch.randn(32, 4), "y": torch.randint(0, 2, (32,))}, 8)
    path = tmp_path / "m.pt"
    history = kd.train.fit(model, train, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), checkpoint=path,
                           resume=True, progress=False)
    assert run_state.take_reused_training() == {"models": 0, "epochs": 0, "seconds": 0.0}  # trained, nothing reloaded
    def reload():
        again = torch.nn.Linear(4, 2)
        kd.train.fit(again, train, epochs=2, optimizer=torch.optim.SGD(again.parameters(), lr=0.1), checkpoint=path,
                     resume=True, progress=False)

    reload()  # this process wrote it: its training is already in this run's wall time
    assert run_state.take_reused_training()["models"] == 0
    monkeypatch.setattr(run_state, "_WRITTEN_HERE", set())  # as a later process sees it
    reload()
    reload()  # a model reloaded twice (a teacher of several students) saved its training once
    meta = kd.report.provenance(experiment="exits", config={}, seeds=[0], wall_seconds=3.0, device="cpu")
    recorded = round(sum(row["seconds"] for row in history.epochs), 1)
    assert meta["reused_training"] == {"models": 1, "epochs": 2, "seconds": recorded}
    assert meta["code_version"] == code_version.experiment_code_version("exits")
    assert kd.results.cold_run_seconds({**meta, "wall_seconds": 3.0}) == pytest.approx(3.0 + recorded)
    assert run_state.take_reused_training()["models"] == 0  # provenance took it
