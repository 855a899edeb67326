"""The slide figures (issue 23, item 6): the numbers each figure is drawn from, checked against independent
computations on tiny inputs (softmax at T, DeDiER's weight formula, nestedness by plain set operations), the choice
rules, what the figures draw, and run()'s files, with the models replaced by constructed numbers."""
import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from kdteach import results  # noqa: E402
from kdteach.experiments import slides  # noqa: E402
from kdteach.plots.slides import a_digit, plot_dedier_pipeline, plot_nested_sets, plot_soft_targets_slide, set_grid  # noqa: E402


def _softmax(z, t):
    e = np.exp(np.asarray(z, dtype=float) / t)
    return e / e.sum()


def _bool_sets(per_exit_per_digit, classes):
    # [[labels of digit 0, labels of digit 1, ...] per exit] -> (exits, N, C) bool
    sets = torch.zeros(len(per_exit_per_digit), len(per_exit_per_digit[0]), classes, dtype=torch.bool)
    for t, digits in enumerate(per_exit_per_digit):
        for i, labels in enumerate(digits):
            sets[t, i, list(labels)] = True
    return sets


def _comes_back(per_exit):
    # True when some exit's set holds a label missing from an earlier exit's set (plain Python sets).
    return any(y not in set(per_exit[s]) for t in range(1, len(per_exit)) for y in per_exit[t] for s in range(t))


def _is_nested(per_exit):
    return all(set(per_exit[t]) <= set(per_exit[t - 1]) for t in range(1, len(per_exit)))


# Figure 1: soft targets


def test_soft_target_probabilities_are_softmax_at_each_temperature():
    z = torch.tensor([2.0, 0.5, -1.0, 3.0])
    probs = slides.soft_target_probabilities(z, (1.0, 4.0, 20.0))
    for t, p in zip((1.0, 4.0, 20.0), probs):
        np.testing.assert_allclose(p, _softmax([2.0, 0.5, -1.0, 3.0], t), rtol=1e-6)  # softmax_t computes in float32
        assert np.argsort(p).tolist() == [2, 1, 0, 3]  # dividing by T keeps the ranking
    assert max(probs[0]) > max(probs[1]) > max(probs[2])  # the top class loses mass as T grows
    with pytest.raises(ValueError, match="logits"):
        slides.soft_target_probabilities(torch.zeros(2, 4), (1.0,))


def test_first_correct_skips_wrong_and_other_digits_and_names_the_digit():
    logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([2, 1, 2, 1])  # row 0: a 2 read as 1; row 2: a 2 read right
    assert slides.first_correct(logits, labels, 2) == 2
    assert slides.first_correct(logits, labels, 1) == 3
    with pytest.raises(ValueError, match="digit = 0"):
        slides.first_correct(logits, labels, 0)


def test_soft_target_figure_draws_the_probabilities_with_slide_type():
    probs = slides.soft_target_probabilities(torch.tensor([0.0, 1.0, 6.0, 2.0]), (1.0, 4.0, 20.0))
    fig = plot_soft_targets_slide(torch.rand(28, 28), probs, (1.0, 4.0, 20.0), label=2)
    image, *panels = fig.axes
    assert [ax.get_title() for ax in panels] == ["T = 1", "T = 4", "T = 20"]
    for ax, p in zip(panels, probs):
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], p)
        assert ax.get_xlabel() == "class" and min(t.get_fontsize() for t in ax.get_xticklabels()) >= 14
    assert "probability" in panels[0].get_ylabel()
    assert "dark knowledge" in " ".join(t.get_text() for t in fig.texts)
    assert image.get_title() == "the digit (a 2)"
    with pytest.raises(ValueError, match="label"):
        plot_soft_targets_slide(torch.rand(28, 28), probs, (1.0, 4.0, 20.0), label=7)


def test_soft_target_caption_reads_its_numbers():
    soft = slides.SoftTargets(5, 8, (1.0, 20.0), ((0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.99, 0.0),
                                                   (0.09, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.09, 0.2, 0.0)), "a teacher", 3, 100)
    caption = slides.soft_target_caption(soft)
    assert "test digit #5 (an 8)" in caption and "the label gets 99.00%" in caption and "the 9 other classes 0.01" in caption
    assert "at T = 20 the label gets 20.0% and the runner-up, a 1, 12.0%" in caption and ", 3 test errors of 100, on test digit #5" in caption
    assert slides.soft_target_rows(soft)[1]["p(8)"] == 0.2 and a_digit(8) == "an 8" and a_digit(3) == "a 3"


