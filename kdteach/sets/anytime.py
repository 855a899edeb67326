"""Anytime-valid prediction sets for a multi-exit classifier (Jazbec et al., UAI 2024, Algorithm 2) and the
split-conformal rule that chooses their threshold on a calibration split.

AVCS: P(for all t: y in C_t) >= 1 - alpha IF the model's predictive distribution is right, so the running
intersection keeps the guarantee. Classification uses Dirichlet draws from thresholded logits. A network is not
that model; fit_avcs_thresholds chooses the threshold on a calibration split by a split-conformal rule, which gives
the all-exit coverage a finite-sample guarantee of its own (see there).

Unlike the paper's official code, the sets here take the running intersection (the paper's algorithm has it; the
code skips it), and the thresholds are fitted on a calibration split only, never on the data the sets are
evaluated on.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from kdteach.checks import check_alpha, check_int, check_labels, check_number
from kdteach.sets.conformal import conformal_rank
from kdteach.sets.inputs import check_probs, per_exit

__all__ = ["avcs_sets", "AvcsFit", "fit_avcs_thresholds"]


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
    check_probs(name, exit_logits)
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
    taus = per_exit("thresholds", thresholds, logits.shape[0], logits)
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
