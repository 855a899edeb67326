"""Prediction sets for early-exit networks: split conformal per exit, running intersections, anytime-valid sets.

A set is a boolean tensor: (N, C) for one predictor, (exits, N, C) for a multi-exit network; entry [t, i, y] says
whether label y is in example i's set at exit t. Regression intervals are two tensors `lower`, `upper` of shape
(exits, N); an empty interval has lower > upper (we use +inf and -inf) and means "abstain / out of distribution".

Three ways to make a set at every exit (Jazbec et al., UAI 2024, "Early-Exit Neural Networks with Nested
Prediction Sets"):
- split conformal at each exit (LAC, APS, RAPS scores): each C_t covers the label with probability >= 1 - alpha
  on its own, but nothing ties C_t to C_{t-1}: a label ruled out early can come back later (not nested);
- their running intersection C_1 ∩ ... ∩ C_t: nested, but each C_t's guarantee was marginal over one exit, so the
  intersection loses coverage as exits accumulate;
- anytime-valid confidence sequences (AVCS): P(for all t: y in C_t) >= 1 - alpha under the model, so the running
  intersection keeps the guarantee. Classification uses Dirichlet draws from thresholded logits (Algorithm 2);
  regression uses Bayesian linear regression heads and a quadratic in y (Algorithm 1).

Unlike the paper's official code, the classification AVCS here takes the running intersection (the paper's
algorithm has it; the code skips it), and its thresholds are fitted on a calibration split only, never on the data
the sets are evaluated on.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    # scores and split conformal
    "lac_scores",
    "aps_scores",
    "raps_scores",
    "label_scores",
    "conformal_threshold",
    "fit_conformal_thresholds",
    "conformal_sets",
    "prediction_sets",
    "running_intersection",
    # anytime-valid sets, classification
    "avcs_sets",
    "fit_avcs_thresholds",
    # metrics
    "coverage",
    "mean_size",
    "empty_rate",
    "class_conditional_coverage",
    "nestedness",
    "non_nested_examples",
    "set_metrics",
    # regression
    "BayesianLinearRegression",
    "fit_bayesian_linear_regression",
    "log_marginal_likelihood",
    "avcs_quadratic_intervals",
    "avcs_intervals",
    "credible_intervals",
    "interval_running_intersection",
    "interval_metrics",
    "wiggle_function",
    "wiggle_data",
]

SCORES = ("lac", "aps", "raps")


# ----------------------------------------------------------------------------------------------------------------
# Input checks: every public function names the argument it refuses.


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_probs(name: str, probs: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() not in (2, 3) or not probs.is_floating_point():
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"{name} must be a float tensor of shape (N, C) or (exits, N, C), got {shape}")


def _check_labels(name: str, labels: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must have shape ({n},), got {shape}")
    if num_classes is not None:
        if labels.is_floating_point():
            raise ValueError(f"{name} must hold integer class indices, got {labels.dtype}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]")


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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RAPS (Angelopoulos et al. 2021) for every label: the probability mass ranked above y, part of y's own mass,
    and a penalty lam * max(0, rank(y) - k_reg) that keeps long tails of unlikely labels out of the set.

    score(x, y, u) = sum_{j ranked before y} p_j + u * p_y + lam * max(0, o(y) - k_reg), with o(y) the 1-based rank.
    Randomized: u ~ Uniform(0, 1), one draw per example (and per exit), so sets can be empty. Not randomized: u = 1,
    never empty for a finite threshold >= the top score, but larger. APS is RAPS with lam = 0.

    Args:
        probs: (..., N, C) class probabilities.
        lam: penalty per rank beyond k_reg (>= 0).
        k_reg: ranks up to k_reg are not penalised (>= 0).
        randomized: draw u per example; False uses u = 1.
        generator: the source of u (needed for reproducible randomized scores).

    Returns:
        (..., N, C) scores; for a fixed example the score grows with the label's rank, so sets are top-k prefixes.
    """
    _check_probs("probs", probs)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if k_reg < 0:
        raise ValueError(f"k_reg must be >= 0, got {k_reg}")
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    ranks = order.argsort(dim=-1)  # 0-based rank of each label
    mass_through = sorted_probs.cumsum(dim=-1).gather(-1, ranks)  # mass of labels ranked before y, plus p_y
    if randomized:
        u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=probs.dtype, device="cpu").to(probs.device)
    else:
        u = torch.ones((), dtype=probs.dtype, device=probs.device)
    penalty = lam * (ranks + 1 - k_reg).clamp(min=0).to(probs.dtype)
    return mass_through - (1.0 - u) * probs + penalty


