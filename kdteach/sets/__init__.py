"""Prediction sets for early-exit networks: split conformal per exit, Bayes credible sets, running intersections,
anytime-valid sets, their metrics, and regression intervals.

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

One module per idea; every name is importable from kdteach.sets itself:
- conformal: the LAC / APS / RAPS scores, split-conformal thresholds and sets, credible sets, running intersections;
- anytime: anytime-valid classification sets (AVCS) and the rule that fits their threshold;
- methods: every method above on one calibration/evaluation split (what notebook 06 compares);
- metrics: coverage (marginal, per class, per group), size, empty rate, nestedness; SetMetrics and MethodSummary;
- regression: Bayesian linear regression heads, credible and AVCS intervals, their metrics, the wiggle data;
- inputs: the input checks the others share.
"""
from kdteach.sets.anytime import AvcsFit, avcs_sets, fit_avcs_thresholds
from kdteach.sets.conformal import (
    SCORES,
    aps_scores,
    conformal_rank,
    conformal_sets,
    conformal_threshold,
    credible_sets,
    fit_conformal_thresholds,
    label_scores,
    lac_scores,
    prediction_sets,
    raps_scores,
    running_intersection,
)
from kdteach.sets.methods import CONFORMAL_METHODS, MethodSets, calibration_split, method_sets
from kdteach.sets.metrics import (
    MethodSummary,
    SetMetrics,
    class_conditional_coverage,
    coverage,
    empty_rate,
    group_conditional_coverage,
    mean_size,
    nestedness,
    non_nested_examples,
    set_metrics,
    summarize_splits,
)
from kdteach.sets.regression import (
    BayesianLinearRegression,
    ExitPredictive,
    WiggleSplits,
    avcs_intervals,
    avcs_quadratic_intervals,
    bayesian_exit_predictive,
    credible_intervals,
    empty_share_by_region,
    fit_bayesian_linear_regression,
    interval_metrics,
    interval_running_intersection,
    log_marginal_likelihood,
    regression_intervals,
    wiggle_data,
    wiggle_function,
    wiggle_splits,
)

__all__ = [
    # scores, split conformal, credible sets
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
