"""Prediction sets for early-exit networks: split conformal per exit, Bayes credible sets, running intersections,
anytime-valid sets.

A set is a boolean tensor: (N, C) for one predictor, (exits, N, C) for a multi-exit network; entry [t, i, y] says
whether label y is in example i's set at exit t. Regression intervals are two tensors `lower`, `upper` of shape
(exits, N); an empty interval has lower > upper (we use +inf and -inf) and means "abstain / out of distribution".

Ways to make a set at every exit (Jazbec et al., UAI 2024, "Early-Exit Neural Networks with Nested Prediction
Sets"):
- split conformal at each exit (LAC, APS, RAPS scores): each C_t covers the label with probability >= 1 - alpha
  on its own, but nothing ties C_t to C_{t-1}: a label ruled out early can come back later (not nested);
- Bayes credible sets at each exit: the most probable labels until their mass reaches 1 - alpha, with no
  calibration at all: right only if the exit's predictive distribution is;
- their running intersections C_1 ∩ ... ∩ C_t: nested, but each C_t's guarantee was marginal over one exit, so the
  intersection loses coverage as exits accumulate;
- anytime-valid confidence sequences (AVCS): P(for all t: y in C_t) >= 1 - alpha IF the model's predictive
  distribution is right, so the running intersection keeps the guarantee. Classification uses Dirichlet draws from
  thresholded logits (Algorithm 2); regression uses Bayesian linear regression heads and a quadratic in y
  (Algorithm 1). A network is not that model; fit_avcs_thresholds chooses the thresholds on a calibration split by a
  split-conformal rule, which gives the all-exit coverage a finite-sample guarantee of its own (see there).

Unlike the paper's official code, the classification AVCS here takes the running intersection (the paper's
algorithm has it; the code skips it), and its thresholds are fitted on a calibration split only, never on the data
the sets are evaluated on.

Conventions of the metrics: an empty set counts as size 0 in mean_size (and is counted apart by empty_rate), and
N(t) = |C_1 ∩ ... ∩ C_t| / |C_t| is taken as 1 when C_t is empty (nothing came back).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdteach.checks import check_alpha, check_finite, check_int, check_labels, check_not_empty, check_number, check_tensor

__all__ = [
    # scores, split conformal, credible sets
    "lac_scores",
    "aps_scores",
    "raps_scores",
    "label_scores",
    "conformal_threshold",
    "conformal_rank",
    "fit_conformal_thresholds",
    "conformal_sets",
    "prediction_sets",
    "credible_sets",
    "running_intersection",
    # anytime-valid sets, classification
    "avcs_sets",
    "AvcsFit",
    "fit_avcs_thresholds",
    # every method on one calibration split
    "calibration_split",
    "CONFORMAL_METHODS",
    "MethodSets",
    "method_sets",
    # metrics
    "coverage",
    "mean_size",
    "empty_rate",
    "class_conditional_coverage",
    "group_conditional_coverage",
    "nestedness",
    "non_nested_examples",
    "SetMetrics",
    "set_metrics",
    "MethodSummary",
    "summarize_splits",
    # regression
    "BayesianLinearRegression",
    "fit_bayesian_linear_regression",
    "log_marginal_likelihood",
    "ExitPredictive",
    "bayesian_exit_predictive",
    "avcs_quadratic_intervals",
    "avcs_intervals",
    "credible_intervals",
    "interval_running_intersection",
    "regression_intervals",
    "interval_metrics",
    "empty_share_by_region",
    "wiggle_function",
    "wiggle_data",
    "WiggleSplits",
    "wiggle_splits",
]

SCORES = ("lac", "aps", "raps")


# ----------------------------------------------------------------------------------------------------------------
# Input checks (kdteach.checks): every public function names the argument it refuses.


def _check_probs(name: str, probs: torch.Tensor) -> None:
    # Probabilities or logits: (N, C) or (exits, N, C), floating point, at least one example, finite (read on CPU).
    check_tensor(name, probs, dims=(2, 3), floating=True, what="(N, C) or (exits, N, C)")
    check_not_empty(name, probs, dim=-2)
    check_finite(name, probs)


def _check_sets(name: str, sets: torch.Tensor) -> None:
    if not isinstance(sets, torch.Tensor) or sets.dtype != torch.bool or sets.dim() not in (2, 3):
        what = f"{sets.dtype} {tuple(sets.shape)}" if isinstance(sets, torch.Tensor) else type(sets).__name__
        raise ValueError(f"{name} must be a bool tensor of shape (N, C) or (exits, N, C), got {what}")


def _per_exit(name: str, values: torch.Tensor | float | Sequence[float], exits: int, like: torch.Tensor) -> torch.Tensor:
    # A number, or one number per exit, as a float64 tensor of shape (exits,) on like's device.
    t = torch.as_tensor(values, dtype=torch.float64, device=like.device)
    if t.dim() == 0:
        t = t.expand(exits)
    if t.shape != (exits,):
        raise ValueError(f"{name} must be a number or hold one value per exit ({exits}), got shape {tuple(t.shape)}")
    return t


# ----------------------------------------------------------------------------------------------------------------
# Conformal scores: score(x, y) for every label; small means "y looks right". A set is {y : score <= threshold}.


def lac_scores(probs: torch.Tensor) -> torch.Tensor:
    """LAC (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p_y for every label y.

    Args:
        probs: (..., N, C) class probabilities.

    Returns:
        (..., N, C) scores.
    """
    _check_probs("probs", probs)
    return 1.0 - probs


def raps_scores(
    probs: torch.Tensor,
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    shared_u: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RAPS (Angelopoulos et al. 2021) for every label: the probability mass ranked above y, part of y's own mass,
    and a penalty lam * max(0, rank(y) - k_reg) that keeps long tails of unlikely labels out of the set.

    score(x, y, u) = sum_{j ranked before y} p_j + u * p_y + lam * max(0, o(y) - k_reg), with o(y) the 1-based rank.
    Randomized: u ~ Uniform(0, 1), one draw per example, fresh at every exit unless shared_u. Not randomized: u = 1.
    A set {y : score <= q} is empty exactly when q is below the score of the example's top-ranked label, which is
    u * p_max (+ lam if k_reg = 0): randomized sets are empty whenever u is small enough, and non-randomized ones
    whenever q < p_max (+ lam if k_reg = 0), which happens for examples more confident than the calibration split
    demanded. APS is RAPS with lam = 0.

    Args:
        probs: (..., N, C) class probabilities.
        lam: penalty per rank beyond k_reg (>= 0).
        k_reg: ranks up to k_reg are not penalised (>= 0).
        randomized: draw u per example; False uses u = 1.
        shared_u: for (exits, N, C) probabilities, one u per example for every exit (the exits then differ only
            in their probabilities); False draws u afresh per exit, which alone can make labels come back.
        generator: the source of u (needed for reproducible randomized scores).

    Returns:
        (..., N, C) scores; for a fixed example the score grows with the label's rank, so sets are top-k prefixes.
    """
    _check_probs("probs", probs)
    check_number("lam", lam, low=0.0)
    check_int("k_reg", k_reg, minimum=0)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    ranks = order.argsort(dim=-1)  # 0-based rank of each label
    mass_through = sorted_probs.cumsum(dim=-1).gather(-1, ranks)  # mass of labels ranked before y, plus p_y
    if randomized:
        shape = probs.shape[:-1] + (1,)
        if shared_u and probs.dim() == 3:
            shape = (1,) + shape[1:]  # one u per example, broadcast over exits
        u = torch.rand(shape, generator=generator, dtype=probs.dtype, device="cpu").to(probs.device)
    else:
        u = torch.ones((), dtype=probs.dtype, device=probs.device)
    penalty = lam * (ranks + 1 - k_reg).clamp(min=0).to(probs.dtype)
    return mass_through - (1.0 - u) * probs + penalty


def aps_scores(probs: torch.Tensor, *, randomized: bool = True, shared_u: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """APS (Romano et al. 2020): RAPS without the rank penalty (see raps_scores).

    Non-randomized APS sets are NOT always non-empty: the top label's score is its probability p_max, so the set
    {y : score <= q} is empty for every example with p_max > q. Randomized, the top label's score is u * p_max.

    Args:
        probs: (..., N, C) class probabilities.
        randomized: draw u per example; False uses u = 1.
        shared_u: one u per example for every exit (see raps_scores).
        generator: the source of u.

    Returns:
        (..., N, C) scores.
    """
    return raps_scores(probs, lam=0.0, k_reg=0, randomized=randomized, shared_u=shared_u, generator=generator)


def label_scores(
    logits: torch.Tensor,
    score: str = "raps",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    shared_u: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The conformal score of every label from logits (softmax first), by score name.

    Args:
        logits: (N, C) or (exits, N, C).
        score: "lac", "aps" or "raps".
        lam, k_reg: RAPS's penalty (ignored by LAC and APS).
        randomized, shared_u: APS/RAPS randomisation (ignored by LAC).
        generator: the source of APS/RAPS's uniform draws.

    Returns:
        Scores of the same shape as logits.
    """
    _check_probs("logits", logits)
    probs = torch.softmax(logits.double(), dim=-1)
    if score == "lac":
        return lac_scores(probs)
    if score == "aps":
        return aps_scores(probs, randomized=randomized, shared_u=shared_u, generator=generator)
    if score == "raps":
        return raps_scores(probs, lam=lam, k_reg=k_reg, randomized=randomized, shared_u=shared_u, generator=generator)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


# ----------------------------------------------------------------------------------------------------------------
# Split conformal prediction.


def conformal_threshold(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest calibration score.

    With exchangeable data, a new example's score is <= this threshold with probability >= 1 - alpha. When that
    rank exceeds n (too few calibration points for this alpha) the threshold is +infinity, i.e. the full set: the
    largest score would NOT give the guarantee.

    Args:
        scores: (n,) calibration scores (each example's score at its true label), or (exits, n): one per exit.
        alpha: miscoverage level in (0, 1).

    Returns:
        A scalar tensor, or (exits,): float64.
    """
    alpha = check_alpha(alpha)
    check_tensor("scores", scores, dims=(1, 2), what="(n,) or (exits, n)")
    check_not_empty("scores", scores, dim=-1)
    check_finite("scores", scores)
    n = scores.shape[-1]
    rank = conformal_rank(n, alpha)
    if rank > n:
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64, device=scores.device)
    return scores.double().sort(dim=-1).values[..., rank - 1]


def conformal_rank(n: int, alpha: float) -> int:
    """ceil((n + 1)(1 - alpha)): how many of n calibration scores must lie at or below a split-conformal threshold.

    The small tolerance keeps e.g. (19 + 1) * 0.95 = 19.000000000000004 at rank 19 rather than 20.
    """
    return math.ceil((check_int("n", n, minimum=1) + 1) * (1.0 - check_alpha(alpha)) - 1e-9)


def fit_conformal_thresholds(
    calib_logits: torch.Tensor,
    calib_labels: torch.Tensor,
    alpha: float,
    *,
    score: str = "raps",
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    shared_u: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split-conformal thresholds from a calibration split, one per exit (in the score's units).

    Args:
        calib_logits: (N, C) or (exits, N, C) logits of the calibration examples.
        calib_labels: (N,) their labels.
        alpha: miscoverage level in (0, 1).
        score: "lac", "aps" or "raps".
        lam, k_reg, randomized, shared_u: see raps_scores.
        generator: the source of the calibration examples' uniform draws (APS/RAPS).

    Returns:
        A scalar (for (N, C) logits) or (exits,) float64 thresholds.
    """
    check_alpha(alpha)
    _check_probs("calib_logits", calib_logits)
    check_labels("calib_labels", calib_labels, calib_logits.shape[-2], calib_logits.shape[-1])
    scores = label_scores(calib_logits, score, lam=lam, k_reg=k_reg, randomized=randomized, shared_u=shared_u, generator=generator)
    index = calib_labels.to(scores.device).expand(scores.shape[:-1]).unsqueeze(-1)
    return conformal_threshold(scores.gather(-1, index).squeeze(-1), alpha)


def conformal_sets(
    logits: torch.Tensor,
    thresholds: torch.Tensor | float,
    *,
    score: str = "raps",
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    shared_u: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split-conformal sets {y : score(x, y) <= threshold} at every exit.

    Args:
        logits: (N, C) or (exits, N, C).
        thresholds: a number, or one per exit (from fit_conformal_thresholds).
        score, lam, k_reg, randomized, shared_u: must match the ones the thresholds were fitted with.
        generator: the source of the test examples' uniform draws (APS/RAPS).

    Returns:
        bool sets of the same shape as logits.
    """
    _check_probs("logits", logits)
    scores = label_scores(logits, score, lam=lam, k_reg=k_reg, randomized=randomized, shared_u=shared_u, generator=generator)
    if logits.dim() == 2:
        t = torch.as_tensor(thresholds, dtype=torch.float64, device=scores.device)
        if t.dim() != 0:
            raise ValueError(f"thresholds must be a single number for (N, C) logits, got shape {tuple(t.shape)}")
        return scores <= t
    t = _per_exit("thresholds", thresholds, logits.shape[0], scores)
    return scores <= t[:, None, None]


def prediction_sets(
    calib_logits: torch.Tensor,
    calib_labels: torch.Tensor,
    logits: torch.Tensor,
    alpha: float,
    *,
    score: str = "raps",
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    shared_u: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split conformal at each exit in one call: thresholds from the calibration split, sets for `logits`.

    Args:
        calib_logits: (exits, n, C) (or (n, C)) logits of the calibration split.
        calib_labels: (n,) its labels.
        logits: (exits, N, C) (or (N, C)) logits of the examples to make sets for.
        alpha: miscoverage level in (0, 1).
        score, lam, k_reg, randomized, shared_u: see label_scores.
        generator: the source of APS/RAPS's uniform draws (calibration first, then test).

    Returns:
        bool sets of the same shape as logits.
    """
    _check_probs("logits", logits)
    _check_probs("calib_logits", calib_logits)
    if calib_logits.dim() != logits.dim() or calib_logits.shape[-1] != logits.shape[-1] or calib_logits.shape[:-2] != logits.shape[:-2]:
        raise ValueError(f"calib_logits {tuple(calib_logits.shape)} and logits {tuple(logits.shape)} must agree in exits and classes")
    options = dict(score=score, lam=lam, k_reg=k_reg, randomized=randomized, shared_u=shared_u, generator=generator)
    thresholds = fit_conformal_thresholds(calib_logits, calib_labels, alpha, **options)
    return conformal_sets(logits, thresholds, **options)


def credible_sets(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Bayes credible sets at every exit: the most probable labels, in order, until their mass reaches 1 - alpha.

    The predictive distribution is the exit's softmax (the paper's baseline uses a Laplace posterior predictive;
    the softmax is the plug-in one). Label y is in the set iff the mass ranked strictly above it is < 1 - alpha, so
    the top label always is: never empty. No calibration: the coverage is 1 - alpha only if the softmax is right.

    Args:
        logits: (N, C) or (exits, N, C).
        alpha: credible level 1 - alpha, alpha in (0, 1).

    Returns:
        bool sets of the same shape as logits.
    """
    alpha = check_alpha(alpha)
    _check_probs("logits", logits)
    probs = torch.softmax(logits.double(), dim=-1)
    mass_above = aps_scores(probs, randomized=False) - probs
    return mass_above < 1.0 - alpha


def running_intersection(sets: torch.Tensor) -> torch.Tensor:
    """C_1, C_1 ∩ C_2, ..., C_1 ∩ ... ∩ C_T: nested by construction.

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (exits, N, C) bool, with [t] the intersection of sets[0..t].
    """
    _check_sets("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    return sets.to(torch.uint8).cummin(dim=0).values.bool()


# ----------------------------------------------------------------------------------------------------------------
# Anytime-valid sets for classification (Jazbec et al., Algorithm 2).


def _standard_gamma(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # torch's Gamma sampler takes no generator; draw a seed from ours and sample inside a forked RNG, so the result
    # depends on the generator only and the global RNG streams are left as they were.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [concentration.device] if concentration.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return torch.distributions.Gamma(concentration, torch.ones_like(concentration)).sample()


def _gamma_draws(logits: torch.Tensor, support: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    # (copies, exits, N, C) Gamma(logit) draws on the support (1 elsewhere, unused). Normalised over any subset of
    # the support they are a Dirichlet draw of that subset: the fit reuses one set of draws for every threshold.
    concentration = torch.where(support, logits, torch.ones_like(logits))
    return _standard_gamma(concentration.expand(copies, *logits.shape).contiguous(), generator)


def _avcs_log_ratios(logits: torch.Tensor, support: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    # log R_t(y) per copy: per exit the concentrations a = logits on the support, the draw pi = gamma normalised on
    # the support, the ratio (a_y / sum a) / pi_y (+inf off the support); log R_t is the sum over exits <= t. An empty
    # support (every logit below tau) gives an all-infinite row: an empty set, i.e. abstain.
    concentration = torch.where(support, logits, torch.zeros_like(logits))
    draw = torch.where(support, gamma, torch.zeros_like(gamma))
    log_mean = concentration.log() - concentration.sum(-1, keepdim=True).log()
    log_draw = draw.log() - draw.sum(-1, keepdim=True).log()
    log_ratio = torch.where(support & (draw > 0), log_mean - log_draw, torch.full_like(draw, math.inf))
    return log_ratio.cumsum(dim=-3)


def _check_exit_logits(name: str, exit_logits: torch.Tensor) -> None:
    _check_probs(name, exit_logits)
    if exit_logits.dim() != 3:
        raise ValueError(f"{name} must have shape (exits, N, C), got {tuple(exit_logits.shape)}")


def avcs_sets(
    exit_logits: torch.Tensor,
    thresholds: torch.Tensor | Sequence[float],
    alpha: float,
    *,
    generator: torch.Generator,
    num_parallel: int = 1,
) -> torch.Tensor:
    """Anytime-valid prediction sets for a multi-exit classifier (Jazbec et al. 2024, Algorithm 2).

    At exit t the concentrations a_t are the exit's logits where they reach tau_t (0 elsewhere: those labels are
    ruled out). One draw pi_t ~ Dirichlet(a_t on its support) per exit and per parallel copy gives the ratio
    R_t(y) = prod_{l <= t} (a_{l,y} / sum_k a_{l,k}) / pi_{l,y}, and C_t = {y : R_t(y) <= 1 / alpha}. Then the
    running intersection over exits (which the official code omits) and the intersection over parallel copies.

    If the network's exits were the Bayesian model the paper assumes, each copy would cover the true label at every
    exit with probability >= 1 - alpha (a Ville-type inequality). The intersection of S copies is valid at S * alpha
    by the union bound only; fit_avcs_thresholds with the same num_parallel calibrates the intersection itself.

    Args:
        exit_logits: (exits, N, C) logits.
        thresholds: tau_t > 0 per exit (fit them with fit_avcs_thresholds on a calibration split).
        alpha: miscoverage level in (0, 1).
        generator: the source of the Dirichlet draws (keyword-only and required: sets are random).
        num_parallel: independent copies whose sets are intersected (>= 1).

    Returns:
        (exits, N, C) bool sets, nested across exits.
    """
    alpha = check_alpha(alpha)
    _check_exit_logits("exit_logits", exit_logits)
    num_parallel = check_int("num_parallel", num_parallel, minimum=1)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    logits = exit_logits.double()
    taus = _per_exit("thresholds", thresholds, logits.shape[0], logits)
    if not bool((taus > 0).all()):
        raise ValueError(f"thresholds must all be > 0 (they are Dirichlet concentrations' floor), got {taus.tolist()}")
    support = logits >= taus[:, None, None]
    inside = _avcs_log_ratios(logits, support, _gamma_draws(logits, support, num_parallel, generator)) <= math.log(1.0 / alpha)
    return inside.to(torch.uint8).cummin(dim=1).values.bool().all(dim=0)  # running intersection, then over copies


@dataclass(frozen=True)
class AvcsFit:
    """AVCS thresholds chosen on a calibration split (fit_avcs_thresholds).

    Attributes:
        thresholds: tau per exit (one common value: the rule needs a path of candidates fixed in advance).
        calibration_coverage: share of calibration labels that survive at every exit for every candidate up to the
            chosen one (mean over the Dirichlet draws).
        required_coverage: ceil((n + 1)(1 - alpha)) / n, the conformal rank as a share (> 1: no tau can qualify).
        floor_coverage: calibration_coverage at the smallest candidate: the most any threshold can reach here.
        feasible: floor_coverage reaches required_coverage; if not, the thresholds are the smallest candidate and
            carry no guarantee.
    """

    thresholds: tuple[float, ...]
    calibration_coverage: float
    required_coverage: float
    floor_coverage: float
    feasible: bool

    @property
    def tau(self) -> float:
        """The common threshold."""
        return self.thresholds[0]


def fit_avcs_thresholds(
    calib_logits: torch.Tensor,
    calib_labels: torch.Tensor,
    alpha: float,
    *,
    start: float = 1.0,
    step: float = 0.5,
    num_parallel: int = 1,
    seed: int = 0,
    draws: int = 10,
) -> AvcsFit:
    """Chooses AVCS's threshold tau (common to all exits) on a calibration split by a split-conformal rule.

    Candidates tau = start, start + step, ... (a path fixed in advance; larger tau rules out more labels). For each
    calibration example and Dirichlet draw, its score is how far along the path its label survives: the last
    candidate up to which, at every candidate, the label is in the AVCS set at every exit. The chosen tau is the
    largest candidate that at least ceil((n + 1)(1 - alpha)) calibration examples reach (counts averaged over
    `draws` draws per example). One set of Gamma draws serves every candidate: normalised over a candidate's
    support they are a Dirichlet draw with that candidate's concentrations.

    The finite-sample argument: the averaged count is at most the same count over all n + 1 examples (calibration
    plus a new one, with its own draws); that count is a symmetric function of the n + 1 exchangeable examples,
    so a new example survives to the chosen tau, and is covered at every exit, with probability
    >= ceil((n + 1)(1 - alpha)) / (n + 1) >= 1 - alpha, averaged over calibration splits and draws. It needs
    exchangeable calibration and test examples, not a correct model. The paper's own rule (the largest tau,
    searched exit by exit, keeping calibration coverage >= 1 - alpha) has no such argument.

    Args:
        calib_logits: (exits, n, C) logits of the calibration split.
        calib_labels: (n,) its labels.
        alpha: miscoverage level in (0, 1).
        start: the smallest candidate (> 0). The paper uses tau >= 1; when even tau = 1 rules out too many
            calibration labels (a network's logits are not the paper's model), a smaller start lets the rule reach
            its rank, with larger sets.
        step: the candidates' spacing (> 0; 0.5 as in the paper's code).
        num_parallel: as in avcs_sets (the rule then calibrates the intersection of the copies).
        seed: seed of the calibration draws.
        draws: Dirichlet draws per calibration example (>= 1) whose counts are averaged (less variance in tau).

    Returns:
        AvcsFit. If not even `start` reaches the required count, its thresholds are `start` and it warns.
    """
    alpha = check_alpha(alpha)
    _check_exit_logits("calib_logits", calib_logits)
    check_labels("calib_labels", calib_labels, calib_logits.shape[1], calib_logits.shape[2])
    start = check_number("start", start, low=0.0, low_open=True)
    step = check_number("step", step, low=0.0, low_open=True)
    draws = check_int("draws", draws, minimum=1)
    num_parallel = check_int("num_parallel", num_parallel, minimum=1)
    logits = calib_logits.double()
    exits, n, _ = logits.shape
    needed = conformal_rank(n, alpha)
    top = float(logits.amax(dim=(1, 2)).min())  # above this some exit rules out every label: nobody survives
    candidates = [start + step * j for j in range(max(0, math.floor((top - start) / step)) + 1)]
    gamma = _gamma_draws(logits, logits >= start, draws * num_parallel, torch.Generator().manual_seed(seed))
    index = calib_labels.to(logits.device).view(1, 1, n, 1).expand(draws * num_parallel, exits, n, 1)
    alive = torch.ones(draws, n, dtype=torch.bool, device=logits.device)
    counts: list[float] = []
    for tau in candidates:
        label_ratio = _avcs_log_ratios(logits, logits >= tau, gamma).gather(-1, index).squeeze(-1)  # (copies, exits, n)
        covered = (label_ratio <= math.log(1.0 / alpha)).all(dim=1).view(draws, num_parallel, n).all(dim=1)
        alive &= covered
        counts.append(float(alive.double().sum(dim=1).mean()))
        if counts[-1] < needed:  # survival only falls along the path
            break
    feasible = counts[0] >= needed
    chosen = max(j for j, c in enumerate(counts) if c >= needed) if feasible else 0
    if not feasible:
        warnings.warn(f"fit_avcs_thresholds: only {counts[0] / n:.3f} of calibration labels survive at tau = {start}, below the "
                      f"required {needed / n:.3f} = ceil((n + 1)(1 - alpha)) / n; keeping tau = {start} (no guarantee)")
    return AvcsFit((candidates[chosen],) * exits, counts[chosen] / n, needed / n, counts[0] / n, feasible)


# ----------------------------------------------------------------------------------------------------------------
# Every method on one random calibration/evaluation split.


def calibration_split(n: int, fraction: float = 0.2, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of n examples into calibration and evaluation indices.

    Args:
        n: number of examples.
        fraction: share of calibration examples, in (0, 1).
        seed: seed of the permutation.

    Returns:
        calibration indices and evaluation indices (disjoint, together 0..n-1).
    """
    fraction = check_number("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n_calib = int(round(fraction * n))
    if not 0 < n_calib < n:
        raise ValueError(f"n = {n} is too small to split with fraction {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_calib], order[n_calib:]


# The per-exit split-conformal methods: the score and its options (RAPS: lambda 0.01, k_reg 5, as in the paper).
CONFORMAL_METHODS: dict[str, dict] = {
    "LAC": {"score": "lac"},
    "APS": {"score": "aps"},
    "RAPS": {"score": "raps", "lam": 0.01, "k_reg": 5},
    "RAPS shared u": {"score": "raps", "lam": 0.01, "k_reg": 5, "shared_u": True},
    "RAPS no u": {"score": "raps", "lam": 0.01, "k_reg": 5, "randomized": False},
}


@dataclass(frozen=True)
class MethodSets:
    """Every method's sets on one evaluation split, and what was fitted on its calibration split.

    Attributes:
        sets: method -> (exits, N, C) bool sets, in table order: each per-exit method, then its running
            intersection "<method> ∩", then "AVCS".
        quantiles: conformal method -> (exits,) score thresholds (in that score's units).
        avcs: AVCS's fitted threshold (in logit units: a different quantity from the score quantiles).
    """

    sets: dict[str, torch.Tensor]
    quantiles: dict[str, torch.Tensor]
    avcs: AvcsFit


def method_sets(cal_logits: torch.Tensor, cal_labels: torch.Tensor, eval_logits: torch.Tensor, alpha: float, *,
                seed: int = 0, avcs_draws: int = 10, avcs_start: float = 1.0, num_parallel: int = 1) -> MethodSets:
    """Split conformal (CONFORMAL_METHODS), Bayes credible sets, their running intersections and AVCS on one split.

    Args:
        cal_logits, cal_labels: the calibration split ((exits, n, C), (n,)); every threshold is fitted on it.
        eval_logits: (exits, N, C) the evaluation split.
        alpha: miscoverage level.
        seed: seed of every random draw (APS/RAPS's u, AVCS's calibration and evaluation draws).
        avcs_draws: Dirichlet draws per calibration example in fit_avcs_thresholds.
        avcs_start: the smallest threshold fit_avcs_thresholds may choose.
        num_parallel: AVCS's parallel copies.

    Returns:
        MethodSets.
    """
    generator = torch.Generator().manual_seed(seed)
    sets, quantiles = {}, {}
    per_exit = {}
    for name, options in CONFORMAL_METHODS.items():
        quantiles[name] = fit_conformal_thresholds(cal_logits, cal_labels, alpha, generator=generator, **options)
        per_exit[name] = conformal_sets(eval_logits, quantiles[name], generator=generator, **options)
    per_exit["Bayes"] = credible_sets(eval_logits, alpha)
    for name, s in per_exit.items():
        sets[name], sets[f"{name} ∩"] = s, running_intersection(s)
    fit = fit_avcs_thresholds(cal_logits, cal_labels, alpha, start=avcs_start, num_parallel=num_parallel, seed=seed, draws=avcs_draws)
    # Other draws than the calibration ones: the evaluation sets must not reuse the draws the threshold saw.
    sets["AVCS"] = avcs_sets(eval_logits, fit.thresholds, alpha, generator=torch.Generator().manual_seed(seed + 10_000), num_parallel=num_parallel)
    return MethodSets(sets, quantiles, fit)


# ----------------------------------------------------------------------------------------------------------------
# Metrics of sets. Empty sets are abstentions: counted with size 0 in mean_size AND reported by empty_rate.


def coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose label is in the set.

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        A scalar, or (exits,): float64.
    """
    _check_sets("sets", sets)
    check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    index = labels.to(sets.device).expand(sets.shape[:-1]).unsqueeze(-1)
    return sets.gather(-1, index).squeeze(-1).double().mean(dim=-1)


def mean_size(sets: torch.Tensor) -> torch.Tensor:
    """Mean number of labels per set; an empty set counts 0 (so report empty_rate beside it).

    Args:
        sets: (N, C) or (exits, N, C) bool.

    Returns:
        A scalar, or (exits,).
    """
    _check_sets("sets", sets)
    return sets.double().sum(dim=-1).mean(dim=-1)


def empty_rate(sets: torch.Tensor) -> torch.Tensor:
    """Fraction of empty sets (abstentions).

    Args:
        sets: (N, C) or (exits, N, C) bool.

    Returns:
        A scalar, or (exits,).
    """
    _check_sets("sets", sets)
    return (~sets.any(dim=-1)).double().mean(dim=-1)


def class_conditional_coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coverage among the examples of each class (NaN for a class with no examples).

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        (C,) or (exits, C) float64.
    """
    _check_sets("sets", sets)
    return group_conditional_coverage(sets, labels, labels, sets.shape[-1])  # the classes as the groups


def group_conditional_coverage(sets: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Coverage among the examples of each group (e.g. label x spurious attribute; NaN for an empty group).

    Marginal coverage of 1 - alpha says nothing about a group: a set can cover the majority groups always and a
    minority group far less. Split conformal promises coverage per group only when calibrated per group.

    Args:
        sets: (N, C) or (exits, N, C) bool.
        labels: (N,) labels.
        groups: (N,) group ids in [0, num_groups).
        num_groups: how many groups.

    Returns:
        (num_groups,) or (exits, num_groups) float64.
    """
    _check_sets("sets", sets)
    check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    num_groups = check_int("num_groups", num_groups, minimum=1)
    check_labels("groups", groups, sets.shape[-2], num_groups)
    labels, groups = labels.to(sets.device), groups.to(sets.device)
    hit = sets.gather(-1, labels.expand(sets.shape[:-1]).unsqueeze(-1)).squeeze(-1).double()  # (..., N)
    one_hot = torch.nn.functional.one_hot(groups, num_groups).double()  # (N, G)
    counts = one_hot.sum(dim=0)
    return (hit @ one_hot) / counts.where(counts > 0, torch.full_like(counts, math.nan))


def nestedness(sets: torch.Tensor) -> torch.Tensor:
    """Jazbec et al.'s N(t): mean over examples of |C_1 ∩ ... ∩ C_t| / |C_t|; 1 iff nested.

    Convention: an empty C_t counts as 1 (no label came back), so abstentions do not lower N(t).

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (exits,) float64.
    """
    _check_sets("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    size = sets.double().sum(dim=-1)
    kept = running_intersection(sets).double().sum(dim=-1)
    return torch.where(size > 0, kept / size.clamp(min=1), torch.ones_like(size)).mean(dim=-1)


def non_nested_examples(sets: torch.Tensor) -> torch.Tensor:
    """Which examples see a label come back: in C_t although an earlier exit had ruled it out.

    Args:
        sets: (exits, N, C) bool.

    Returns:
        (N,) bool.
    """
    _check_sets("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    ruled_out_before = ~running_intersection(sets)[:-1]
    return (sets[1:] & ruled_out_before).any(dim=-1).any(dim=0)


def _floats(values: torch.Tensor | np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in (values.cpu() if isinstance(values, torch.Tensor) else values))


@dataclass(frozen=True)
class SetMetrics:
    """Per-exit metrics of one family of sets (or intervals) on one evaluation split.

    Attributes:
        coverage: share of labels in C_t, per exit.
        size: mean |C_t| (or interval width) per exit; empty sets count 0.
        empty_rate: share of empty C_t per exit.
        nestedness: N(t) per exit (1 for an empty C_t).
        all_exit_coverage: share of labels in C_1, ..., C_t all, per exit (coverage of the running intersection).
        returning: share of examples for which a label (a value) ruled out at an earlier exit comes back.
        worst_class_coverage: the lowest per-class coverage at the last exit (NaN for regression).
    """

    coverage: tuple[float, ...]
    size: tuple[float, ...]
    empty_rate: tuple[float, ...]
    nestedness: tuple[float, ...]
    all_exit_coverage: tuple[float, ...]
    returning: float
    worst_class_coverage: float = math.nan


def set_metrics(sets: torch.Tensor, labels: torch.Tensor) -> SetMetrics:
    """Every metric of a family of classification sets.

    Args:
        sets: (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        SetMetrics.
    """
    per_class = class_conditional_coverage(sets[-1], labels)
    return SetMetrics(
        _floats(coverage(sets, labels)), _floats(mean_size(sets)), _floats(empty_rate(sets)), _floats(nestedness(sets)),
        _floats(coverage(running_intersection(sets), labels)), float(non_nested_examples(sets).double().mean()),
        float(per_class[~per_class.isnan()].min()),
    )


@dataclass(frozen=True)
class MethodSummary:
    """One method over many calibration/evaluation splits.

    Attributes:
        method: its name.
        splits: how many splits.
        coverage, coverage_std, size, size_std, empty_rate, nestedness: per exit, mean (and std) over splits.
        all_exit_coverage, all_exit_coverage_std: the share covered at every exit (last exit of the running
            intersection), mean and std over splits.
        share_below_target: share of splits whose all-exit coverage is below 1 - alpha.
        returning: mean share of examples with a label that comes back.
        worst_class_coverage: mean over splits of the worst class's coverage at the last exit.
    """

    method: str
    splits: int
    coverage: tuple[float, ...]
    coverage_std: tuple[float, ...]
    size: tuple[float, ...]
    size_std: tuple[float, ...]
    empty_rate: tuple[float, ...]
    nestedness: tuple[float, ...]
    all_exit_coverage: float
    all_exit_coverage_std: float
    share_below_target: float
    returning: float
    worst_class_coverage: float


def summarize_splits(method: str, metrics: Sequence[SetMetrics], alpha: float) -> MethodSummary:
    """Means and standard deviations over splits of one method's SetMetrics.

    Args:
        method: the method's name.
        metrics: one SetMetrics per split.
        alpha: the target miscoverage (share_below_target counts splits below 1 - alpha).

    Returns:
        MethodSummary (std is 0 for one split).
    """
    alpha = check_alpha(alpha)
    if not metrics:
        raise ValueError("metrics is empty: nothing to summarise")

    def stat(field: str) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray([getattr(m, field) for m in metrics], dtype=float)
        return values.mean(axis=0), (values.std(axis=0, ddof=1) if len(metrics) > 1 else np.zeros_like(values[0]))

    (cov, cov_std), (size, size_std) = stat("coverage"), stat("size")
    all_exit = np.asarray([m.all_exit_coverage[-1] for m in metrics])
    return MethodSummary(
        method, len(metrics), _floats(cov), _floats(cov_std), _floats(size), _floats(size_std), _floats(stat("empty_rate")[0]),
        _floats(stat("nestedness")[0]), float(all_exit.mean()), float(all_exit.std(ddof=1)) if len(metrics) > 1 else 0.0,
        float((all_exit < 1 - alpha).mean()), float(stat("returning")[0]), float(stat("worst_class_coverage")[0]),
    )


# ----------------------------------------------------------------------------------------------------------------
# Regression: Bayesian linear regression heads and the anytime-valid interval (Jazbec et al., Algorithm 1).


@dataclass
class BayesianLinearRegression:
    """A Bayesian linear regression head y = w^T [h, 1] + noise on an exit's features h.

    Prior w ~ N(0, prior_std^2 I), noise N(0, noise_std^2); both variances by type-II maximum likelihood (see
    fit_bayesian_linear_regression). The posterior is N(mean, covariance).

    Attributes:
        mean: (D + 1,) posterior mean (the last entry is the bias).
        covariance: (D + 1, D + 1) posterior covariance.
        noise_std: the likelihood's standard deviation.
        prior_std: the prior's standard deviation.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    noise_std: float
    prior_std: float

    @staticmethod
    def design(features: torch.Tensor) -> torch.Tensor:
        """[features, 1] in float64: the bias is a weight on a constant feature."""
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            raise ValueError(f"features must have shape (N, D), got {getattr(features, 'shape', type(features).__name__)}")
        features = features.double()
        return torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64, device=features.device)], dim=1)

    def predictive(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior predictive N(mean, epistemic + noise_std^2) at each row of features.

        Args:
            features: (N, D).

        Returns:
            mean (N,) and epistemic variance h^T Sigma h (N,), float64; add noise_std**2 for the predictive variance.
        """
        x = self.design(features)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"features must have {len(self.mean) - 1} columns, got {x.shape[1] - 1}")
        mean, cov = self.mean.to(x.device), self.covariance.to(x.device)
        return x @ mean, ((x @ cov) * x).sum(dim=1)


def log_marginal_likelihood(features: torch.Tensor, targets: torch.Tensor, prior_precision: float, noise_precision: float) -> float:
    """log p(y | X, alpha, beta) of Bayesian linear regression (Bishop 2006, eq. 3.86), bias included.

    Args:
        features: (N, D).
        targets: (N,).
        prior_precision: alpha = 1 / prior_std^2.
        noise_precision: beta = 1 / noise_std^2.

    Returns:
        The log evidence.
    """
    x, y = BayesianLinearRegression.design(features), targets.double().to(features.device)
    n, d = x.shape
    a = prior_precision * torch.eye(d, dtype=torch.float64, device=x.device) + noise_precision * x.T @ x
    m = noise_precision * torch.linalg.solve(a, x.T @ y)
    fit = noise_precision / 2 * ((y - x @ m) ** 2).sum() + prior_precision / 2 * (m @ m)
    return float(
        d / 2 * math.log(prior_precision) + n / 2 * math.log(noise_precision) - fit - torch.linalg.slogdet(a).logabsdet / 2 - n / 2 * math.log(2 * math.pi)
    )


def fit_bayesian_linear_regression(
    features: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 1000, rtol: float = 1e-6
) -> BayesianLinearRegression:
    """Fits a Bayesian linear regression head with type-II maximum likelihood (evidence maximisation).

    MacKay's fixed point (Bishop 2006, sec. 3.5.2): with eigenvalues lambda_i of beta X^T X,
    gamma = sum_i lambda_i / (lambda_i + alpha), alpha = gamma / |m|^2, 1 / beta = |y - X m|^2 / (N - gamma),
    iterated until alpha and beta stop changing. One eigendecomposition of X^T X makes each iteration cheap.

    Args:
        features: (N, D) exit features of the training set (computed with the network in eval mode).
        targets: (N,) regression targets.
        max_iter: iteration cap.
        rtol: relative change at which both precisions count as converged.

    Returns:
        The fitted head.
    """
    x = BayesianLinearRegression.design(features)
    if not isinstance(targets, torch.Tensor) or targets.shape != (len(x),):
        raise ValueError(f"targets must have shape ({len(x)},), got {getattr(targets, 'shape', type(targets).__name__)}")
    y = targets.double().to(x.device)
    n, d = x.shape
    eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x)
    eigenvalues = eigenvalues.clamp(min=0)
    xty_rotated = eigenvectors.T @ (x.T @ y)
    alpha, beta = 1.0, 1.0 / max(float(y.var()), 1e-12)
    for _ in range(max_iter):
        m = eigenvectors @ (beta * xty_rotated / (alpha + beta * eigenvalues))
        gamma = float((beta * eigenvalues / (alpha + beta * eigenvalues)).sum())
        new_alpha = gamma / max(float(m @ m), 1e-300)
        new_beta = (n - gamma) / max(float(((y - x @ m) ** 2).sum()), 1e-300)
        done = abs(new_alpha - alpha) <= rtol * alpha and abs(new_beta - beta) <= rtol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    covariance = eigenvectors @ torch.diag(1.0 / (alpha + beta * eigenvalues)) @ eigenvectors.T
    mean = beta * covariance @ (x.T @ y)
    return BayesianLinearRegression(mean=mean, covariance=covariance, noise_std=beta**-0.5, prior_std=alpha**-0.5)


def _check_exit_matrix(name: str, value: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or (shape is not None and tuple(value.shape) != shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape {shape or '(exits, N)'}, got {got}")


def avcs_quadratic_intervals(
    pred_mean: torch.Tensor,
    pred_var: torch.Tensor,
    sampled_mean: torch.Tensor,
    noise_var: torch.Tensor | Sequence[float],
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sets {y : log R_t(y) <= log(1 / alpha)} at each exit, before any intersection.

    log R_t(y) = sum_{l <= t} [log N(y; pred_mean_l, pred_var_l) - log N(y; sampled_mean_l, noise_var_l)] is the
    quadratic a_t y^2 + b_t y + c_t with a_t = sum 1/2 (1/noise_var - 1/pred_var) > 0 (the predictive variance
    exceeds the noise variance), so each set is an interval, or empty when the discriminant is negative: the
    sampled predictions disagree with the posterior so much that no y is plausible (out of distribution).

    Args:
        pred_mean: (exits, N) posterior predictive means.
        pred_var: (exits, N) posterior predictive variances (epistemic + noise).
        sampled_mean: (exits, N) predictions h^T w_hat of weights drawn from each exit's posterior.
        noise_var: (exits,) each head's noise variance.
        alpha: miscoverage level in (0, 1).

    Returns:
        lower, upper: (exits, N) float64; empty intervals are (+inf, -inf).
    """
    alpha = check_alpha(alpha)
    _check_exit_matrix("pred_mean", pred_mean)
    for name, value in (("pred_var", pred_var), ("sampled_mean", sampled_mean)):
        _check_exit_matrix(name, value, tuple(pred_mean.shape))
    mu, v, mu_s = pred_mean.double(), pred_var.double(), sampled_mean.double()
    s2 = _per_exit("noise_var", noise_var, mu.shape[0], mu)[:, None]
    if not bool((v > s2).all()):
        raise ValueError("pred_var must exceed noise_var everywhere (predictive = epistemic + noise variance)")
    a = (0.5 * (1 / s2 - 1 / v)).cumsum(0)
    b = (mu / v - mu_s / s2).cumsum(0)
    c = (mu_s**2 / (2 * s2) - mu**2 / (2 * v) + 0.5 * s2.log() - 0.5 * v.log()).cumsum(0) + math.log(alpha)
    discriminant = b**2 - 4 * a * c
    root = discriminant.clamp(min=0).sqrt()
    empty = discriminant < 0
    lower = torch.where(empty, torch.full_like(a, math.inf), (-b - root) / (2 * a))
    upper = torch.where(empty, torch.full_like(a, -math.inf), (-b + root) / (2 * a))
    return lower, upper


def interval_running_intersection(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running intersection of intervals over exits: the largest lower and smallest upper end so far.

    Once empty (lower > upper), an interval stays empty.

    Args:
        lower, upper: (exits, N).

    Returns:
        lower, upper: (exits, N).
    """
    _check_exit_matrix("lower", lower)
    _check_exit_matrix("upper", upper, tuple(lower.shape))
    return lower.cummax(dim=0).values, upper.cummin(dim=0).values


def avcs_intervals(
    pred_mean: torch.Tensor,
    epistemic_var: torch.Tensor,
    noise_var: torch.Tensor | Sequence[float],
    alpha: float,
    *,
    generator: torch.Generator,
    num_parallel: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anytime-valid regression intervals (Jazbec et al. 2024, Algorithm 1), nested across exits.

    Per exit and example, one weight vector w_hat is drawn from the head's posterior; only its prediction
    h^T w_hat matters, and that is N(pred_mean, epistemic_var), so it is drawn directly. Then the quadratic intervals
    (avcs_quadratic_intervals), their running intersection over exits, and the intersection over parallel copies.

    Args:
        pred_mean: (exits, N) posterior predictive means (BayesianLinearRegression.predictive).
        epistemic_var: (exits, N) h^T Sigma h.
        noise_var: (exits,) noise variances of the heads.
        alpha: miscoverage level in (0, 1).
        generator: the source of the posterior draws.
        num_parallel: independent copies to intersect (>= 1).

    Returns:
        lower, upper: (exits, N) float64; empty intervals have lower > upper.
    """
    _check_exit_matrix("pred_mean", pred_mean)
    _check_exit_matrix("epistemic_var", epistemic_var, tuple(pred_mean.shape))
    num_parallel = check_int("num_parallel", num_parallel, minimum=1)
    mu, ev = pred_mean.double(), epistemic_var.double().clamp(min=0)
    s2 = _per_exit("noise_var", noise_var, mu.shape[0], mu)
    lower = torch.full_like(mu, -math.inf)
    upper = torch.full_like(mu, math.inf)
    for _ in range(num_parallel):
        noise = torch.randn(mu.shape, generator=generator, dtype=torch.float64).to(mu.device)
        lo, up = avcs_quadratic_intervals(mu, ev + s2[:, None], mu + ev.sqrt() * noise, s2, alpha)
        lo, up = interval_running_intersection(lo, up)
        lower, upper = torch.maximum(lower, lo), torch.minimum(upper, up)
    return lower, upper


def credible_intervals(pred_mean: torch.Tensor, pred_var: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-exit Bayesian credible intervals mean +- z_{1 - alpha/2} * std: the regression baseline (not nested).

    Args:
        pred_mean: (exits, N) predictive means.
        pred_var: (exits, N) predictive variances.
        alpha: miscoverage level in (0, 1).

    Returns:
        lower, upper: (exits, N) float64.
    """
    alpha = check_alpha(alpha)
    _check_exit_matrix("pred_mean", pred_mean)
    _check_exit_matrix("pred_var", pred_var, tuple(pred_mean.shape))
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - alpha / 2)))
    half = z * pred_var.double().sqrt()
    return pred_mean.double() - half, pred_mean.double() + half


def interval_metrics(lower: torch.Tensor, upper: torch.Tensor, targets: torch.Tensor) -> SetMetrics:
    """Coverage, mean width (empty = 0), empty rate, nestedness N(t), all-exit coverage and returning share of
    intervals.

    N(t) is the mean over examples of width(I_1 ∩ ... ∩ I_t) / width(I_t), 1 when I_t is empty. An example
    "returns" when some I_t holds values outside I_1 ∩ ... ∩ I_{t-1}.

    Args:
        lower, upper: (exits, N).
        targets: (N,) true values.

    Returns:
        SetMetrics ("size" is the mean width; worst_class_coverage is NaN).
    """
    _check_exit_matrix("lower", lower)
    _check_exit_matrix("upper", upper, tuple(lower.shape))
    check_tensor("targets", targets, dims=(1,), what=f"({lower.shape[1]},)")
    if targets.shape[0] != lower.shape[1]:
        raise ValueError(f"targets must have shape ({lower.shape[1]},), got {tuple(targets.shape)}")
    y = targets.double().to(lower.device)
    lower, upper = lower.double(), upper.double()
    empty = lower > upper
    width = torch.where(empty, torch.zeros_like(lower), upper - lower)
    run_lower, run_upper = interval_running_intersection(lower, upper)
    run_width = (run_upper - run_lower).clamp(min=0)
    nested = torch.where(width > 0, run_width / width.where(width > 0, torch.ones_like(width)), torch.ones_like(width))
    before_empty = run_lower[:-1] > run_upper[:-1]
    grows = ~empty[1:] & (before_empty | (lower[1:] < run_lower[:-1]) | (upper[1:] > run_upper[:-1]))
    return SetMetrics(
        _floats(((lower <= y) & (y <= upper)).double().mean(dim=1)), _floats(width.mean(dim=1)), _floats(empty.double().mean(dim=1)),
        _floats(nested.mean(dim=1)), _floats(((run_lower <= y) & (y <= run_upper)).double().mean(dim=1)),
        float(grows.any(dim=0).double().mean()),
    )


@dataclass(frozen=True)
class ExitPredictive:
    """Bayesian linear regression heads' predictions at every exit.

    Attributes:
        mean: (exits, N) posterior predictive means.
        epistemic_var: (exits, N) h^T Sigma h.
        noise_var: (exits,) each head's noise variance.
        prior_std: (exits,) each head's prior standard deviation.
    """

    mean: torch.Tensor
    epistemic_var: torch.Tensor
    noise_var: torch.Tensor
    prior_std: torch.Tensor


def bayesian_exit_predictive(train_features: Sequence[torch.Tensor], train_targets: torch.Tensor,
                             features: Sequence[torch.Tensor]) -> ExitPredictive:
    """Fits a Bayesian linear regression head on every exit's training features and predicts at `features`.

    Args:
        train_features: one (N_train, D_t) tensor per exit (kd.exits.exit_feature_vectors in eval mode).
        train_targets: (N_train,) targets.
        features: one (N, D_t) tensor per exit, where to predict.

    Returns:
        ExitPredictive (float64, CPU).
    """
    if len(train_features) != len(features) or not features:
        raise ValueError(f"train_features and features must hold one tensor per exit each, got {len(train_features)} and {len(features)}")
    heads = [fit_bayesian_linear_regression(h.cpu(), train_targets.cpu()) for h in train_features]
    means, epistemic = zip(*(head.predictive(h.cpu()) for head, h in zip(heads, features)))
    return ExitPredictive(torch.stack(means), torch.stack(epistemic), torch.tensor([h.noise_std**2 for h in heads], dtype=torch.float64),
                          torch.tensor([h.prior_std for h in heads], dtype=torch.float64))


def regression_intervals(predictive: ExitPredictive, alpha: float, *, seed: int = 0, num_parallel: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-exit credible intervals ("Bayes"), their running intersection ("Bayes ∩") and AVCS intervals ("AVCS").

    Args:
        predictive: bayesian_exit_predictive(...).
        alpha: miscoverage level.
        seed: seed of AVCS's posterior draws.
        num_parallel: AVCS's parallel copies.

    Returns:
        method -> (lower, upper), each (exits, N).
    """
    pred_var = predictive.epistemic_var + predictive.noise_var[:, None]
    bayes = credible_intervals(predictive.mean, pred_var, alpha)
    avcs = avcs_intervals(predictive.mean, predictive.epistemic_var, predictive.noise_var, alpha,
                          generator=torch.Generator().manual_seed(seed), num_parallel=num_parallel)
    return {"Bayes": bayes, "Bayes ∩": interval_running_intersection(*bayes), "AVCS": avcs}


def empty_share_by_region(grid_x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, train_x: torch.Tensor) -> tuple[float, float]:
    """The last exit's empty rate on grid points inside and outside the range of the training inputs.

    Args:
        grid_x: (G,) grid of inputs.
        lower, upper: (exits, G) intervals on the grid.
        train_x: (N, 1) training inputs.

    Returns:
        (inside, outside) shares of empty intervals (NaN where the region has no grid point).
    """
    inside = (grid_x >= train_x.min()) & (grid_x <= train_x.max())
    empty = (lower[-1] > upper[-1]).double()

    def share(mask: torch.Tensor) -> float:
        return float(empty[mask].mean()) if bool(mask.any()) else math.nan

    return share(inside), share(~inside)


def wiggle_function(x: torch.Tensor) -> torch.Tensor:
    """The noiseless "wiggle" curve: sin(pi x) + 0.2 cos(4 pi x) - 0.3 x."""
    return torch.sin(math.pi * x) + 0.2 * torch.cos(4 * math.pi * x) - 0.3 * x


def wiggle_data(n: int = 900, *, noise_std: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Jazbec et al.'s synthetic regression data: x ~ N(5, 2.5^2), y = wiggle_function(x) + N(0, noise_std^2).

    Args:
        n: number of points.
        noise_std: standard deviation of the noise.
        seed: seed of the draws.

    Returns:
        x (n, 1) and y (n,), float32, unnormalised.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.normal(5.0, 2.5, size=n), dtype=torch.float32)
    y = wiggle_function(x) + noise_std * torch.as_tensor(rng.normal(size=n), dtype=torch.float32)
    return x[:, None], y


@dataclass(frozen=True)
class WiggleSplits:
    """Wiggle data split 80/20 and standardised by the training split's mean and std (x: (N, 1), y: (N,))."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    x_mean: float
    x_std: float
    y_mean: float
    y_std: float


def wiggle_splits(n: int, *, noise_std: float = 0.25, seed: int = 0) -> WiggleSplits:
    """Draws the wiggle data, holds out a random 20% as the test split and standardises x and y by the training split.

    Args:
        n: number of points.
        noise_std: standard deviation of the noise.
        seed: seed of the data and of the split.

    Returns:
        WiggleSplits (CPU tensors).
    """
    x, y = wiggle_data(n, noise_std=noise_std, seed=seed)
    test, train = calibration_split(n, 0.2, seed=seed)
    xm, xs, ym, ys = float(x[train].mean()), float(x[train].std()), float(y[train].mean()), float(y[train].std())
    return WiggleSplits((x[train] - xm) / xs, (y[train] - ym) / ys, (x[test] - xm) / xs, (y[test] - ym) / ys, xm, xs, ym, ys)
