"""Notebook 01's experiment helpers: the bias shift tuned on validation data, configurations."""
import pytest
import torch

from kdteach.experiments import hinton


def test_best_bias_shift_by_hand():
    # Three class-1 examples whose class-1 logit trails class 0 by 0.3, 0.6 and 0.9, and one class-0 example that
    # class 1 trails by 1.2. A shift of 1.0 fixes all three (0.9 < 1.0 < 1.2); 0.5 fixes one, 2.0 breaks the fourth.
    logits = torch.tensor([[1.0, 0.7], [1.0, 0.4], [1.0, 0.1], [1.2, 0.0]])
    labels = torch.tensor([1, 1, 1, 0])
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([0.0, 0.5, 1.0, 2.0])) == 1.0
    # Ties go to the first candidate (the smallest, for ascending candidates): 1.0 and 1.1 both make no error.
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([1.1, 1.0])) == pytest.approx(1.1)
    assert hinton.best_bias_shift(logits, labels, 1, torch.tensor([1.0, 1.1])) == 1.0


def test_config_modes():
    assert hinton.config("smoke").train_size == 3000 and hinton.config("full").train_size is None
    assert hinton.config("full").key() != hinton.config("smoke").key()
    with pytest.raises(ValueError, match="mode"):
        hinton.config("fast")
