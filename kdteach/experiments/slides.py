"""Slide-ready figures, one per paper's argument (issue 23, item 6): what each figure draws, computed from the course's
own models, and run() that writes the figures and the numbers behind them.

- Soft targets (Hinton et al. 2015): one real MNIST test digit's teacher probabilities at T = 1, 4 and 20; the
  teacher is notebook 01's 784-1200-1200-10, trained (or reloaded) through hinton.train_teacher at a size that
  trains in about a minute on a 2-core CPU (its size is in the caption).
- The DeDiER pipeline (Tiwari et al. 2024): real waterbirds_like training images, a couple per group, with the early
  readout's prediction, its confidence margin and the weight exp(beta * margin**alpha) DeDiER gives it (1 when the
  readout is right); notebook 03's KD student of the seed and its layer1 readout, alpha and beta as chosen on
  validation in the committed results/dedier (the config's otherwise).
- Nested sets (Jazbec et al. 2024): one MNIST test digit whose RAPS set at some exit holds a label an earlier exit
  had ruled out, beside its anytime-valid (AVCS) sets, which only shrink; notebook 05's exit-distilled model and
  notebook 06's methods on one calibration split.

The choices of example are rules stated in their docstrings (first of a kind, most shrinking), never picked by
hand, so a rerun on another model picks its own example and the caption still says what it shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from kdteach import report, results, runtime
from kdteach.debias import confidence_margin, dedier_weights
from kdteach.distill import softmax_t
from kdteach.exits import exit_logits
from kdteach.experiments import common, dedier, exits, hinton, sets
from kdteach.plots.slides import a_digit, plot_dedier_pipeline, plot_nested_sets, plot_soft_targets_slide
from kdteach.sets import calibration_split, non_nested_examples, running_intersection

PAPERS = {"soft_targets": "Hinton, Vinyals & Dean 2015 (arXiv:1503.02531)",
          "dedier_pipeline": "Tiwari et al. 2024, DeDiER (arXiv:2310.18590)",
          "nested_sets": "Jazbec et al. 2024 (arXiv:2311.05931)"}


@dataclass(frozen=True)
class SlidesConfig:
    """What the three figures are made from.

    Attributes:
        models_mode: the mode whose configurations of notebooks 03, 05 and 06 supply the DeDiER student and readout,
            the multi-exit model and the set methods ("full": the models the committed results were made with).
        teacher_train_size, teacher_epochs: notebook 01's teacher (hinton.SMOKE_CONFIG otherwise) on this many
            MNIST training digits (None: all 60,000) for this many epochs.
        teacher_test_size: test digits the teacher is scored on and the shown digit is drawn from (None: all).
        temperatures: the soft-target panels.
        digit: the class of the soft-target digit (the first test digit of it the teacher gets right).
        per_group: waterbirds_like training images shown per group.
    """

    models_mode: str
    teacher_train_size: int | None
    teacher_epochs: int
    teacher_test_size: int | None
    temperatures: tuple[float, ...] = (1.0, 4.0, 20.0)
    digit: int = 2
    per_group: int = 2

    def hinton_config(self) -> hinton.HintonConfig:
        """Notebook 01's configuration with this teacher's size (the rest is hinton.SMOKE_CONFIG's recipe)."""
        return replace(hinton.SMOKE_CONFIG, train_size=self.teacher_train_size, test_size=self.teacher_test_size,
                       teacher_epochs=self.teacher_epochs)


# Smoke: notebook 01's smoke teacher (3 epochs on 3,000 digits) and the smoke models of notebooks 03 and 05.
SMOKE_CONFIG = SlidesConfig(models_mode="smoke", teacher_train_size=3000, teacher_epochs=3, teacher_test_size=2000)
# Full: the full-mode students and exit model (reloaded from the cache where notebooks 03 and 05 left them), and a
# teacher of 4 epochs on 20,000 digits (under a minute on a 2-core CPU; 337 test errors of 10,000 in our run): the
# paper's 150-epoch teacher costs half an hour on a CPU, and the figure's point needs a teacher, not that one.
FULL_CONFIG = SlidesConfig(models_mode="full", teacher_train_size=20000, teacher_epochs=4, teacher_test_size=None)


def config(mode: str | None = None) -> SlidesConfig:
    """The configuration of a mode: "smoke", "full", or None for the mode set by KDTEACH_SMOKE."""
    return common.config_for(mode, smoke=SMOKE_CONFIG, full=FULL_CONFIG)


# Figure 1: soft targets at three temperatures


@dataclass(frozen=True)
class SoftTargets:
    """One test digit's teacher probabilities at several temperatures (what figure 1 draws).

    Attributes:
        index: the digit's row in the test split; label: its class.
        temperatures: T per panel; probabilities: per T, the C class probabilities softmax(z / T).
        teacher: the teacher in words; test_errors, test_size: its test errors out of test_size digits.
    """

    index: int
    label: int
    temperatures: tuple[float, ...]
    probabilities: tuple[tuple[float, ...], ...]
    teacher: str
    test_errors: int
    test_size: int


def soft_target_probabilities(logits: torch.Tensor, temperatures: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    """A teacher's probabilities for one example at each temperature: softmax(z / T).

    Args:
        logits: (C,) logits z.
        temperatures: the T values (> 0).

    Returns:
        Per T, the C probabilities.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1:
        raise ValueError(f"logits must be a 1-D tensor (classes,), got {tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return tuple(tuple(float(p) for p in softmax_t(logits.detach().double().cpu(), t)) for t in temperatures)


def first_correct(logits: torch.Tensor, labels: torch.Tensor, digit: int) -> int:
    """The first example of class `digit` the model gets right (a fixed rule, so nobody picks a flattering digit).

    Args:
        logits: (N, C) logits; labels: (N,) classes.
        digit: the class wanted.

    Returns:
        Its row.

    Raises:
        ValueError: naming digit when no example of it is classified right.
    """
    if logits.dim() != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, C) with N = len(labels) = {len(labels)}, got {tuple(logits.shape)}")
    hits = torch.nonzero((labels.cpu() == digit) & (logits.argmax(1).cpu() == labels.cpu())).flatten()
    if len(hits) == 0:
        raise ValueError(f"digit = {digit}: no example of that class is classified right; pick another digit")
    return int(hits[0])


def soft_target_rows(soft: SoftTargets) -> list[dict[str, Any]]:
    """Figure 1's numbers: one row per T with every class's probability (4 significant digits)."""
    return [{"T": t, **{f"p({c})": float(f"{p:.4g}") for c, p in enumerate(probs)}} for t, probs in zip(soft.temperatures, soft.probabilities)]


def soft_target_caption(soft: SoftTargets) -> str:
    """Figure 1's caption from its numbers: the label's probability and the rest's at the lowest and highest T."""
    low, high = soft.probabilities[0], soft.probabilities[-1]
    runner_up = max((c for c in range(len(high)) if c != soft.label), key=lambda c: high[c])
    return (f"Soft targets: {soft.teacher}, {soft.test_errors:,} test errors of {soft.test_size:,}, on test digit #{soft.index} "
            f"({a_digit(soft.label)}): at T = {soft.temperatures[0]:g} the label gets {low[soft.label]:.2%} and the {len(low) - 1} other "
            f"classes {1 - low[soft.label]:.2g} together; at T = {soft.temperatures[-1]:g} the label gets {high[soft.label]:.1%} and the "
            f"runner-up, {a_digit(runner_up)}, {high[runner_up]:.1%}: the similarities a hard label hides.")


# Figure 2: the DeDiER pipeline on real examples


@dataclass(frozen=True)
class PipelineExample:
    """One training image through DeDiER's pipeline (what one panel of figure 2 draws).

    Attributes:
        index: its row in the training split; group: its group's name; conflicting: whether it is bias-conflicting.
        label, prediction: the true class and the early readout's, as names.
        margin: the readout's confidence margin (top-1 minus top-2 probability).
        weight: DeDiER's weight, exp(beta * margin**alpha) when the readout is wrong, else 1.
    """

    index: int
    group: str
    conflicting: bool
    label: str
    prediction: str
    margin: float
    weight: float

    @property
    def readout_wrong(self) -> bool:
        """Whether the readout gets it wrong (and DeDiER upweights it)."""
        return self.label != self.prediction


def pipeline_rows_of(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, per_group: int) -> list[int]:
    """Which training images figure 2 shows: per group (in group order), its first image the readout gets wrong,
    its first it gets right, then its next ones in row order, up to per_group.

    Args:
        readout_logits: (N, C) the readout's logits; labels, groups: (N,) classes and group ids.
        per_group: images per group (>= 1).

    Returns:
        Rows, grouped by group (a group with fewer images gives them all).
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    if not len(readout_logits) == len(labels) == len(groups):
        raise ValueError(f"readout_logits, labels and groups must have the same length, got {len(readout_logits)}, {len(labels)}, {len(groups)}")
    wrong = (readout_logits.argmax(1) != labels).cpu()
    chosen = []
    for group in torch.unique(groups.cpu()).tolist():
        rows = torch.nonzero(groups.cpu() == group).flatten().tolist()
        firsts = [next((r for r in rows if bool(wrong[r]) == w), None) for w in (True, False)]
        ordered = list(dict.fromkeys([r for r in firsts if r is not None] + rows))
        chosen += ordered[:per_group]
    return chosen


def pipeline_examples(readout_logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, rows: Sequence[int], *,
                      group_names: Sequence[str], class_names: Sequence[str], conflicting: torch.Tensor, alpha: float,
                      beta: float) -> tuple[PipelineExample, ...]:
    """The readout's prediction, margin and DeDiER weight for some training images (kdteach.debias's functions).

    Args:
        readout_logits: (N, C) logits; labels, groups: (N,) classes and group ids; conflicting: (N,) bool.
        rows: the images wanted (pipeline_rows_of).
        group_names, class_names: names of the groups and classes.
        alpha, beta: DeDiER's exponent and scale.

    Returns:
        One PipelineExample per row, in order.
    """
    logits = readout_logits.detach().float().cpu()
    margin = confidence_margin(logits)
    weight = dedier_weights(logits, labels.cpu(), alpha=alpha, beta=beta)
    predicted = logits.argmax(1)
    return tuple(PipelineExample(int(r), group_names[int(groups[r])], bool(conflicting[r]), class_names[int(labels[r])],
                                 class_names[int(predicted[r])], float(margin[r]), float(weight[r])) for r in rows)


@dataclass(frozen=True)
class Pipeline:
    """Figure 2's numbers: the examples, DeDiER's setting and where it came from, the readout's error rate on the
    bias-conflicting and bias-aligned training images, and the student in words."""

    examples: tuple[PipelineExample, ...]
    alpha: float
    beta: float
    setting_source: str
    wrong_conflicting: tuple[int, int]  # (readout errors, images) among bias-conflicting training images
    wrong_aligned: tuple[int, int]
    student: str


def chosen_setting(cfg: dedier.DeDiERConfig, dataset: str = "waterbirds_like") -> tuple[float, float, str]:
    """DeDiER's (alpha, beta): the setting notebook 03 chose on validation, as its committed result records it
    (results/dedier/dedier.json, meta "chosen (alpha, beta)"), else cfg's.

    Args:
        cfg: notebook 03's configuration (the fallback).
        dataset: whose choice.

    Returns:
        alpha, beta and where they came from, in words.
    """
    ref = results.load_reference("dedier")
    chosen = (ref.meta.get("chosen (alpha, beta)") or {}).get(dataset) if ref is not None else None
    if chosen:
        return float(chosen[0]), float(chosen[1]), f"chosen on validation in results/dedier (commit {ref.meta.get('commit', '?')})"
    return cfg.alpha, cfg.beta, "notebook 03's configuration (results/dedier records no choice)"


def pipeline_rows(pipe: Pipeline) -> list[dict[str, Any]]:
    """Figure 2's numbers: one row per image (row, group, label, readout's prediction, margin, weight)."""
    return [{"training image": e.index, "group": e.group, "bias-conflicting": e.conflicting, "label": e.label, "readout says": e.prediction,
             "margin": round(e.margin, 4), "weight": round(e.weight, 4)} for e in pipe.examples]


def _percent(count: int, total: int) -> str:
    # Two significant digits, so 1 of 2,280 reads 0.044%, not 0.0%.
    return f"{100 * count / total:.2g}%" if total else "n/a"


def pipeline_caption(pipe: Pipeline) -> str:
    """Figure 2's caption from its numbers: the readout's errors by alignment and the weights of the images shown."""
    wrong = [e.weight for e in pipe.examples if e.readout_wrong]
    (wc, nc), (wa, na) = pipe.wrong_conflicting, pipe.wrong_aligned
    shown = (f"the {len(wrong)} shown readout errors get weights {min(wrong):.2f} to {max(wrong):.2f}" if wrong
             else "no shown image is a readout error")
    return (f"DeDiER pipeline: the early readout of {pipe.student} is wrong on {wc} of {nc} bias-conflicting training images "
            f"({_percent(wc, nc)}) and {wa} of {na} bias-aligned ones ({_percent(wa, na)}); with alpha = {pipe.alpha:g} and "
            f"beta = {pipe.beta:g}, {pipe.setting_source}, {shown}, every right one 1.")


# Figure 3: one digit's sets per exit


@dataclass(frozen=True)
class NestedSets:
    """Figure 3's numbers: one test digit's RAPS and AVCS sets at every exit and the labels RAPS re-admits.

    Attributes:
        index: the digit's row in the test split; label: its class.
        raps, avcs: per exit, the labels in the set.
        readmitted: (exit, label) pairs, exits 1-based: the label is in RAPS's set at that exit although an earlier
            exit's set had left it out.
        avcs_tau, avcs_feasible: AVCS's threshold on the calibration split and whether its rule reached its rank.
        non_nested_raps, non_nested_avcs, evaluated: digits of the evaluation split whose sets are not nested.
        alpha, split_seed, model: the miscoverage level, the calibration split and the model in words.
        num_classes: the classes a set can hold.
    """

    index: int
    label: int
    raps: tuple[tuple[int, ...], ...]
    avcs: tuple[tuple[int, ...], ...]
    readmitted: tuple[tuple[int, int], ...]
    avcs_tau: float
    avcs_feasible: bool
    non_nested_raps: int
    non_nested_avcs: int
    evaluated: int
    alpha: float
    split_seed: int
    model: str
    num_classes: int


def readmitted_labels(sets: torch.Tensor) -> torch.Tensor:
    """Where a set holds a label that an earlier exit's set left out: sets[t] and not in C_1 ∩ ... ∩ C_{t-1}.

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (exits, N, C) bool, all False at the first exit.
    """
    if sets.dim() != 3 or sets.dtype != torch.bool:
        raise ValueError(f"sets must be a bool tensor (exits, N, C), got {sets.dtype} {tuple(sets.shape)}")
    back = torch.zeros_like(sets)
    back[1:] = sets[1:] & ~running_intersection(sets)[:-1]
    return back


def pick_nested_example(raps: torch.Tensor, avcs: torch.Tensor, labels: torch.Tensor) -> int:
    """The digit figure 3 shows: RAPS re-admits a label and AVCS's sets are nested, and, where some digit allows it,
    neither method gives an empty set, AVCS's last set holds the label, and AVCS's set shrinks. Among those, the
    largest shrink of AVCS's set from the first exit to the last, then the fewest RAPS labels over the exits (a
    readable grid), then the first row.

    Args:
        raps, avcs: (exits, N, C) bool sets of the same digits.
        labels: (N,) their classes.

    Returns:
        The row.

    Raises:
        ValueError: naming raps when RAPS's sets are nested for every digit (there is nothing to show).
    """
    if raps.shape != avcs.shape or raps.dim() != 3 or len(labels) != raps.shape[1]:
        raise ValueError(f"raps and avcs must be (exits, N, C) with N = len(labels) = {len(labels)}, got {tuple(raps.shape)} and {tuple(avcs.shape)}")
    labels = labels.to(raps.device)
    required = readmitted_labels(raps).any(dim=-1).any(dim=0) & ~non_nested_examples(avcs)  # (N,)
    if not bool(required.any()):
        raise ValueError("raps: no digit has a RAPS set that re-admits a label while AVCS's sets stay nested")
    size_a, size_r = avcs.sum(-1), raps.sum(-1)  # (exits, N)
    wishes = [((size_a > 0) & (size_r > 0)).all(0), avcs[-1].gather(1, labels[:, None]).squeeze(1), size_a[0] > size_a[-1]]
    candidates = required
    for wish in wishes:  # each wish kept only where some candidate still meets it
        if bool((candidates & wish).any()):
            candidates = candidates & wish
    rows = torch.nonzero(candidates).flatten().tolist()
    return min(rows, key=lambda i: (-int(size_a[0, i] - size_a[-1, i]), int(size_r[:, i].sum()), i))


def _labels_per_exit(sets: torch.Tensor, row: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(torch.nonzero(sets[t, row]).flatten().tolist()) for t in range(sets.shape[0]))


def nested_sets_rows(nested: NestedSets) -> list[dict[str, Any]]:
    """Figure 3's numbers: one row per method and exit (the set, its size, the labels it re-admits)."""
    rows = []
    for method, per_exit in (("RAPS", nested.raps), ("AVCS", nested.avcs)):
        for t, labels in enumerate(per_exit, start=1):
            back = [y for e, y in nested.readmitted if e == t] if method == "RAPS" else []
            rows.append({"method": method, "exit": t, "set": "{" + ", ".join(map(str, labels)) + "}", "size": len(labels),
                         "re-admitted": ", ".join(map(str, back)) or "-"})
    return rows