# Figure 2: the DeDiER pipeline


def _readout_case():
    # Two classes, three groups. Group 0: all right; group 1: wrong, right, wrong; group 2: wrong only.
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.5], [0.3, 0.0], [0.0, 4.0], [0.0, 0.2], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    return logits, labels, groups


def test_pipeline_rows_take_a_wrong_and_a_right_image_per_group_where_there_are_both():
    logits, labels, groups = _readout_case()
    assert slides.pipeline_rows_of(logits, labels, groups, 2) == [0, 1, 3, 4, 6, 7]
    assert slides.pipeline_rows_of(logits, labels, groups, 3) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert slides.pipeline_rows_of(logits, labels, groups, 1) == [0, 3, 6]
    with pytest.raises(ValueError, match="per_group"):
        slides.pipeline_rows_of(logits, labels, groups, 0)


@pytest.mark.parametrize("alpha, beta", [(1.0, 2.0), (0.05, 4.0)])
def test_pipeline_weights_follow_dediers_formula(alpha, beta):
    logits, labels, groups = _readout_case()
    rows = [0, 3, 4, 6]
    examples = slides.pipeline_examples(logits, labels, groups, rows, group_names=["g0", "g1", "g2"], class_names=["land", "water"],
                                        conflicting=groups > 0, alpha=alpha, beta=beta)
    for row, e in zip(rows, examples):
        p = _softmax(logits[row].tolist(), 1.0)
        margin = abs(p[0] - p[1])  # two classes: top-1 minus top-2
        wrong = int(np.argmax(p)) != int(labels[row])
        assert e.margin == pytest.approx(margin, abs=1e-6)
        assert e.weight == pytest.approx(math.exp(beta * margin ** alpha) if wrong else 1.0, rel=1e-5)
        assert e.readout_wrong == wrong and e.prediction == ["land", "water"][int(np.argmax(p))]
    assert [e.group for e in examples] == ["g0", "g1", "g1", "g2"] and [e.conflicting for e in examples] == [False, True, True, True]


def test_pipeline_figure_writes_each_images_readout_margin_and_weight():
    logits, labels, groups = _readout_case()
    rows = slides.pipeline_rows_of(logits, labels, groups, 2)
    examples = slides.pipeline_examples(logits, labels, groups, rows, group_names=["g0", "g1", "g2"], class_names=["land", "water"],
                                        conflicting=groups > 0, alpha=1.0, beta=2.0)
    fig = plot_dedier_pipeline([torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8) for _ in rows], examples, alpha=1.0, beta=2.0)
    axes = np.asarray(fig.axes).reshape(2, 3)  # two rows of images, one column per group
    assert [ax.get_title().split("\n")[0] for ax in axes[0]] == ["g0", "g1", "g2"]
    for (row, col), e in zip([(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)], examples):
        label = axes[row][col].get_xlabel()
        assert f"margin {e.margin:.2f}" in label and f"weight {e.weight:.2f}" in label
        assert ("(wrong)" in label) == e.readout_wrong
    assert "α = 1, β = 2" in " ".join(t.get_text() for t in fig.texts)


def test_pipeline_caption_counts_and_the_setting(monkeypatch):
    example = slides.PipelineExample(3, "g1", True, "land", "water", 0.5, math.exp(1.0))
    pipe = slides.Pipeline((example,), 1.0, 2.0, "chosen on validation", (9, 10), (5, 100), "a student")
    caption = slides.pipeline_caption(pipe)
    assert "wrong on 9 of 10 bias-conflicting training images (90%) and 5 of 100 bias-aligned ones (5%)" in caption
    rare = slides.Pipeline((example,), 1.0, 2.0, "chosen", (9, 10), (1, 2280), "a student")
    assert "1 of 2280 bias-aligned ones (0.044%)" in slides.pipeline_caption(rare)
    assert "weights 2.72 to 2.72" in caption and "alpha = 1 and beta = 2, chosen on validation" in caption


