"""Split conformal prediction per exit: the LAC, APS and RAPS scores, the conformal threshold, the sets, Bayes
credible sets (the uncalibrated baseline) and running intersections over exits.

Each per-exit set C_t covers the label with probability >= 1 - alpha on its own, but nothing ties C_t to C_{t-1}:
a label ruled out early can come back later (not nested). Their running intersections C_1 ∩ ... ∩ C_t are nested,
but each C_t's guarantee was marginal over one exit, so the intersection loses coverage as exits accumulate.
"""
from __future__ import annotations

import math

import torch

from kdteach.checks import check_alpha, check_finite, check_int, check_labels, check_not_empty, check_number, check_tensor
from kdteach.sets.inputs import check_probs, check_sets, per_exit

__all__ = [
    "SCORES",
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
]

SCORES = ("lac", "aps", "raps")


# ----------------------------------------------------------------------------------------------------------------
# Conformal scores: score(x, y) for every label; small means "y looks right". A set is {y : score <= threshold}.


def lac_scores(probs: torch.Tensor) -> torch.Tensor:
    """LAC (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p_y for every label y.

    Args:
        probs: (..., N, C) class probabilities.

    Returns:
        (..., N, C) scores.
    """
    check_probs("probs", probs)
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
    check_probs("probs", probs)
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
    check_probs("logits", logits)
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
    check_probs("calib_logits", calib_logits)
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
    check_probs("logits", logits)
    scores = label_scores(logits, score, lam=lam, k_reg=k_reg, randomized=randomized, shared_u=shared_u, generator=generator)
    if logits.dim() == 2:
        t = torch.as_tensor(thresholds, dtype=torch.float64, device=scores.device)
        if t.dim() != 0:
            raise ValueError(f"thresholds must be a single number for (N, C) logits, got shape {tuple(t.shape)}")
        return scores <= t
    t = per_exit("thresholds", thresholds, logits.shape[0], scores)
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
    check_probs("logits", logits)
    check_probs("calib_logits", calib_logits)
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
    check_probs("logits", logits)
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
    check_sets("sets", sets)
    if sets.dim() != 3:
        raise ValueError(f"sets must have shape (exits, N, C), got {tuple(sets.shape)}")
    return sets.to(torch.uint8).cummin(dim=0).values.bool()
