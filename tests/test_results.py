"""Reference results: read back from results/, one provenance line, and the README generated from them."""
import json
import re
from pathlib import Path

import pytest

from kdteach import results, runtime


def _write(folder, name, meta, rows):
    (folder / name).mkdir(parents=True)
    (folder / name / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def test_provenance_line_says_mode_seeds_device_time_and_commit():
    meta = {"mode": "full", "seeds": [0, 1, 2, 3, 4], "device": "2-core CPU", "wall_seconds": 840.0,
            "torch": "2.14.1", "commit": "abc123", "date": "2026-12-01"}
    line = results.provenance_line(meta)
    assert line.startswith("full mode, 5 seeds, 2-core CPU, 14 min") and "commit abc123" in line
    assert "1 seed," in results.provenance_line({**meta, "seeds": [0], "wall_seconds": 42}) and "42 s" in results.provenance_line({**meta, "wall_seconds": 42})


EXITS_FINDINGS = ["exit 3 - the last exit on test accuracy, seed by seed: +0.5, +0.3, +1.0 points (mean +0.6 points, 95% "
                  "interval +0.1 to +1.1; higher in 3 of 3 seeds): exit 3 is clearly higher than the last exit.",
                  "The confidence-threshold policy at 0.70 is within 0.5 points of the last exit (96.1%) at 15% of its "
                  "compute per example on average. A second sentence the summary leaves out."]


def test_readme_section_has_one_summary_line_per_result_in_course_order(tmp_path):
    _write(tmp_path, "sets", {"seeds": [0], "wall_seconds": 180, "device": "2-core CPU",
                              "findings": ["AVCS, threshold chosen by the rule: 95.7% covered at every exit."]}, [{"method": "AVCS"}])
    _write(tmp_path, "exits", {"seeds": [0, 1, 2], "wall_seconds": 600, "device": "2-core CPU", "findings": EXITS_FINDINGS},
           [{"exit": 1, "accuracy": 0.5}])
    section = results.readme_section(tmp_path)
    assert section.startswith(results.README_BEGIN) and section.endswith(results.README_END)
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines == [
        "- **05 Early-exit networks** (3 seeds, 10 min on a 2-core CPU): The confidence-threshold policy at 0.70 is within "
        "0.5 points of the last exit (96.1%) at 15% of its compute per example on average.",
        "- **06 Nested prediction sets** (1 seed, 3 min on a 2-core CPU): AVCS, threshold chosen by the rule: 95.7% covered "
        "at every exit.",
    ]
    assert "[results/README.md](results/README.md)" in section and "| exit |" not in section


def test_a_summary_drops_the_seed_list_and_names_the_dataset_block(tmp_path, monkeypatch):
    findings = ["waterbirds_like: sets at miscoverage 0.1.", "LAC, KD student, the last exit (pooled): coverage 90.2.",
                "KD - teacher on coverage, seed by seed: -1.0, -2.0, -3.0 points (mean -2.0 points, 95% interval -4.5 to "
                "+0.5; higher in 0 of 3 seeds): the interval includes zero: no clear difference between KD and teacher.",
                "colored_digits: sets at miscoverage 0.1.", "LAC, KD student, the last exit (pooled): coverage 51.0."]
    _write(tmp_path, "capstone", {"seeds": [0, 1, 2], "findings": findings}, [])
    monkeypatch.setitem(results.HEADLINES, "capstone", ("LAC, KD student, the last exit", "KD - teacher on coverage"))
    line = results.summary_line("capstone", folder=tmp_path)
    assert line.endswith("waterbirds_like: LAC, KD student, the last exit (pooled): coverage 90.2. waterbirds_like: KD - "
                         "teacher on coverage (mean -2.0 points, 95% interval -4.5 to +0.5; higher in 0 of 3 seeds): the "
                         "interval includes zero: no clear difference between KD and teacher.")
    monkeypatch.setitem(results.HEADLINES, "capstone", ("a sentence no run wrote",))
    with pytest.raises(ValueError, match="no finding starts with 'a sentence no run wrote'; update kdteach.results.HEADLINES"):
        results.summary_line("capstone", folder=tmp_path)


def test_hintons_line_is_computed_from_its_typed_result(tmp_path):
    (tmp_path / "hinton").mkdir()
    result = {"headline": {"test_size": 10000, "teacher_errors": 76, "paper_errors": [67, 146, 74]},
              "seeds": {"seeds": [0, 1, 2], "alone_errors": [168, 169, 168], "distilled_errors": [91, 95, 96]}}
    (tmp_path / "hinton" / "hinton.json").write_text(json.dumps({"meta": {"seeds": [0, 1, 2]}, "rows": [], "result": result}))
    line = results.summary_line("hinton", folder=tmp_path)
    # 168.33 ± 0.58 and 94.00 ± 2.65: the sample standard deviations of the three seeds' errors.
    assert "teacher 76, student alone 168.3 ± 0.6 (n=3), distilled student 94.0 ± 2.6 (n=3)" in line
    assert "10,000 MNIST digits" in line and "(the paper: 67 / 146 / 74)" in line


def test_results_readme_shows_every_table_finding_and_figure(tmp_path):
    _write(tmp_path, "exits", {"seeds": [0, 1, 2], "wall_seconds": 60, "findings": EXITS_FINDINGS}, [{"exit": 1, "accuracy": 0.5}])
    (tmp_path / "exits" / "exits.md").write_text("# Accuracy per exit\n")
    (tmp_path / "exits" / "exits_more.json").write_text(json.dumps({"meta": {}, "rows": [{"policy": "threshold"}]}))
    (tmp_path / "exits" / "curve.png").write_bytes(b"\x89PNG")
    _write(tmp_path, "text", {"seeds": [0], "dataset": "standin"}, [{"model": "KD"}])
    page = results.results_readme(tmp_path)
    assert page.index("## 04 Text (`text/`)") < page.index("## 05 Early-exit networks (`exits/`)")
    assert "**Accuracy per exit**\n\n| exit | accuracy |\n|---|---|\n| 1 | 0.5 |" in page
    assert all(f"- {line}" in page for line in EXITS_FINDINGS)
    assert "### exits_more (`exits/exits_more.json`)\n\n| policy |\n|---|\n| threshold |" in page
    assert "![exits/curve.png](exits/curve.png)" in page and "No finding sentences are stored" in page
    # The wall-time table, in notebook order, from each result's provenance (60 s: "1 min 00 s"); a run that reloaded
    # trained models counts their recorded training time too.
    exits_meta = json.loads((tmp_path / "exits" / "exits.json").read_text())["meta"]
    assert results.cold_run_seconds({**exits_meta, "reused_training": {"models": 2, "epochs": 4, "seconds": 30.0}}) == exits_meta["wall_seconds"] + 30.0
    rows = results.wall_time_rows(tmp_path)
    assert [r["notebook"] for r in rows] == ["04 (offline stand-in)", "05"] and rows[1]["wall time (empty cache)"] == "1 min 00 s"
    assert "## Wall time of each full-mode run" in page and "`python -m kdteach text --mode full --dataset standin`" in page
    assert results.update_results_readme(tmp_path) is True and (tmp_path / "README.md").read_text() == page
    assert results.update_results_readme(tmp_path) is False
    assert results.result_names(tmp_path) == ["exits", "text"]  # README.md is not taken for a result


def test_update_readme_rewrites_only_the_generated_part(tmp_path):
    _write(tmp_path / "results", "exits", {"seeds": [0], "findings": EXITS_FINDINGS}, [{"exit": 1}])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.README_BEGIN}\nstale\n{results.README_END}\noutro\n")
    assert results.update_readme(readme, tmp_path / "results") is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "stale" not in text and "**05 Early-exit" in text
    assert results.update_readme(readme, tmp_path / "results") is False
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no generated results section"):
        results.update_readme(readme, tmp_path / "results")


