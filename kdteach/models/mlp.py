"""Multilayer perceptrons as in Hinton et al.'s MNIST experiments (784-1200-1200-10 teacher, 784-800-800-10 student)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """A ReLU MLP with optional dropout and a max-norm constraint on each hidden unit's incoming weights.

    Max-norm (Srebro & Shraibman; used with dropout by Hinton et al. 2012) caps the L2 norm of every row of each
    hidden layer's weight matrix. It is applied after each optimiser step by apply_constraints(), which fit() calls.

    Args:
        sizes: layer widths from input to output, e.g. (784, 1200, 1200, 10).
        dropout: dropout on hidden activations (0 disables).
        input_dropout: dropout on the inputs (Hinton et al. 2012 used 0.2).
        max_norm: cap on each hidden unit's incoming weight norm (None disables).
    """

    def __init__(self, sizes: Sequence[int], *, dropout: float = 0.0, input_dropout: float = 0.0, max_norm: float | None = None) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must list at least an input and an output width, all >= 1, got {tuple(sizes)}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be > 0 or None, got {max_norm}")
        self.sizes = tuple(int(s) for s in sizes)
        self.max_norm = max_norm
        self.input_dropout = nn.Dropout(input_dropout)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes[:-2], self.sizes[1:-1]))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(self.sizes[-2], self.sizes[-1])
        # Named taps, the same interface as the ResNets': one entry per hidden layer, for readouts and exits.
        self.stage_names = tuple(f"hidden{i + 1}" for i in range(len(self.hidden)))

    @property
    def classifier(self) -> nn.Linear:
        """The output layer (the head on the last stage)."""
        return self.out

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Hidden activations by stage name, computed in one pass, stopping after stage `upto` if given.

        Args:
            x: (N, ...) inputs, flattened.
            upto: the last stage to compute (one of stage_names); None computes all.

        Returns:
            {"hidden1": (N, width1), ...}.
        """
        if upto is not None and upto not in self.stage_names:
            raise ValueError(f"upto must be one of {self.stage_names}, got {upto!r}")
        h, taps = self.input_dropout(x.flatten(1)), {}
        for name, layer in zip(self.stage_names, self.hidden):
            h = self.dropout(torch.relu(layer(h)))
            taps[name] = h
            if name == upto:
                break
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattens x (N, ...) and returns logits (N, classes)."""
        return self.out(self.features(x)[self.stage_names[-1]]) if self.hidden else self.out(self.input_dropout(x.flatten(1)))

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Rescales each hidden unit's incoming weights to norm <= max_norm (a no-op without max_norm)."""
        if self.max_norm is None:
            return
        for layer in self.hidden:
            norms = layer.weight.norm(dim=1, keepdim=True)
            layer.weight.mul_(torch.clamp(self.max_norm / (norms + 1e-12), max=1.0))