def nested_sets_caption(nested: NestedSets) -> str:
    """Figure 3's caption from its numbers: the two methods' set sizes per exit, what RAPS re-admits, how common that is."""
    sizes = {m: ", ".join(str(len(s)) for s in per_exit) for m, per_exit in (("RAPS", nested.raps), ("AVCS", nested.avcs))}
    back = "; ".join(f"label {y} at exit {t}" for t, y in nested.readmitted)
    infeasible = "" if nested.avcs_feasible else " (AVCS's threshold rule could not reach its rank on this split: no guarantee)"
    return (f"Nested sets: {nested.model}, test digit #{nested.index} ({a_digit(nested.label)}), one calibration split (seed {nested.split_seed}, "
            f"alpha = {nested.alpha:g}): AVCS's sets have sizes {sizes['AVCS']} over the exits and only shrink{infeasible}; RAPS's have "
            f"sizes {sizes['RAPS']} and re-admit {back}. Over the split's {nested.evaluated} evaluation digits, RAPS re-admits a "
            f"label for {nested.non_nested_raps} ({nested.non_nested_raps / nested.evaluated:.0%}), AVCS for {nested.non_nested_avcs}.")


# The run


@dataclass(frozen=True)
class SlidesResult:
    """The three figures' numbers, the mode and the configuration they came from."""

    mode: str
    config: SlidesConfig
    soft_targets: SoftTargets
    pipeline: Pipeline
    nested: NestedSets