def test_a_broken_result_file_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.json is not valid JSON"):
        results.load_reference("x", folder=tmp_path)
    assert results.load_reference("absent", folder=tmp_path) is None


def test_the_readmes_match_the_committed_results():
    """The README's results lines and results/README.md are exactly what `python -m kdteach.results` generates."""
    readme = (runtime.checkout_root() / "README.md").read_text(encoding="utf-8")
    assert results.readme_section() in readme, "README.md is stale: run `python -m kdteach.results`"
    page = (results.results_dir() / "README.md").read_text(encoding="utf-8")
    assert page == results.results_readme(), "results/README.md is stale: run `python -m kdteach.results`"
    # Every committed result has its summary line (its HEADLINES still match its findings).
    assert all(f"- **{results.NOTEBOOK_OF[name].split(' ')[0]} " in readme for name in results.result_names())


def test_show_findings_prints_every_sentence_and_groups_by_containing(tmp_path, monkeypatch, capsys):
    findings = ["exit 3 is clearly higher", "ECE ranges from 1% to 9%", "the policy saves compute", "ECE of exit 1 is 9%"]
    _write(tmp_path, "exits", {"seeds": [0, 1, 2], "findings": findings}, [])
    monkeypatch.setattr(results, "results_dir", lambda: tmp_path)
    results.show_findings("exits")
    out = capsys.readouterr().out
    assert "3 seeds" in out and all(f"- {line}" in out for line in findings)
    # containing= groups, it does not filter: the two ECE sentences first, then the other two, none left out.
    results.show_findings("exits", containing="ECE")
    out = capsys.readouterr().out
    assert all(f"- {line}" in out for line in findings)
    assert "On 'ECE' (2 of 4):" in out and "The other 2:" in out
    assert out.index("- ECE of exit 1 is 9%") < out.index("The other 2:") < out.index("- exit 3 is clearly higher")
    results.show_findings("exits", containing="nothing like this")
    out = capsys.readouterr().out
    assert "(no finding mentions 'nothing like this')" in out and all(f"- {line}" in out for line in findings)
    results.show_findings("absent")
    assert "none committed for 'absent'" in capsys.readouterr().out


