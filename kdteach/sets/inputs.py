"""Input checks and conversions shared by the modules of kdteach.sets: every public function of the package names
the argument it refuses (through kdteach.checks where a general check fits)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kdteach.checks import check_finite, check_not_empty, check_tensor

__all__ = ["check_probs", "check_sets", "check_set_examples", "per_exit", "as_floats"]


def check_probs(name: str, probs: torch.Tensor) -> None:
    """Refuses anything but finite floating-point probabilities or logits of shape (N, C) or (exits, N, C), N >= 1.

    Args:
        name: the argument's name, for the error.
        probs: the value to check (its values are read on the CPU).
    """
    check_tensor(name, probs, dims=(2, 3), floating=True, what="(N, C) or (exits, N, C)")
    check_not_empty(name, probs, dim=-2)
    check_finite(name, probs)


def check_sets(name: str, sets: torch.Tensor) -> None:
    """Refuses anything but a bool tensor of shape (N, C) or (exits, N, C).

    Args:
        name: the argument's name, for the error.
        sets: the value to check.
    """
    if not isinstance(sets, torch.Tensor) or sets.dtype != torch.bool or sets.dim() not in (2, 3):
        what = f"{sets.dtype} {tuple(sets.shape)}" if isinstance(sets, torch.Tensor) else type(sets).__name__
        raise ValueError(f"{name} must be a bool tensor of shape (N, C) or (exits, N, C), got {what}")


def check_set_examples(name: str, sets: torch.Tensor) -> None:
    """Refuses what check_sets refuses, and sets of no example (N = 0): a coverage, size or rate over zero
    examples is undefined, and returning NaN for it would let an empty group pass for a measured one.

    Args:
        name: the argument's name (or what the sets are of, e.g. a group), for the error.
        sets: the value to check.
    """
    check_sets(name, sets)
    check_not_empty(name, sets, dim=-2)


def per_exit(name: str, values: torch.Tensor | float | Sequence[float], exits: int, like: torch.Tensor) -> torch.Tensor:
    """A number, or one number per exit, as a float64 tensor of shape (exits,) on like's device.

    Args:
        name: the argument's name, for the error.
        values: a number or `exits` numbers.
        exits: how many exits.
        like: a tensor on the device to put the result on.

    Returns:
        (exits,) float64.
    """
    t = torch.as_tensor(values, dtype=torch.float64, device=like.device)
    if t.dim() == 0:
        t = t.expand(exits)
    if t.shape != (exits,):
        raise ValueError(f"{name} must be a number or hold one value per exit ({exits}), got shape {tuple(t.shape)}")
    return t


def as_floats(values: torch.Tensor | np.ndarray) -> tuple[float, ...]:
    """A 1-d tensor or array as a tuple of Python floats (the form SetMetrics and results hold)."""
    return tuple(float(v) for v in (values.cpu() if isinstance(values, torch.Tensor) else values))