def soft_targets_figure(cfg: SlidesConfig, device: torch.device, *, seed: int, progress: bool) -> tuple[SoftTargets, torch.Tensor]:
    """Figure 1's numbers and the digit's (28, 28) image: notebook 01's teacher, trained or reloaded at cfg's size."""
    hcfg = cfg.hinton_config()
    data = hinton.load_data(hcfg, device, verbose=False)
    teacher = hinton.train_teacher(hcfg, data, device, seed=seed, progress=progress)
    logits = common.predict(teacher, data.batches("test", 1000)).cpu()
    index = first_correct(logits, data.test_y, cfg.digit)
    digits = f"all {len(data.train_y):,}" if hcfg.train_size is None else f"{len(data.train_y):,}"
    words = f"notebook 01's 784-1200-1200-10 teacher, {hcfg.teacher_epochs} epochs on {digits} {data.source} digits (seed {seed})"
    soft = SoftTargets(index, int(data.test_y[index]), tuple(cfg.temperatures), soft_target_probabilities(logits[index], cfg.temperatures),
                       words, int((logits.argmax(1) != data.test_y.cpu()).sum()), len(data.test_y))
    return soft, data.test_x[index].detach().cpu().reshape(28, 28)


def pipeline_figure(cfg: SlidesConfig, device: torch.device, *, seed: int, progress: bool) -> tuple[Pipeline, list[torch.Tensor]]:
    """Figure 2's numbers and the images shown: notebook 03's KD student of the seed (reloaded or trained) and a
    layer1 readout on it (dedier.readout_diagnostics), on waterbirds_like's training split."""
    dcfg = dedier.config(cfg.models_mode)
    prep = dedier.prepare("waterbirds_like", dcfg, device, progress=progress)
    student = dedier.train_student("KD", prep, dcfg, seed=seed, progress=progress)
    _, readout = dedier.readout_diagnostics(prep, dcfg, student.model, seed=seed)
    alpha, beta, source = chosen_setting(dcfg)
    train = prep.train
    conflicting = (train.spurious != train.labels).cpu()
    rows = pipeline_rows_of(readout, train.labels, train.groups, cfg.per_group)
    examples = pipeline_examples(readout, train.labels, train.groups, rows, group_names=train.group_names, class_names=train.class_names,
                                 conflicting=conflicting, alpha=alpha, beta=beta)
    wrong = (readout.argmax(1) != train.labels.cpu())
    pipe = Pipeline(examples, alpha, beta, source, (int(wrong[conflicting].sum()), int(conflicting.sum())),
                    (int(wrong[~conflicting].sum()), int((~conflicting).sum())),
                    f"notebook 03's KD student ({cfg.models_mode} mode, seed {seed}, ResNet-{dcfg.student_depth} of width "
                    f"{dcfg.student_width}, readout on {dcfg.readout_stage})")
    return pipe, [train.images[r].cpu() for r in rows]