def test_a_result_without_sentences_shows_its_tables_instead(tmp_path, monkeypatch, capsys):
    _write(tmp_path, "hinton", {"seeds": [0]}, [{"model": "teacher", "test errors": 76}])
    (tmp_path / "hinton" / "hinton_seeds.json").write_text(json.dumps({"meta": {}, "rows": [{"seed": 0, "distilled": 91}]}))
    (tmp_path / "hinton" / "hinton_seeds.md").write_text("# The students at several seeds\n\n| seed |\n")
    monkeypatch.setattr(results, "results_dir", lambda: tmp_path)
    results.show_findings("hinton", containing="seeds")
    out = capsys.readouterr().out
    assert "none recorded" not in out and "stores no finding sentences" in out and "show_reference('hinton')" in out
    assert "The students at several seeds (hinton_seeds.json):\n| seed | distilled |\n|---|---|\n| 0 | 91 |" in out
    tables = results.reference_tables("hinton", folder=tmp_path)
    assert [t.path.name for t in tables] == ["hinton.json", "hinton_seeds.json"] and tables[0].title == "hinton"


def test_every_committed_finding_is_shown_by_every_notebook_call(capsys):
    """The calls the notebooks make (with and without containing=) print all of a result's sentences."""
    for name in results.result_names():
        findings = results.load_reference(name).meta.get("findings", [])
        for containing in (None, " - ", "waterbirds_like"):
            results.show_findings(name, containing=containing)
            out = capsys.readouterr().out
            assert all(f"- {line}" in out for line in findings), (name, containing)
            assert "none recorded" not in out and "none committed" not in out


def test_results_dir_prefers_the_checkout_then_the_installed_copy(tmp_path, monkeypatch):
    assert results.results_dir() == runtime.checkout_root() / "results"
    # Outside a clone (site-packages holds no pyproject.toml), the copy installed inside the package is read.
    monkeypatch.setattr(runtime, "checkout_root", lambda: tmp_path)
    (tmp_path / "results").mkdir()
    installed = results.results_dir()
    assert installed.name == results.INSTALLED_FOLDER and installed.parent == Path(results.__file__).parent


@pytest.mark.parametrize("payload, field, expected", [
    ({"meta": {"findings": "one sentence"}, "rows": []}, "meta.findings", "a list of sentences (strings), got a string"),
    ({"meta": {"findings": ["ok", 3]}, "rows": []}, "meta.findings", "a list of sentences"),
    ({"meta": {}, "rows": {"model": "teacher"}}, "rows", "a list of objects (one per table row), got an object"),
    ({"meta": {}, "rows": ["teacher"]}, "rows", "a list of objects"),
    ({"meta": [], "rows": []}, "meta", "an object, got a list"),
    ({"meta": {}, "rows": [], "result": [1]}, "result", "an object or null, got a list"),
    ({"meta": {"seeds": 5}, "rows": []}, "meta.seeds", "a list of seeds, got a number"),
    ({"meta": {"wall_seconds": "84 min"}, "rows": []}, "meta.wall_seconds", "a number of seconds, got a string"),
    ({"meta": {"title": ["x"]}, "rows": []}, "meta.title", "a string, got a list"),
    ([1, 2], "(top level)", "an object with 'meta' and 'rows', got a list"),
])
def test_a_malformed_field_is_refused_by_name(tmp_path, payload, field, expected):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "x.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=rf"x\.json: field '{re.escape(field)}' must be {re.escape(expected)}"):
        results.load_reference("x", folder=tmp_path)


def test_a_file_in_another_encoding_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "x.json").write_bytes('{"meta": {"title": "Größe"}, "rows": []}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"x\.json is not UTF-8 text \(byte \d+: invalid (start|continuation) byte\)"):
        results.load_reference("x", folder=tmp_path)
    # The same content in UTF-8 reads, non-ASCII characters included.
    (tmp_path / "x" / "x.json").write_text(json.dumps({"meta": {"title": "Größe"}, "rows": []}, ensure_ascii=False), encoding="utf-8")
    assert results.load_reference("x", folder=tmp_path).meta["title"] == "Größe"