def test_chosen_setting_reads_the_committed_choice_else_the_config(monkeypatch):
    cfg = slides.dedier.config("smoke")
    reference = results.Reference("dedier", {"chosen (alpha, beta)": {"waterbirds_like": [1.0, 2.0]}, "commit": "abc"}, [], None, "")
    monkeypatch.setattr(slides.results, "load_reference", lambda name: reference)
    assert slides.chosen_setting(cfg) == (1.0, 2.0, "chosen on validation in results/dedier (commit abc)")
    monkeypatch.setattr(slides.results, "load_reference", lambda name: None)
    assert slides.chosen_setting(cfg)[:2] == (cfg.alpha, cfg.beta)


# Figure 3: nested sets


def test_readmitted_labels_against_plain_set_operations():
    per_digit = [[[1, 2], [2], [1, 2, 3]], [[0, 1], [0], [0]]]  # digit 0: 1 comes back at exit 3, 3 is new; digit 1 nested
    sets = _bool_sets([[d[t] for d in per_digit] for t in range(3)], 4)
    back = slides.readmitted_labels(sets)
    assert not back[0].any()
    assert torch.nonzero(back[:, 0]).tolist() == [[2, 1], [2, 3]]
    assert not back[:, 1].any()
    for i, per_exit in enumerate(per_digit):
        assert bool(back[:, i].any()) == _comes_back(per_exit)
    with pytest.raises(ValueError, match="sets"):
        slides.readmitted_labels(sets.int())


def test_pick_nested_example_wants_raps_back_and_avcs_nested_and_shrinking():
    raps = [[[1], [1], [1], [2, 5]],    # exit 1, digits 0..3
            [[1, 2], [1], [3], [2]],
            [[1], [1, 3], [1, 3], [2, 5]]]
    avcs = [[[1, 2], [1, 2, 3], [1, 3], [2, 5, 7]],
            [[1, 2], [1, 2], [1], [2, 5]],
            [[1], [1, 2], [1], [2]]]
    labels = torch.tensor([1, 1, 1, 2])
    # digit 0: RAPS nested (out); 1: RAPS adds 3 at exit 3, AVCS shrinks 3 -> 2; 2: RAPS brings 1 back, AVCS shrinks
    # 2 -> 1; 3: RAPS brings 5 back, AVCS shrinks 3 -> 1, the most: chosen.
    row = slides.pick_nested_example(_bool_sets(raps, 10), _bool_sets(avcs, 10), labels)
    assert row == 3
    chosen_raps, chosen_avcs = [e[row] for e in raps], [e[row] for e in avcs]
    assert _comes_back(chosen_raps) and _is_nested(chosen_avcs)
    nested_raps = [[[1], [1]], [[1], [1]]]
    with pytest.raises(ValueError, match="raps"):
        slides.pick_nested_example(_bool_sets(nested_raps, 3), _bool_sets(nested_raps, 3), torch.tensor([1, 1]))


def test_pick_nested_example_never_takes_a_digit_whose_avcs_sets_are_not_nested():
    raps = [[[0]], [[1]]]
    avcs = [[[0]], [[0, 1]]]  # AVCS's own sets re-admit 1: not the figure's point
    with pytest.raises(ValueError, match="raps"):
        slides.pick_nested_example(_bool_sets(raps, 2), _bool_sets(avcs, 2), torch.tensor([0]))


def test_set_grid_marks_labels_back_after_being_ruled_out():
    grid = set_grid([[2, 8], [2], [2, 8, 4]], 10)
    expected = np.zeros((10, 3), dtype=int)
    expected[[2, 8], 0] = 1
    expected[2, 1] = expected[2, 2] = 1
    expected[[8, 4], 2] = 2
    np.testing.assert_array_equal(grid, expected)
    with pytest.raises(ValueError, match="sets\\[1\\]"):
        set_grid([[0], [12]], 10)


def test_nested_sets_figure_draws_both_grids():
    raps, avcs = [[2, 8], [2], [2, 8]], [[2, 8, 3], [2, 8], [2]]
    fig = plot_nested_sets(torch.rand(28, 28), raps, avcs, label=2, alpha=0.05)
    _, raps_ax, avcs_ax = fig.axes
    np.testing.assert_array_equal(raps_ax.get_images()[0].get_array(), set_grid(raps, 10))
    np.testing.assert_array_equal(avcs_ax.get_images()[0].get_array(), set_grid(avcs, 10))
    assert 2 in set_grid(raps, 10) and 2 not in set_grid(avcs, 10)
    for ax in (raps_ax, avcs_ax):
        assert ax.get_xlabel() == "exit" and ax.get_ylabel() == "label"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert raps_ax.get_title().startswith("RAPS") and avcs_ax.get_title().startswith("AVCS")
    assert "miscoverage 0.05" in " ".join(t.get_text() for t in fig.texts)


