"""kdteach.sets: the conformal quantile, split-conformal coverage, running intersections, anytime-valid sets and
intervals, Bayesian linear regression heads, metrics, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdteach import sets as S
from kdteach.sets import calibration_split
from kdteach.sets.anytime import _avcs_log_ratios, _gamma_draws


def synthetic_logits(n: int, classes: int = 6, exits: int = 4, *, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    # Exchangeable data: each example's label is drawn from the softmax of its last-exit logits; earlier exits see a
    # noisier version of the same logits, so exits disagree the way real early exits do.
    g = torch.Generator().manual_seed(seed)
    clean = scale * torch.randn(n, classes, generator=g)
    labels = torch.multinomial(torch.softmax(clean, dim=1), 1, generator=g).squeeze(1)
    noise = [(exits - 1 - t) * 1.5 * torch.randn(n, classes, generator=g) for t in range(exits)]
    return torch.stack([clean + e for e in noise]), labels


# --- the conformal quantile ---------------------------------------------------------------------------------------


def test_conformal_threshold_picks_the_ceil_n_plus_1_rank():
    scores = torch.arange(1.0, 11.0)[torch.randperm(10)]  # 1..10 shuffled
    assert float(S.conformal_threshold(scores, 0.1)) == 10.0  # ceil(11 * 0.9) = 10
    assert float(S.conformal_threshold(scores, 0.25)) == 9.0  # ceil(11 * 0.75) = ceil(8.25) = 9
    assert float(S.conformal_threshold(scores, 0.5)) == 6.0  # ceil(5.5) = 6


def test_conformal_threshold_is_infinite_when_the_rank_exceeds_n():
    # n = 5, alpha = 0.1: ceil(6 * 0.9) = 6 > 5, so no finite score gives the guarantee (not the largest score).
    assert math.isinf(float(S.conformal_threshold(torch.rand(5), 0.1)))
    assert math.isinf(float(S.conformal_threshold(torch.rand(18), 0.05)))  # ceil(19 * 0.95) = 19 > 18
    per_exit = S.conformal_threshold(torch.rand(3, 5), 0.1)
    assert per_exit.shape == (3,) and torch.isinf(per_exit).all()


def test_conformal_threshold_is_not_fooled_by_floating_point():
    # (19 + 1) * 0.95 is 19.000000000000004 in floating point; the rank is 19, which exists.
    scores = torch.arange(1.0, 20.0)
    assert float(S.conformal_threshold(scores, 0.05)) == 19.0


def test_conformal_threshold_is_the_smallest_score_with_enough_scores_at_or_below_it():
    # An independent characterisation: q is a calibration score, #{s <= q} >= (n + 1)(1 - alpha) and #{s < q} is not.
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, alpha = int(rng.integers(5, 300)), float(rng.uniform(0.01, 0.3))
        scores = rng.random(n)
        q = float(S.conformal_threshold(torch.tensor(scores), alpha))
        needed = (n + 1) * (1 - alpha)
        if needed > n + 1e-9:
            assert math.isinf(q)
            continue
        assert q in scores
        assert (scores <= q).sum() >= needed - 1e-9 and (scores < q).sum() < needed - 1e-9


# --- scores ------------------------------------------------------------------------------------------------------


def test_aps_without_randomisation_is_the_mass_through_the_label():
    probs = torch.tensor([[0.5, 0.1, 0.3, 0.1]], dtype=torch.float64)
    scores = S.aps_scores(probs, randomized=False)
    # ranks: class 0 (0.5), class 2 (0.3), then classes 1 and 3 (0.1 each, stable order 1 before 3)
    assert torch.allclose(scores, torch.tensor([[0.5, 0.9, 0.8, 1.0]], dtype=torch.float64))


def test_raps_adds_lambda_per_rank_beyond_k_reg_and_grows_with_rank():
    probs = torch.softmax(torch.randn(200, 8, dtype=torch.float64), dim=1)
    aps = S.aps_scores(probs, randomized=False)
    raps = S.raps_scores(probs, lam=0.1, k_reg=2, randomized=False)
    ranks = probs.argsort(dim=1, descending=True, stable=True).argsort(dim=1) + 1
    assert torch.allclose(raps - aps, 0.1 * (ranks - 2).clamp(min=0).double())
    randomized = S.raps_scores(probs, lam=0.1, k_reg=2, generator=torch.Generator().manual_seed(0))
    by_rank = randomized.gather(1, probs.argsort(dim=1, descending=True, stable=True))
    assert (by_rank.diff(dim=1) >= -1e-12).all()  # sets are top-k prefixes


# --- split conformal ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["lac", "raps"])
def test_split_conformal_marginal_coverage_over_many_random_splits(score):
    alpha, n_calib, splits = 0.1, 100, 200
    logits, labels = synthetic_logits(n_calib + 400, exits=1, seed=1)
    logits = logits[0]
    coverages = []
    g = torch.Generator().manual_seed(2)
    for s in range(splits):
        calib, evaluation = calibration_split(len(labels), n_calib / len(labels), seed=s)
        sets = S.prediction_sets(logits[calib], labels[calib], logits[evaluation], alpha, score=score, generator=g)
        coverages.append(float(S.coverage(sets, labels[evaluation])))
    mean = float(np.mean(coverages))
    # Guarantee: >= 1 - alpha; for continuous scores also <= 1 - alpha + 1 / (n + 1). Slack for 200 splits.
    assert mean >= 1 - alpha - 0.01
    assert mean <= 1 - alpha + 1 / (n_calib + 1) + 0.01


def test_prediction_sets_per_exit_equal_one_exit_at_a_time():
    logits, labels = synthetic_logits(300, seed=3)
    together = S.prediction_sets(logits[:, :100], labels[:100], logits[:, 100:], 0.1, score="lac")
    for t in range(logits.shape[0]):
        alone = S.prediction_sets(logits[t, :100], labels[:100], logits[t, 100:], 0.1, score="lac")
        assert torch.equal(together[t], alone)


def test_per_exit_sets_are_not_nested_but_their_running_intersection_is():
    logits, labels = synthetic_logits(1000, seed=4)
    sets = S.prediction_sets(logits[:, :300], labels[:300], logits[:, 300:], 0.1, score="lac")
    assert float(S.nestedness(sets)[1:].min()) < 1.0  # the setting exists that the notebook shows
    inter = S.running_intersection(sets)
    assert torch.equal(S.nestedness(inter), torch.ones(sets.shape[0], dtype=torch.float64))
    # and the intersection pays in coverage: never more than the per-exit sets
    assert (S.coverage(inter, labels[300:]) <= S.coverage(sets, labels[300:]) + 1e-12).all()


# --- running intersection ----------------------------------------------------------------------------------------


def test_running_intersection_is_the_and_of_all_exits_so_far():
    sets = torch.rand(5, 40, 7, generator=torch.Generator().manual_seed(0)) < 0.6
    inter = S.running_intersection(sets)
    assert torch.equal(inter[0], sets[0])
    for t in range(1, 5):
        assert torch.equal(inter[t], sets[: t + 1].all(dim=0))
        assert not (inter[t] & ~inter[t - 1]).any()  # nested: nothing comes back


# --- anytime-valid classification sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_parallel", [1, 3])
def test_avcs_sets_are_nested_for_random_logits_and_seeds(seed, num_parallel):
    g = torch.Generator().manual_seed(100 + seed)
    logits = 4 * torch.randn(5, 64, 10, generator=g)
    thresholds = 1 + torch.rand(5, generator=g)
    sets = S.avcs_sets(logits, thresholds, 0.05, generator=torch.Generator().manual_seed(seed), num_parallel=num_parallel)
    assert sets.shape == logits.shape and sets.dtype == torch.bool
    assert not (sets[1:] & ~sets[:-1]).any()
    assert torch.equal(S.nestedness(sets), torch.ones(5, dtype=torch.float64))
    # labels whose logit is below the exit's threshold are ruled out from that exit on
    below = (logits < thresholds[:, None, None]).to(torch.uint8).cummax(dim=0).values.bool()
    assert not (sets & below).any()


def test_avcs_sets_depend_on_the_generator_only():
    logits = 5 * torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(7))
    first = S.avcs_sets(logits, [1.0, 1.0, 1.0], 0.05, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(12345)  # the global stream must not matter, and must be left alone
    state = torch.get_rng_state()
    second = S.avcs_sets(logits, [1.0, 1.0, 1.0], 0.05, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, second)
    assert torch.equal(state, torch.get_rng_state())


def test_avcs_with_huge_concentrations_keeps_every_label_above_threshold():
    # Dirichlet draws with concentrations ~ 1e6 sit on their mean, every ratio is ~1 <= 1 / alpha: the set is the
    # support {y : logit >= tau} at every exit (intersected over exits).
    logits = torch.where(torch.rand(2, 30, 5, generator=torch.Generator().manual_seed(1)) < 0.7, torch.tensor(1e6), torch.tensor(0.5))
    sets = S.avcs_sets(logits, [1.0, 1.0], 0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sets, (logits >= 1.0).to(torch.uint8).cummin(dim=0).values.bool())


def confident_logits(n: int, classes: int = 6, exits: int = 4, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Logits of a trained net: the label's logit well above the others, less so at early exits.
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    one_hot = torch.nn.functional.one_hot(labels, classes).float()
    return torch.stack([(4 + 2 * t) * one_hot + 1.5 * torch.randn(n, classes, generator=g) for t in range(exits)]), labels


def test_fit_avcs_thresholds_reach_the_conformal_rank_and_depend_only_on_the_calibration_split():
    logits, labels = confident_logits(400, seed=5)
    calib = slice(0, 150)
    fit = S.fit_avcs_thresholds(logits[:, calib], labels[calib], 0.1, seed=3, draws=4)
    assert fit.feasible and fit.thresholds == (fit.tau,) * 4 and fit.tau > 1.0
    assert fit.required_coverage == math.ceil(151 * 0.9) / 150
    assert fit.required_coverage <= fit.calibration_coverage <= fit.floor_coverage
    torch.manual_seed(999)
    again = S.fit_avcs_thresholds(logits[:, calib].clone(), labels[calib].clone(), 0.1, seed=3, draws=4)
    assert again == fit


def test_fit_avcs_thresholds_picks_the_largest_candidate_whose_survivors_reach_the_rank():
    # By hand, with one draw: recompute each calibration example's survival along the candidates from the sets.
    logits, labels = confident_logits(60, exits=3, seed=8)
    alpha, start, step = 0.2, 1.0, 0.5
    fit = S.fit_avcs_thresholds(logits, labels, alpha, start=start, step=step, seed=4, draws=1)
    needed = math.ceil(61 * (1 - alpha))
    # the same Gamma draws for every candidate: sample once at the smallest support, as the fit does
    gamma = _gamma_draws(logits.double(), logits.double() >= start, 1, torch.Generator().manual_seed(4))
    alive = torch.ones(60, dtype=torch.bool)
    best = None
    for j in range(40):
        tau = start + step * j
        support = logits.double() >= tau
        inside = _avcs_log_ratios(logits.double(), support, gamma)[0] <= math.log(1 / alpha)
        alive &= inside.all(dim=0)[torch.arange(60), labels]
        if int(alive.sum()) >= needed:
            best = tau
    assert best is not None and fit.tau == best


def test_fitted_avcs_covers_at_every_exit_over_many_splits_when_labels_follow_the_model():
    # Labels drawn from the model's own predictive distribution: every exit's Dirichlet has the same mean a / sum(a),
    # later exits with larger concentrations (more certain of it), and y ~ Categorical(a / sum(a)). Over 100 random
    # calibration/evaluation splits, the mean share of evaluation labels covered at every exit must reach
    # 1 - alpha (up to 0.01 of split noise), although the fit raises tau well above 1.
    g = torch.Generator().manual_seed(11)
    n, classes, alpha = 300, 5, 0.05
    clean = 1.0 + 10.0 * torch.rand(n, classes, generator=g)
    labels = torch.multinomial(clean / clean.sum(1, keepdim=True), 1, generator=g).squeeze(1)
    logits = torch.stack([scale * clean for scale in (1.0, 1.5, 2.0)])
    covered, feasible, taus = [], [], []
    for split in range(100):
        calib, evaluation = calibration_split(n, 1 / 3, seed=split)
        fit = S.fit_avcs_thresholds(logits[:, calib], labels[calib], alpha, seed=split, draws=5)
        sets = S.avcs_sets(logits[:, evaluation], fit.thresholds, alpha, generator=torch.Generator().manual_seed(10_000 + split))
        covered.append(float(S.coverage(sets[-1], labels[evaluation])))  # nested: the last exit is the all-exit share
        feasible.append(fit.feasible)
        taus.append(fit.tau)
    assert all(feasible) and np.mean(taus) > 1.5  # the rule did raise tau (from 1), and sets shrank
    assert float(np.mean(covered)) >= 1 - alpha - 0.01


def test_fit_avcs_thresholds_warns_and_keeps_the_floor_when_no_threshold_qualifies():
    logits, labels = confident_logits(30, seed=1)
    with pytest.warns(UserWarning, match="required"):
        fit = S.fit_avcs_thresholds(logits, labels, 0.01, draws=2)  # ceil(31 * 0.99) = 31 > 30: impossible
    assert not fit.feasible and fit.tau == 1.0 and fit.required_coverage > 1


def test_parallel_avcs_is_the_intersection_of_its_copies():
    logits, _ = confident_logits(80, seed=2)
    one = [S.avcs_sets(logits, [1.0] * 4, 0.1, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    both = S.avcs_sets(logits, [1.0] * 4, 0.1, generator=torch.Generator().manual_seed(0), num_parallel=3)
    assert S.mean_size(both)[-1] <= min(float(S.mean_size(o)[-1]) for o in one) + 1e-12
    assert torch.equal(S.nestedness(both), torch.ones(4, dtype=torch.float64))


def test_method_sets_fit_on_the_calibration_split_only_and_make_every_method():
    logits, labels = confident_logits(500, seed=6)
    calib, evaluation = calibration_split(500, 0.2, seed=0)
    result = S.method_sets(logits[:, calib], labels[calib], logits[:, evaluation], 0.1, seed=0, avcs_draws=2)
    scrambled = torch.randn(4, len(evaluation), 6)
    other = S.method_sets(logits[:, calib], labels[calib], scrambled, 0.1, seed=0, avcs_draws=2)
    assert other.avcs == result.avcs
    for name in S.CONFORMAL_METHODS:
        assert torch.equal(result.quantiles[name], other.quantiles[name])
    expected = [m for name in [*S.CONFORMAL_METHODS, "Bayes"] for m in (name, f"{name} ∩")] + ["AVCS"]
    assert list(result.sets) == expected
    assert torch.equal(result.sets["AVCS"], S.running_intersection(result.sets["AVCS"]))
    assert torch.equal(result.sets["RAPS ∩"], S.running_intersection(result.sets["RAPS"]))


# --- RAPS's u, APS's empty sets, Bayes credible sets --------------------------------------------------------------


def test_shared_u_draws_one_uniform_per_example_for_every_exit():
    probs = torch.softmax(torch.randn(3, 50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    shared = S.raps_scores(probs, shared_u=True, generator=torch.Generator().manual_seed(1))
    u = torch.rand((1, 50, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = S.raps_scores(probs, randomized=False)
    assert torch.allclose(shared, plain - (1 - u) * probs)
    # identical exits: shared u gives identical sets at every exit (nested), fresh u makes labels come back
    same = probs[:1].expand(4, 50, 6).contiguous()
    q = torch.full((4,), 0.6)
    g = torch.Generator().manual_seed(2)
    shared_sets = S.conformal_sets(same.log(), q, shared_u=True, generator=g)
    fresh_sets = S.conformal_sets(same.log(), q, generator=g)
    assert not S.non_nested_examples(shared_sets).any() and S.non_nested_examples(fresh_sets).any()


def test_non_randomized_aps_is_empty_exactly_when_the_threshold_is_below_the_top_probability():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], dtype=torch.float64)
    sets = S.conformal_sets(probs.log(), 0.5, score="aps", randomized=False)
    assert sets.tolist() == [[False, False, False], [True, False, False]]  # 0.7 > 0.5: empty; 0.4 <= 0.5: {0}
    assert S.conformal_sets(probs.log(), 0.71, score="aps", randomized=False)[0].tolist() == [True, False, False]


def test_credible_sets_take_labels_by_probability_until_the_mass_reaches_one_minus_alpha():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.96, 0.02, 0.01, 0.01]], dtype=torch.float64)
    sets = S.credible_sets(probs.log(), 0.1)
    assert sets.tolist() == [[True, True, True, False], [True, False, False, False]]  # 0.5 + 0.3 < 0.9 <= 0.95
    # when labels follow the softmax, coverage is at least 1 - alpha on average (the set's mass is >= 1 - alpha)
    g = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(2, 20000, 6, generator=g)
    labels = torch.multinomial(torch.softmax(logits[-1], -1), 1, generator=g).squeeze(1)
    credible = S.credible_sets(logits, 0.1)
    assert float(S.coverage(credible[-1], labels)) >= 0.9 - 0.01 and bool(credible.any(-1).all())


def test_conformal_functions_refuse_non_finite_values_and_empty_batches():
    logits, labels = synthetic_logits(40, seed=0)
    bad = logits.clone()
    bad[0, 3, 2] = math.nan
    with pytest.raises(ValueError, match="calib_logits holds 1 non-finite"):
        S.fit_conformal_thresholds(bad, labels, 0.1)
    with pytest.raises(ValueError, match="probs holds"):
        S.lac_scores(torch.tensor([[0.5, math.inf]]))
    with pytest.raises(ValueError, match="exit_logits holds"):
        S.avcs_sets(bad, [1.0] * 4, 0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="logits is empty"):
        S.conformal_sets(logits[:, :0], torch.ones(4), score="lac")
    with pytest.raises(ValueError, match="calib_logits is empty"):
        S.fit_avcs_thresholds(logits[:, :0], labels[:0], 0.1)
    with pytest.raises(ValueError, match="scores is empty"):
        S.conformal_threshold(torch.zeros(0), 0.1)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_metrics_on_a_hand_made_example():
    # 2 exits, 3 examples, 3 classes; labels 0, 1, 2
    sets = torch.tensor(
        [
            [[1, 1, 0], [0, 1, 0], [0, 0, 0]],
            [[1, 0, 1], [1, 1, 1], [0, 0, 1]],
        ],
        dtype=torch.bool,
    )
    labels = torch.tensor([0, 1, 2])
    assert S.coverage(sets, labels).tolist() == pytest.approx([2 / 3, 1.0])
    assert S.mean_size(sets).tolist() == pytest.approx([1.0, 2.0])
    assert S.empty_rate(sets).tolist() == pytest.approx([1 / 3, 0.0])
    # N(2): example 0: {0} of {0, 2} -> 1/2; example 1: {1} of 3 -> 1/3; example 2: {} of {2} -> 0
    assert S.nestedness(sets).tolist() == pytest.approx([1.0, (1 / 2 + 1 / 3 + 0) / 3])
    per_class = S.class_conditional_coverage(sets, labels)
    assert per_class.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    m = S.set_metrics(sets, labels)
    assert m.all_exit_coverage == pytest.approx((2 / 3, 2 / 3)) and m.size == (1.0, 2.0) and m.worst_class_coverage == 1.0
    assert m.returning == 1.0  # at exit 2, example 0 gains label 2, example 1 labels 0 and 2, example 2 (empty before) label 2


@pytest.mark.parametrize("exits", [None, 3])
def test_metrics_of_zero_examples_are_refused_by_name_not_nan(exits):
    # Issue 22: coverage, group-conditional coverage and the other per-example means used to return NaN here.
    shape = (0, 4) if exits is None else (exits, 0, 4)
    sets, labels, groups = torch.zeros(shape, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    for metric in (lambda: S.coverage(sets, labels), lambda: S.group_conditional_coverage(sets, labels, groups, 2),
                   lambda: S.class_conditional_coverage(sets, labels), lambda: S.mean_size(sets), lambda: S.empty_rate(sets)):
        with pytest.raises(ValueError, match=r"^sets is empty \(0 rows\)"):
            metric()


def test_set_metrics_of_an_empty_group_names_the_group():
    # Issue 22: one group's rows of an evaluation split where the group has none used to fail in torch's min().
    sets = torch.ones(3, 5, 4, dtype=torch.bool)
    labels, groups = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 0, 1, 1, 0])
    mine = groups == 2
    with pytest.raises(ValueError, match=r"^sets of group 'waterbird on land' is empty"):
        S.set_metrics(sets[:, mine], labels[mine], group="waterbird on land")
    with pytest.raises(ValueError, match=r"^sets is empty"):
        S.set_metrics(sets[:, mine], labels[mine])
    # a group with examples still gets its metrics, the same with or without its name
    kept = groups == 1
    assert S.set_metrics(sets[:, kept], labels[kept], group="b") == S.set_metrics(sets[:, kept], labels[kept])
    assert S.set_metrics(sets[:, kept], labels[kept]).coverage == (1.0, 1.0, 1.0)


def test_summarize_splits_matches_numpy():
    rng = np.random.default_rng(0)
    metrics = [S.SetMetrics(tuple(rng.random(3)), tuple(rng.random(3)), (0.0,) * 3, (1.0,) * 3, tuple(rng.random(3)), 0.1, 0.5) for _ in range(7)]
    summary = S.summarize_splits("m", metrics, 0.5)
    cov = np.array([m.coverage for m in metrics])
    last = np.array([m.all_exit_coverage[-1] for m in metrics])
    assert summary.coverage == pytest.approx(tuple(cov.mean(0))) and summary.coverage_std == pytest.approx(tuple(cov.std(0, ddof=1)))
    assert summary.all_exit_coverage == pytest.approx(last.mean()) and summary.share_below_target == pytest.approx((last < 0.5).mean())
    assert summary.splits == 7 and summary.returning == pytest.approx(0.1)


def test_non_nested_examples_flags_labels_that_come_back():
    sets = torch.tensor(
        [
            [[1, 1, 0], [1, 0, 0], [1, 1, 1]],
            [[1, 0, 0], [1, 1, 0], [1, 1, 0]],
            [[1, 0, 0], [0, 0, 0], [1, 1, 1]],
        ],
        dtype=torch.bool,
    )
    # example 0 shrinks (nested); example 1 gains label 1 at exit 2; example 2 loses label 2, regains it at exit 3
    assert S.non_nested_examples(sets).tolist() == [False, True, True]
    assert not S.non_nested_examples(S.running_intersection(sets)).any()


def test_class_conditional_coverage_is_nan_for_absent_classes():
    sets = torch.ones(4, 3, dtype=torch.bool)
    result = S.class_conditional_coverage(sets, torch.tensor([0, 0, 1, 1]))
    assert result[:2].tolist() == [1.0, 1.0] and math.isnan(float(result[2]))


# --- regression --------------------------------------------------------------------------------------------------


def direct_log_ratio(y: torch.Tensor, mean, var, sampled, noise_var) -> torch.Tensor:
    # log R_t(y) summed over exits <= t, straight from the Gaussian densities: (exits, N, len(y)).
    normal = torch.distributions.Normal
    terms = normal(mean[..., None], var[..., None].sqrt()).log_prob(y) - normal(sampled[..., None], noise_var[:, None, None].sqrt()).log_prob(y)
    return terms.cumsum(dim=0)


def test_avcs_interval_is_where_the_directly_evaluated_quadratic_is_below_log_one_over_alpha():
    g = torch.Generator().manual_seed(0)
    exits, n, alpha = 4, 25, 0.05
    mean = torch.randn(exits, n, generator=g, dtype=torch.float64)
    noise_var = 0.05 + torch.rand(exits, generator=g, dtype=torch.float64)
    epistemic = 0.5 * torch.rand(exits, n, generator=g, dtype=torch.float64)
    sampled = mean + epistemic.sqrt() * torch.randn(exits, n, generator=g, dtype=torch.float64)
    lower, upper = S.avcs_quadratic_intervals(mean, epistemic + noise_var[:, None], sampled, noise_var, alpha)
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    inside = direct_log_ratio(grid, mean, epistemic + noise_var[:, None], sampled, noise_var) <= math.log(1 / alpha)
    claimed = (grid >= lower[..., None]) & (grid <= upper[..., None])
    step = float(grid[1] - grid[0])
    near_end = ((grid - lower[..., None]).abs() < step) | ((grid - upper[..., None]).abs() < step)
    assert torch.equal(inside & ~near_end, claimed & ~near_end)


def test_avcs_interval_is_empty_when_the_exits_draws_disagree():
    # One exit alone never gives an empty set (the minimum of its log ratio is negative). Two exits whose posterior
    # draws land 50 apart on either side of the predictive mean leave no plausible y: empty, out of distribution.
    mean = torch.zeros(2, 1, dtype=torch.float64)
    var = torch.full((2, 1), 1.1, dtype=torch.float64)
    sampled = torch.tensor([[50.0], [-50.0]], dtype=torch.float64)
    noise_var = torch.tensor([1.0, 1.0], dtype=torch.float64)
    lower, upper = S.avcs_quadratic_intervals(mean, var, sampled, noise_var, 0.05)
    assert float(lower[0, 0]) <= float(upper[0, 0]) and float(lower[1, 0]) > float(upper[1, 0])
    grid = torch.linspace(-2000, 2000, 40001, dtype=torch.float64)
    assert (direct_log_ratio(grid, mean, var, sampled, noise_var)[1] > math.log(20)).all()


def test_avcs_intervals_are_nested_and_empty_stays_empty():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(6, 200, generator=g, dtype=torch.float64)
    epistemic = 2 * torch.rand(6, 200, generator=g, dtype=torch.float64)
    lower, upper = S.avcs_intervals(mean, epistemic, torch.full((6,), 0.3), 0.05, generator=torch.Generator().manual_seed(0), num_parallel=2)
    empty = lower > upper
    assert not (empty[:-1] & ~empty[1:]).any()
    ok = ~empty[1:]
    assert (lower[1:] >= lower[:-1])[ok].all() and (upper[1:] <= upper[:-1])[ok].all()
    m = S.interval_metrics(lower, upper, mean[-1])
    assert m.nestedness == (1.0,) * 6 and m.returning == 0.0


def test_interval_running_intersection_and_metrics():
    lower = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    upper = torch.tensor([[2.0, 2.0], [3.0, 4.0]])
    run_lower, run_upper = S.interval_running_intersection(lower, upper)
    assert run_lower.tolist() == [[0.0, 0.0], [1.0, 3.0]] and run_upper.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    m = S.interval_metrics(lower, upper, torch.tensor([1.5, 3.5]))
    assert m.coverage == pytest.approx((0.5, 1.0))
    assert m.size == pytest.approx((2.0, 1.5))
    assert m.nestedness == pytest.approx((1.0, (0.5 + 0.0) / 2))
    assert m.all_exit_coverage == pytest.approx((0.5, 0.5))
    assert m.returning == 1.0  # [1, 3] reaches beyond [0, 2]; [3, 4] is outside it altogether


def test_credible_intervals_cover_gaussian_data_at_the_nominal_rate():
    g = torch.Generator().manual_seed(2)
    y = 1.0 + 2.0 * torch.randn(20000, generator=g, dtype=torch.float64)
    lower, upper = S.credible_intervals(torch.ones(1, 20000), torch.full((1, 20000), 4.0), 0.1)
    assert float(((lower <= y) & (y <= upper)).double().mean()) == pytest.approx(0.9, abs=0.01)


def test_bayesian_linear_regression_maximises_the_evidence_and_recovers_the_noise():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64) + 0.7 + 0.3 * torch.randn(2000, generator=g, dtype=torch.float64)
    head = S.fit_bayesian_linear_regression(x, y)
    assert head.noise_std == pytest.approx(0.3, rel=0.05)
    alpha, beta = head.prior_std**-2, head.noise_std**-2
    best = S.log_marginal_likelihood(x, y, alpha, beta)
    for a_factor, b_factor in [(1.3, 1.0), (1 / 1.3, 1.0), (1.0, 1.1), (1.0, 1 / 1.1), (1.3, 1.1)]:
        assert best >= S.log_marginal_likelihood(x, y, alpha * a_factor, beta * b_factor) - 1e-6
    # the posterior is the closed form at those hyperparameters
    design = torch.cat([x, torch.ones(2000, 1, dtype=torch.float64)], dim=1)
    precision = alpha * torch.eye(6, dtype=torch.float64) + beta * design.T @ design
    assert torch.allclose(head.mean, beta * torch.linalg.solve(precision, design.T @ y), atol=1e-6)
    mean, epistemic = head.predictive(x[:10])
    assert torch.allclose(epistemic, ((design[:10] @ torch.linalg.inv(precision)) * design[:10]).sum(1), rtol=1e-6)


def test_wiggle_data_is_reproducible_and_follows_the_curve():
    x, y = S.wiggle_data(3000, seed=4)
    x2, y2 = S.wiggle_data(3000, seed=4)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (3000, 1) and y.shape == (3000,)
    assert float(x.mean()) == pytest.approx(5.0, abs=0.15) and float(x.std()) == pytest.approx(2.5, abs=0.1)
    assert float((y - S.wiggle_function(x[:, 0])).std()) == pytest.approx(0.25, abs=0.02)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    logits, labels = synthetic_logits(50, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        S.conformal_threshold(torch.rand(10), alpha)
    with pytest.raises(ValueError, match="alpha"):
        S.avcs_sets(logits, [1.0] * 4, alpha, generator=torch.Generator())
    with pytest.raises(ValueError, match="alpha"):
        S.fit_avcs_thresholds(logits, labels, alpha)
    with pytest.raises(ValueError, match="alpha"):
        S.credible_intervals(torch.zeros(2, 3), torch.ones(2, 3), alpha)


def test_shape_mismatches_and_wrong_thresholds_are_refused():
    logits, labels = synthetic_logits(50, seed=0)
    with pytest.raises(ValueError, match="thresholds"):
        S.avcs_sets(logits, [1.0, 1.0], 0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="thresholds"):
        S.avcs_sets(logits, [1.0, 1.0, 0.0, 1.0], 0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="thresholds"):
        S.conformal_sets(logits, torch.ones(3), score="lac")
    with pytest.raises(ValueError, match="calib_labels"):
        S.fit_conformal_thresholds(logits, labels[:-1], 0.1)
    with pytest.raises(ValueError, match="calib_labels"):
        S.fit_conformal_thresholds(logits, labels + 100, 0.1)
    with pytest.raises(ValueError, match="calib_logits"):
        S.prediction_sets(logits[:, :, :3], labels, logits, 0.1)
    with pytest.raises(ValueError, match="exit_logits"):
        S.avcs_sets(logits[0], [1.0], 0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="score"):
        S.label_scores(logits, "softmax")
    with pytest.raises(ValueError, match="sets"):
        S.running_intersection(torch.ones(3, 4, 5))  # not bool
    with pytest.raises(ValueError, match="labels"):
        S.coverage(torch.ones(2, 5, 3, dtype=torch.bool), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="pred_var"):
        S.avcs_quadratic_intervals(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), [1.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="noise_var"):
        S.avcs_intervals(torch.zeros(2, 3), torch.ones(2, 3), [1.0, 1.0, 1.0], 0.1, generator=torch.Generator())
    with pytest.raises(ValueError, match="draws"):
        S.fit_avcs_thresholds(logits, labels, 0.1, draws=0)
    with pytest.raises(ValueError, match="fraction"):
        calibration_split(50, 1.0)
    with pytest.raises(ValueError, match="targets"):
        S.fit_bayesian_linear_regression(torch.zeros(5, 2), torch.zeros(4))


def test_set_membership_and_set_metrics_figures_draw_what_they_are_given():
    from kdteach.plots import plot_set_membership, plot_set_metrics

    sets = {"a": torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0)) < 0.5, "b": torch.ones(3, 5, 4, dtype=torch.bool)}
    fig = plot_set_membership(sets, 2, 1)
    assert len(fig.axes) == 2 and fig.axes[1].images[0].get_array().min() == 1.0
    labels = torch.tensor([0, 1, 2, 3, 0])
    summaries = [S.summarize_splits(name, [S.set_metrics(s, labels)] * 2, 0.1) for name, s in sets.items()]
    fig = plot_set_metrics(summaries, alpha=0.1, methods=("b",))
    assert [line.get_label() for line in fig.axes[0].get_lines()][:1] == ["b"] and len(fig.axes) == 4


def test_a_smaller_start_lets_the_threshold_rule_reach_its_rank_where_tau_1_cannot():
    # Logits below 1 for many true labels: at the paper's tau >= 1 those labels are ruled out at some exit, so no
    # tau on the grid can keep ceil((n + 1)(1 - alpha)) calibration labels; a grid from 0.05 can.
    import warnings

    from kdteach.sets import fit_avcs_thresholds

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    logits = torch.full((1, 200, 4), 0.3)  # one exit; competitors at 0.3
    true_logit = torch.where(torch.rand(200, generator=g) < 0.3, 0.8, 6.0)  # 30% hard digits: true logit below 1
    logits[0, torch.arange(200), labels] = true_logit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at_one = fit_avcs_thresholds(logits, labels, 0.1, start=1.0)
    assert not at_one.feasible and at_one.thresholds[0] == 1.0 and any("no guarantee" in str(w.message) for w in caught)
    low = fit_avcs_thresholds(logits, labels, 0.1, start=0.05)
    assert low.feasible and low.calibration_coverage >= low.required_coverage and low.thresholds[0] >= 0.05