def aps_scores(probs: torch.Tensor, *, randomized: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """APS (Romano et al. 2020): RAPS without the rank penalty. See raps_scores.

    Args:
        probs: (..., N, C) class probabilities.
        randomized: draw u per example; False uses u = 1.
        generator: the source of u.

    Returns:
        (..., N, C) scores.
    """
    return raps_scores(probs, lam=0.0, k_reg=0, randomized=randomized, generator=generator)


def label_scores(
    logits: torch.Tensor,
    score: str = "raps",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The conformal score of every label from logits (softmax first), by score name.

    Args:
        logits: (N, C) or (exits, N, C).
        score: "lac", "aps" or "raps".
        lam, k_reg: RAPS's penalty (ignored by LAC and APS).
        randomized: APS/RAPS randomisation (ignored by LAC).
        generator: the source of APS/RAPS's uniform draws.

    Returns:
        Scores of the same shape as logits.
    """
    _check_probs("logits", logits)
    probs = torch.softmax(logits.double(), dim=-1)
    if score == "lac":
        return lac_scores(probs)
    if score == "aps":
        return aps_scores(probs, randomized=randomized, generator=generator)
    if score == "raps":
        return raps_scores(probs, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator)
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
    _check_alpha(alpha)
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2) or scores.shape[-1] == 0:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a non-empty tensor of shape (n,) or (exits, n), got {shape}")
    n = scores.shape[-1]
    # The small tolerance keeps e.g. (19 + 1) * 0.95 = 19.000000000000004 at rank 19 rather than 20.
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n:
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64, device=scores.device)
    return scores.double().sort(dim=-1).values[..., rank - 1]


def fit_conformal_thresholds(
    calib_logits: torch.Tensor,
    calib_labels: torch.Tensor,
    alpha: float,
    *,
    score: str = "raps",
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split-conformal thresholds from a calibration split, one per exit.

    Args:
        calib_logits: (N, C) or (exits, N, C) logits of the calibration examples.
        calib_labels: (N,) their labels.
        alpha: miscoverage level in (0, 1).
        score: "lac", "aps" or "raps".
        lam, k_reg, randomized: see raps_scores.
        generator: the source of the calibration examples' uniform draws (APS/RAPS).

    Returns:
        A scalar (for (N, C) logits) or (exits,) float64 thresholds.
    """
    _check_alpha(alpha)
    _check_probs("calib_logits", calib_logits)
    _check_labels("calib_labels", calib_labels, calib_logits.shape[-2], calib_logits.shape[-1])
    scores = label_scores(calib_logits, score, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator)
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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split-conformal sets {y : score(x, y) <= threshold} at every exit.

    Args:
        logits: (N, C) or (exits, N, C).
        thresholds: a number, or one per exit (from fit_conformal_thresholds).
        score, lam, k_reg, randomized: must match the ones the thresholds were fitted with.
        generator: the source of the test examples' uniform draws (APS/RAPS).

    Returns:
        bool sets of the same shape as logits.
    """
    _check_probs("logits", logits)
    scores = label_scores(logits, score, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator)
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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Split conformal at each exit in one call: thresholds from the calibration split, sets for `logits`.

    Args:
        calib_logits: (exits, n, C) (or (n, C)) logits of the calibration split.
        calib_labels: (n,) its labels.
        logits: (exits, N, C) (or (N, C)) logits of the examples to make sets for.
        alpha: miscoverage level in (0, 1).
        score, lam, k_reg, randomized: see label_scores.
        generator: the source of APS/RAPS's uniform draws (calibration first, then test).

    Returns:
        bool sets of the same shape as logits.
    """
    _check_probs("logits", logits)
    _check_probs("calib_logits", calib_logits)
    if calib_logits.dim() != logits.dim() or calib_logits.shape[-1] != logits.shape[-1] or calib_logits.shape[:-2] != logits.shape[:-2]:
        raise ValueError(f"calib_logits {tuple(calib_logits.shape)} and logits {tuple(logits.shape)} must agree in exits and classes")
    options = dict(score=score, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator)
    thresholds = fit_conformal_thresholds(calib_logits, calib_labels, alpha, **options)
    return conformal_sets(logits, thresholds, **options)


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


def _avcs_log_ratios(logits: torch.Tensor, thresholds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # log R_t(y) for one parallel copy: per exit, concentrations a = logits where logits >= tau, one Dirichlet draw
    # pi ~ Dir(a on its support); ratio (a_y / sum a) / pi_y, +inf off the support; log R_t = cumulative sum.
    concentration = torch.where(logits >= thresholds[:, None, None], logits, torch.zeros_like(logits))
    support = concentration > 0
    gamma = _standard_gamma(torch.where(support, concentration, torch.ones_like(concentration)), generator)
    gamma = torch.where(support, gamma, torch.zeros_like(gamma))
    # Dirichlet = normalised Gammas; the normaliser is over the support only. An empty support (every logit below
    # tau) gives an all-infinite row: an empty set, i.e. abstain.
    log_mean = concentration.log() - concentration.sum(-1, keepdim=True).log()
    log_draw = gamma.log() - gamma.sum(-1, keepdim=True).log()
    log_ratio = torch.where(support & (gamma > 0), log_mean - log_draw, torch.full_like(logits, math.inf))
    return log_ratio.cumsum(dim=0)


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

    Args:
        exit_logits: (exits, N, C) logits.
        thresholds: tau_t > 0 per exit (fit them with fit_avcs_thresholds on a calibration split).
        alpha: miscoverage level in (0, 1).
        generator: the source of the Dirichlet draws (keyword-only and required: sets are random).
        num_parallel: independent copies whose sets are intersected (>= 1).

    Returns:
        (exits, N, C) bool sets, nested across exits.
    """
    _check_alpha(alpha)
    _check_probs("exit_logits", exit_logits)
    if exit_logits.dim() != 3:
        raise ValueError(f"exit_logits must have shape (exits, N, C), got {tuple(exit_logits.shape)}")
    if not isinstance(num_parallel, int) or num_parallel < 1:
        raise ValueError(f"num_parallel must be an int >= 1, got {num_parallel!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    logits = exit_logits.double()
    taus = _per_exit("thresholds", thresholds, logits.shape[0], logits)
    if not bool((taus > 0).all()):
        raise ValueError(f"thresholds must all be > 0 (they are Dirichlet concentrations' floor), got {taus.tolist()}")
    sets = torch.ones_like(logits, dtype=torch.bool)
    for _ in range(num_parallel):
        sets &= running_intersection(_avcs_log_ratios(logits, taus, generator) <= math.log(1.0 / alpha))
    return sets


def fit_avcs_thresholds(
    calib_logits: torch.Tensor,
    calib_labels: torch.Tensor,
    alpha: float,
    *,
    start: float = 1.0,
    step: float = 0.5,
    num_parallel: int = 1,
    seed: int = 0,
    draws: int = 1,
) -> torch.Tensor:
    """Chooses AVCS's thresholds tau_t on a calibration split: as large as possible while >= 1 - alpha of the
    calibration examples keep their label in the (running-intersection) set at every exit.

    Exit by exit (first to last), tau_t grows from `start` in steps of `step`, and stops before the first value at
    which the calibration coverage at all exits would fall below 1 - alpha. Larger thresholds rule out more labels
    (smaller sets). The Dirichlet draws use a generator seeded with `seed` for every candidate (common random
    numbers), so candidates are compared on equal terms. Only the calibration split is passed in; the thresholds
    cannot depend on the evaluation data.

    Args:
        calib_logits: (exits, n, C) logits of the calibration split.
        calib_labels: (n,) its labels.
        alpha: miscoverage level in (0, 1).
        start: the smallest threshold (the paper uses tau >= 1); must be > 0.
        step: the grid spacing (> 0; 0.5 as in the paper's code).
        num_parallel: as in avcs_sets.
        seed: seed of the calibration draws.
        draws: independent Dirichlet draws per candidate whose coverages are averaged. With 1 (the paper's
            procedure) the search can tune the thresholds to the particulars of one draw, and coverage on fresh
            draws comes out lower; a few draws make the calibration coverage an estimate of the expected one.

    Returns:
        (exits,) float64 thresholds. If even `start` everywhere leaves coverage below 1 - alpha, returns `start`
        everywhere and warns.
    """
    _check_alpha(alpha)
    _check_probs("calib_logits", calib_logits)
    if calib_logits.dim() != 3:
        raise ValueError(f"calib_logits must have shape (exits, n, C), got {tuple(calib_logits.shape)}")
    _check_labels("calib_labels", calib_labels, calib_logits.shape[1], calib_logits.shape[2])
    if not start > 0:
        raise ValueError(f"start must be > 0, got {start}")
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an int >= 1, got {draws!r}")
    labels = calib_labels.to(calib_logits.device)
    exits = calib_logits.shape[0]

    def covered_everywhere(taus: torch.Tensor) -> float:
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(draws):
            sets = avcs_sets(calib_logits, taus, alpha, generator=generator, num_parallel=num_parallel)
            total += float(coverage(sets[-1], labels))  # nested sets: the last exit's coverage is the all-exit one
        return total / draws

    taus = torch.full((exits,), float(start), dtype=torch.float64)
    if covered_everywhere(taus) < 1 - alpha:
        warnings.warn(f"fit_avcs_thresholds: calibration coverage is below 1 - alpha = {1 - alpha} even at tau = {start}; keeping it")
        return taus
    for t in range(exits):
        highest = float(calib_logits[t].max())  # above this every label is ruled out: no point searching further
        while taus[t] + step <= highest:
            taus[t] += step
            if covered_everywhere(taus) < 1 - alpha:
                taus[t] -= step
                break
    return taus


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
    _check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    index = labels.to(sets.device).expand(sets.shape[:-1]).unsqueeze(-1)
    return sets.gather(-1, index).squeeze(-1).double().mean(dim=-1)


def mean_size(sets: torch.Tensor) -> torch.Tensor:
    """Mean number of labels per set (empty sets count 0; see empty_rate).

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
    _check_labels("labels", labels, sets.shape[-2], sets.shape[-1])
    labels = labels.to(sets.device)
    hit = sets.gather(-1, labels.expand(sets.shape[:-1]).unsqueeze(-1)).squeeze(-1).double()  # (..., N)
    one_hot = torch.nn.functional.one_hot(labels, sets.shape[-1]).double()  # (N, C)
    counts = one_hot.sum(dim=0)
    return (hit @ one_hot) / counts.where(counts > 0, torch.full_like(counts, math.nan))


def nestedness(sets: torch.Tensor) -> torch.Tensor:
    """Jazbec et al.'s N(t): mean over examples of |C_1 ∩ ... ∩ C_t| / |C_t| (1 for an empty C_t); 1 iff nested.

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


def set_metrics(sets: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-exit metric of a family of sets.

    Args:
        sets: (exits, N, C) bool.
        labels: (N,) labels.

    Returns:
        {"coverage", "size", "empty_rate", "nestedness", "all_exit_coverage"}: (exits,) tensors, where
        all_exit_coverage[t] is the fraction of examples covered at every exit up to t.
    """
    return {
        "coverage": coverage(sets, labels),
        "size": mean_size(sets),
        "empty_rate": empty_rate(sets),
        "nestedness": nestedness(sets),
        "all_exit_coverage": coverage(running_intersection(sets), labels),
    }


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
    _check_alpha(alpha)
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
    if not isinstance(num_parallel, int) or num_parallel < 1:
        raise ValueError(f"num_parallel must be an int >= 1, got {num_parallel!r}")
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
    _check_alpha(alpha)
    _check_exit_matrix("pred_mean", pred_mean)
    _check_exit_matrix("pred_var", pred_var, tuple(pred_mean.shape))
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - alpha / 2)))
    half = z * pred_var.double().sqrt()
    return pred_mean.double() - half, pred_mean.double() + half


def interval_metrics(lower: torch.Tensor, upper: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Coverage, mean width (empty = 0), empty rate, nestedness N(t) and all-exit coverage of intervals.

    N(t) is the mean over examples of width(I_1 ∩ ... ∩ I_t) / width(I_t), 1 when I_t is empty.

    Args:
        lower, upper: (exits, N).
        targets: (N,) true values.

    Returns:
        {"coverage", "size", "empty_rate", "nestedness", "all_exit_coverage"}: (exits,) float64 tensors ("size" is
        the mean width).
    """
    _check_exit_matrix("lower", lower)
    _check_exit_matrix("upper", upper, tuple(lower.shape))
    _check_labels("targets", targets, lower.shape[1])
    y = targets.double().to(lower.device)
    lower, upper = lower.double(), upper.double()
    empty = lower > upper
    width = torch.where(empty, torch.zeros_like(lower), upper - lower)
    run_lower, run_upper = interval_running_intersection(lower, upper)
    run_width = (run_upper - run_lower).clamp(min=0)
    nested = torch.where(width > 0, run_width / width.where(width > 0, torch.ones_like(width)), torch.ones_like(width))
    return {
        "coverage": ((lower <= y) & (y <= upper)).double().mean(dim=1),
        "size": width.mean(dim=1),
        "empty_rate": empty.double().mean(dim=1),
        "nestedness": nested.mean(dim=1),
        "all_exit_coverage": ((run_lower <= y) & (y <= run_upper)).double().mean(dim=1),
    }


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
