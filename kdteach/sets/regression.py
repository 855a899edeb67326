"""Regression intervals per exit (Jazbec et al., Algorithm 1): Bayesian linear regression heads on each exit's
features, per-exit credible intervals, their running intersection, anytime-valid (AVCS) intervals, their metrics,
and the synthetic "wiggle" data the notebook fits.

Intervals are two tensors `lower`, `upper` of shape (exits, N); an empty interval has lower > upper (we use +inf
and -inf) and means "abstain / out of distribution".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdteach.checks import check_alpha, check_int, check_tensor
from kdteach.sets.inputs import as_floats, per_exit
from kdteach.sets.methods import calibration_split
from kdteach.sets.metrics import SetMetrics

__all__ = [
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
    s2 = per_exit("noise_var", noise_var, mu.shape[0], mu)[:, None]
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
    s2 = per_exit("noise_var", noise_var, mu.shape[0], mu)
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
        as_floats(((lower <= y) & (y <= upper)).double().mean(dim=1)), as_floats(width.mean(dim=1)), as_floats(empty.double().mean(dim=1)),
        as_floats(nested.mean(dim=1)), as_floats(((run_lower <= y) & (y <= run_upper)).double().mean(dim=1)),
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
