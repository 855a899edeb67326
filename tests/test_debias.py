"""kdteach.debias: confidence margins, DeDiER weights, the early readout and the baselines."""
from __future__ import annotations

import math

import pytest
import torch

from kdteach.debias import confidence_margin, dedier_weights


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    # log p is a valid set of logits whose softmax is p, so margins can be picked by hand.
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


PROBS = [
    [0.5, 0.3, 0.2, 0.0 + 1e-12],  # top-1 0.5, top-2 0.3 -> margin 0.2; predicts class 0
    [0.1, 0.15, 0.7, 0.05],  # margin 0.55; predicts class 2
    [0.25, 0.25, 0.25, 0.25],  # a tie: margin 0
    [0.05, 0.05, 0.1, 0.8],  # margin 0.7; predicts class 3
]
MARGINS = [0.2, 0.55, 0.0, 0.7]


def test_confidence_margin_is_top1_minus_top2_for_four_classes():
    assert torch.allclose(confidence_margin(logits_of(PROBS)), torch.tensor(MARGINS), atol=1e-5)


def test_confidence_margin_binary_is_absolute_difference():
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    margin = confidence_margin(p.log())
    assert torch.allclose(margin, (p[:, 0] - p[:, 1]).abs(), atol=1e-6)


def test_confidence_margin_ignores_logit_shift():
    logits = torch.randn(6, 5)
    assert torch.allclose(confidence_margin(logits), confidence_margin(logits + 7.0), atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.05, 4.0), (1.0, 2.0), (2.0, 3.0)])
def test_dedier_weights_match_formula_multiclass(alpha, beta):
    # Row 0 wrong, row 1 right, row 2 a tie (weight 1 either way: margin 0 gives exp(0)), row 3 wrong.
    labels = torch.tensor([1, 2, 1, 0])
    logits = logits_of(PROBS)
    predicted = logits.argmax(dim=1).tolist()
    expected = [
        math.exp(beta * m**alpha) if p != y else 1.0 for m, p, y in zip(MARGINS, predicted, labels.tolist())
    ]
    weights = dedier_weights(logits, labels, alpha=alpha, beta=beta)
    assert weights.shape == (4,)
    assert torch.allclose(weights, torch.tensor(expected), rtol=1e-4)
    # Row 0 (predicts 0, label 1) and row 3 (predicts 3, label 0) are wrong; row 1 is right.
    assert weights[1] == 1.0
    assert weights[0] == pytest.approx(math.exp(beta * 0.2**alpha), rel=1e-4)
    assert weights[3] == pytest.approx(math.exp(beta * 0.7**alpha), rel=1e-4)


def test_alpha_is_an_exponent_not_a_factor():
    logits = logits_of([[0.6, 0.4, 1e-12]])  # margin 0.2, predicts 0
    w = dedier_weights(logits, torch.tensor([1]), alpha=0.5, beta=1.0)
    assert float(w) == pytest.approx(math.exp(0.2**0.5), rel=1e-4)
    assert float(w) != pytest.approx(math.exp(0.5 * 0.2), rel=1e-3)


def test_dedier_weights_are_one_when_readout_is_right():
    logits = torch.randn(50, 3)
    weights = dedier_weights(logits, logits.argmax(dim=1), alpha=0.1, beta=4.0)
    assert torch.equal(weights, torch.ones(50))


def test_dedier_weights_reject_bad_input():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        dedier_weights(logits, torch.zeros(4, dtype=torch.long), alpha=-1.0, beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        dedier_weights(logits, torch.zeros(4, dtype=torch.long), alpha=1.0, beta=float("nan"))
    with pytest.raises(ValueError, match="labels"):
        dedier_weights(logits, torch.zeros(5, dtype=torch.long), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="labels"):
        dedier_weights(logits, torch.full((4,), 3), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="readout_logits"):
        dedier_weights(torch.randn(4), torch.zeros(4, dtype=torch.long), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="2 classes"):
        confidence_margin(torch.randn(4, 1))