def _nested(**kw):
    base = dict(index=7, label=9, raps=((4, 8, 9), (9,), (8, 9)), avcs=((4, 8, 9), (8, 9), (9,)), readmitted=((3, 8),), avcs_tau=0.25,
                avcs_feasible=True, non_nested_raps=10, non_nested_avcs=0, evaluated=40, alpha=0.05, split_seed=0, model="a model", num_classes=10)
    return slides.NestedSets(**{**base, **kw})


def test_nested_sets_rows_and_caption_read_the_sets():
    nested = _nested()
    rows = slides.nested_sets_rows(nested)
    assert [(r["method"], r["exit"], r["set"], r["size"], r["re-admitted"]) for r in rows] == [
        ("RAPS", 1, "{4, 8, 9}", 3, "-"), ("RAPS", 2, "{9}", 1, "-"), ("RAPS", 3, "{8, 9}", 2, "8"),
        ("AVCS", 1, "{4, 8, 9}", 3, "-"), ("AVCS", 2, "{8, 9}", 2, "-"), ("AVCS", 3, "{9}", 1, "-")]
    caption = slides.nested_sets_caption(nested)
    assert "AVCS's sets have sizes 3, 2, 1" in caption and "RAPS's have sizes 3, 1, 2 and re-admit label 8 at exit 3" in caption
    assert "10 (25%), AVCS for 0" in caption and "no guarantee" not in caption
    assert "no guarantee" in slides.nested_sets_caption(_nested(avcs_feasible=False))


# run(): the files, with the models replaced by constructed numbers


def test_run_writes_the_figures_their_tables_and_captions(monkeypatch, tmp_path):
    soft = slides.SoftTargets(0, 2, (1.0, 4.0, 20.0), slides.soft_target_probabilities(torch.tensor([0.0, 1.0, 5.0]), (1.0, 4.0, 20.0)), "t", 1, 10)
    example = slides.PipelineExample(3, "g1", True, "land", "water", 0.5, math.exp(1.0))
    pipe = slides.Pipeline((example,), 1.0, 2.0, "chosen", (1, 2), (0, 8), "a student")
    nested = _nested()
    monkeypatch.setattr(slides, "soft_targets_figure", lambda cfg, device, seed, progress: (soft, torch.rand(28, 28)))
    monkeypatch.setattr(slides, "pipeline_figure", lambda cfg, device, seed, progress: (pipe, [torch.zeros(3, 8, 8, dtype=torch.uint8)]))
    monkeypatch.setattr(slides, "nested_sets_figure", lambda cfg, device, seed, progress: (nested, torch.rand(28, 28)))
    result = slides.run("smoke", tmp_path, progress=False)
    assert result.nested == nested and result.config == slides.SMOKE_CONFIG
    main = results.read_result_file(tmp_path / "slides.json")
    assert main["meta"]["findings"] == [slides.soft_target_caption(soft), slides.pipeline_caption(pipe), slides.nested_sets_caption(nested)]
    assert [r["figure"] for r in main["rows"]] == ["soft_targets.png", "dedier_pipeline.png", "nested_sets.png"]
    assert {"commit", "date", "device", "torch", "wall_seconds", "seeds", "config"} <= set(main["meta"])
    for name in ("soft_targets", "dedier_pipeline", "nested_sets"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    table = json.loads((tmp_path / "slides_nested_sets.json").read_text())
    assert table["rows"] == slides.nested_sets_rows(nested) and table["meta"]["findings"] == [slides.nested_sets_caption(nested)]
    assert json.loads((tmp_path / "slides_dedier.json").read_text())["rows"][0]["weight"] == round(math.exp(1.0), 4)


def test_slides_is_a_command_and_an_experiment():
    from kdteach.__main__ import EXPERIMENTS
    import kdteach as kd

    assert EXPERIMENTS["slides"].module == "slides" and kd.experiments.slides is slides
    assert slides.config("full").models_mode == "full" and slides.config("smoke").models_mode == "smoke"