def nested_sets_figure(cfg: SlidesConfig, device: torch.device, *, seed: int, progress: bool) -> tuple[NestedSets, torch.Tensor]:
    """Figure 3's numbers and the digit's (28, 28) image: notebook 05's exit-distilled model of the seed (reloaded or
    trained, as notebook 06 gets it) and notebook 06's RAPS and AVCS on its first calibration split."""
    ecfg, scfg = exits.config(cfg.models_mode), sets.config(cfg.models_mode)
    data = exits.load_data(ecfg, device, verbose=False)
    model = exits.trained_exit_model(ecfg, data, distill_weight=dict(exits.MODELS)["+ exit distillation"], seed=seed, device=device, progress=progress)
    logits, labels = exit_logits(model, data.test_x), data.test_y
    split_seed = seed * 10_000  # the first split of notebook 06's classification_experiment
    _, found, eval_labels = sets.one_split(logits, labels, scfg, seed=split_seed)
    _, evaluation = calibration_split(len(labels), scfg.calib_fraction, seed=split_seed)
    raps, avcs = found.sets["RAPS"].cpu(), found.sets["AVCS"].cpu()
    row = pick_nested_example(raps, avcs, eval_labels.cpu())
    back = readmitted_labels(raps)[:, row]
    nested = NestedSets(int(evaluation[row]), int(eval_labels[row]), _labels_per_exit(raps, row), _labels_per_exit(avcs, row),
                        tuple((t + 1, y) for t, y in torch.nonzero(back).tolist()), found.avcs.tau, found.avcs.feasible,
                        int(non_nested_examples(raps).sum()), int(non_nested_examples(avcs).sum()), len(eval_labels), scfg.alpha, split_seed,
                        f"notebook 05's exit-distilled ResNet-{ecfg.depth} ({cfg.models_mode} mode, seed {seed}, {data.source})", raps.shape[-1])
    return nested, data.test_x[int(evaluation[row])].detach().cpu().reshape(28, 28)


