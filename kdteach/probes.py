"""Linear probes per stage: where in a network an attribute becomes linearly decodable (notebook 02).

A probe is a logistic regression on a stage's features; its balanced accuracy on held-out data says how much of the
label, or of the spurious attribute, that stage makes available to a linear readout. It measures what is decodable,
not what the network uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdteach.data.grouped import GroupedData


@dataclass(frozen=True)
class StageProbe:
    """Balanced accuracy (chance 0.5) of a linear probe for the label and for the spurious attribute at one stage."""

    stage: str
    label: float
    spurious: float


@torch.no_grad()
def _stage_vectors(model: nn.Module, data: GroupedData, grid: int) -> dict[str, np.ndarray]:
    chunks: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    for batch in data.batches(256, device=next(model.parameters()).device):
        for name, h in model.features(batch["x"]).items():
            if h.dim() == 4:  # "pooled" (2-D) is layer3 averaged globally: the same stage again, left out
                chunks.setdefault(name, []).append(F.adaptive_avg_pool2d(h.float(), grid).flatten(1).cpu())
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def probe_stages(model: nn.Module, fit_data: GroupedData, eval_data: GroupedData, *, max_rows: int = 2000, grid: int = 2) -> tuple[StageProbe, ...]:
    """Linear probes for the label and for the spurious attribute on every spatial stage of a model.

    Each stage's output is average-pooled to a grid x grid map (so a shape's layout survives, not only a colour),
    flattened, standardised and read by a logistic regression. Fit the probes on a split where label and attribute
    are independent (waterbirds_like's validation split), or the attribute probe could succeed by decoding the label.

    Args:
        model: a network with features() (on its device).
        fit_data, eval_data: the splits the probes are fit on (its first max_rows >= 2 rows) and scored on.
        max_rows, grid: cap on fitting rows; the pooled grid's side.

    Returns:
        One StageProbe per stage with spatial features, in the model's order.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if max_rows < 2:
        raise ValueError(f"max_rows must be >= 2, got {max_rows}")
    fit_data = fit_data.subset(torch.arange(min(max_rows, len(fit_data))))
    fit_vectors, eval_vectors = _stage_vectors(model, fit_data, grid), _stage_vectors(model, eval_data, grid)
    probes = []
    for stage in fit_vectors:
        scores = {}
        for target in ("label", "spurious"):
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            probe.fit(fit_vectors[stage], getattr(fit_data, "labels" if target == "label" else target).numpy())
            y_eval = getattr(eval_data, "labels" if target == "label" else target).numpy()
            scores[target] = float(balanced_accuracy_score(y_eval, probe.predict(eval_vectors[stage])))
        probes.append(StageProbe(stage, **scores))
    return tuple(probes)