def run(mode: str = "full", out: str | Path | None = "runs/slides", seed: int = 0, progress: bool = True) -> SlidesResult:
    """The three slide figures, headless (`python -m kdteach slides`): slides.json / .md (one row per figure, the
    captions as findings), one table per figure (slides_soft_targets, slides_dedier, slides_nested_sets) and the PNGs
    soft_targets, dedier_pipeline and nested_sets in out.

    Args:
        mode: "smoke" or "full" (the models' sizes: SMOKE_CONFIG or FULL_CONFIG).
        out: the folder (None: write nothing).
        seed: the seed of every model and of the calibration split.
        progress: progress bars while a model trains.

    Returns:
        SlidesResult.
    """
    cfg = config(mode)
    device = runtime.setup(seed, verbose=False, run_mode=mode)
    started = time.perf_counter()
    soft, digit = soft_targets_figure(cfg, device, seed=seed, progress=progress)
    pipe, images = pipeline_figure(cfg, device, seed=seed, progress=progress)
    nested, nested_digit = nested_sets_figure(cfg, device, seed=seed, progress=progress)
    result = SlidesResult(mode, cfg, soft, pipe, nested)
    captions = {"soft_targets": soft_target_caption(soft), "dedier_pipeline": pipeline_caption(pipe), "nested_sets": nested_sets_caption(nested)}
    print("\n".join(captions.values()) + "\n" + report.smoke_note(mode))
    if out is None:
        return result
    figures = {"soft_targets": plot_soft_targets_slide(digit, soft.probabilities, soft.temperatures, label=soft.label),
               "dedier_pipeline": plot_dedier_pipeline(images, pipe.examples, alpha=pipe.alpha, beta=pipe.beta),
               "nested_sets": plot_nested_sets(nested_digit, nested.raps, nested.avcs, label=nested.label,
                                                   num_classes=nested.num_classes, alpha=nested.alpha)}
    provenance = report.provenance(experiment="slides", config=cfg, seeds=[seed], wall_seconds=time.perf_counter() - started, device=str(device))
    meta = {"mode": mode, "title": "Slide-ready figures, one per paper's argument", "findings": list(captions.values()), **provenance}
    rows = [{"figure": f"{name}.png", "paper": PAPERS[name], "caption": caption} for name, caption in captions.items()]
    report.write_report(out, "slides", rows=rows, meta=meta, figures=figures, result=result, title=meta["title"])
    for name, table, title in (("soft_targets", soft_target_rows(soft), "Soft targets at each temperature (figure soft_targets.png)"),
                               ("dedier", pipeline_rows(pipe), "DeDiER's readout, margin and weight per image (figure dedier_pipeline.png)"),
                               ("nested_sets", nested_sets_rows(nested), "One digit's sets per exit (figure nested_sets.png)")):
        report.write_report(out, f"slides_{name}", rows=table, meta={**meta, "title": title,
                            "findings": [captions["dedier_pipeline" if name == "dedier" else name]]}, title=title)
    return result
