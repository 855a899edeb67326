"""Early-exit networks: a head after each stage of a backbone, trained together, read out at every exit.

A multi-exit network answers at several depths. Easy inputs can stop at an early exit and save the rest of the
computation; an interrupted computation still has the last exit it reached (anytime prediction). Any backbone with
the course's feature-tap interface works: `stage_names`, `features(x, upto=...)` and `classifier` (the MLP, the
CIFAR and torchvision ResNets, the ResidualMLP below). Each exit head is a linear layer on the stage's output,
global-average-pooled first when the stage is a feature map; the backbone's own classifier is the head of its
last stage.

Do exits skip computation? Two paths, stated plainly:
- `MultiExit.forward` (used for training, `exit_logits`, accuracy per exit, prediction sets) runs the WHOLE
  backbone once and reads every exit from that one pass. Exits there are simulated: nothing is skipped.
  `confidence_exit` and `threshold_curve` apply an exit policy to those full-pass logits; the compute they report
  is what an incremental implementation would spend (exit_costs), not what was spent.
- `early_exit_predict` really stops: it computes exit 1 for every example, then exit 2 only for the examples that
  did not stop, and so on; stages after an example's exit never run for it. Because the interface exposes
  prefixes (`features(x, upto=stage)`) rather than single stages, the examples that go on recompute the earlier
  stages, so its measured time is an upper bound on a stage-by-stage implementation. A test checks that it makes
  the same predictions and exits as the simulated policy.

Training uses the mean of the exits' losses; with distill_weight > 0 every earlier exit is also distilled from the
last exit's softened output (Phuong & Lampert 2019, "Distillation-based training for multi-exit architectures").
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdteach.data.batches import Batch, Batches
from kdteach.distill import kd_loss
from kdteach.train import predict

__all__ = [
    "MultiExit",
    "ResidualMLP",
    "MultiExitLoss",
    "multi_exit_mse",
    "exit_logits",
    "exit_feature_vectors",
    "exit_accuracy",
    "calibration_error",
    "exit_costs",
    "confidence_exit",
    "threshold_curve",
    "early_exit_predict",
]


def _head_input(feature: torch.Tensor, pool: int) -> torch.Tensor:
    # A stage output as one vector per example: (N, C, H, W) maps are average-pooled to pool x pool cells (1: global
    # average pooling), anything else is flattened.
    if feature.dim() == 4:
        feature = F.adaptive_avg_pool2d(feature, pool)
    return feature.flatten(1)


class MultiExit(nn.Module):
    """A backbone with a classifier (or regression) head after each chosen stage.

    Args:
        backbone: a model with stage_names, features(x, upto=...) and classifier.
        num_outputs: classes (or regression outputs) of every head.
        example_input: a batch of at least one input, used once to read each stage's width (in eval mode, so
            BatchNorm statistics are untouched).
        exits: the stages to attach heads to, in forward order; None uses every stage. If the backbone's last stage
            is among them and its classifier has num_outputs outputs, that classifier is the last head.
        head_pool: feature maps are average-pooled to head_pool x head_pool cells before their linear head; 1 is
            global average pooling. Early, narrow stages keep more of what they know with a few cells.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_outputs: int,
        *,
        example_input: torch.Tensor,
        exits: Sequence[str] | None = None,
        head_pool: int = 1,
    ) -> None:
        super().__init__()
        for name in ("stage_names", "features", "classifier"):
            if not hasattr(backbone, name):
                raise ValueError(f"backbone must have {name!r} (the feature-tap interface), {type(backbone).__name__} has not")
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be an int >= 1, got {num_outputs!r}")
        stages = tuple(backbone.stage_names)
        names = tuple(exits) if exits is not None else stages
        if not names or any(n not in stages for n in names):
            raise ValueError(f"exits must be a non-empty selection of {stages}, got {names}")
        if [stages.index(n) for n in names] != sorted({stages.index(n) for n in names}):
            raise ValueError(f"exits must be distinct and in forward order {stages}, got {names}")
        if not isinstance(head_pool, int) or head_pool < 1:
            raise ValueError(f"head_pool must be an int >= 1, got {head_pool!r}")
        self.backbone = backbone
        self.head_pool = head_pool
        self.exit_names = names
        self.num_outputs = num_outputs
        widths = self._stage_widths(example_input)
        heads = []
        for name in names:
            reuse = name == stages[-1] and getattr(backbone.classifier, "out_features", None) == num_outputs
            heads.append(backbone.classifier if reuse else nn.Linear(widths[name], num_outputs))
        self.heads = nn.ModuleList(heads)

    @torch.no_grad()
    def _stage_widths(self, example_input: torch.Tensor) -> dict[str, int]:
        was_training = self.backbone.training
        self.backbone.eval()
        device = next(self.backbone.parameters()).device
        taps = self.backbone.features(example_input[:1].to(device), upto=self.exit_names[-1])
        self.backbone.train(was_training)
        return {name: _head_input(h, self.head_pool).shape[1] for name, h in taps.items()}

    @property
    def num_exits(self) -> int:
        """How many exits the network has."""
        return len(self.exit_names)

    def _check_exit(self, exit_index: int) -> int:
        if not isinstance(exit_index, int) or not -self.num_exits <= exit_index < self.num_exits:
            raise ValueError(f"exit_index must be an int in [0, {self.num_exits}), got {exit_index!r}")
        return exit_index % self.num_exits

    def exit_features(self, x: torch.Tensor, *, upto: int | None = None) -> list[torch.Tensor]:
        """The head inputs (pooled stage outputs) of exits 0..upto, from one pass that stops at exit `upto`.

        Args:
            x: a batch of inputs.
            upto: the last exit to compute; None computes all.

        Returns:
            A list of (N, width) tensors, one per exit.
        """
        last = self.num_exits - 1 if upto is None else self._check_exit(upto)
        taps = self.backbone.features(x, upto=self.exit_names[last])
        return [_head_input(taps[name], self.head_pool) for name in self.exit_names[: last + 1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every exit's output from one full pass (simulated exits: nothing is skipped).

        Args:
            x: a batch of inputs.

        Returns:
            (exits, N, num_outputs).
        """
        return torch.stack([head(h) for head, h in zip(self.heads, self.exit_features(x))])

    def forward_exit(self, x: torch.Tensor, exit_index: int) -> torch.Tensor:
        """One exit's output, computing the backbone only up to that exit's stage (later stages never run).

        Args:
            x: a batch of inputs.
            exit_index: which exit (0-based; negative counts from the end).

        Returns:
            (N, num_outputs).
        """
        index = self._check_exit(exit_index)
        return self.heads[index](self.exit_features(x, upto=index)[index])


class ResidualMLP(nn.Module):
    """Jazbec et al.'s regression backbone: an input layer, then `depth` residual blocks x + BN(ReLU(Linear(x))).

    It has the feature-tap interface (stages "block1" ... "blockD"), so MultiExit puts a head on every block.

    Args:
        input_dim: input features.
        width: hidden width.
        depth: residual blocks (the paper uses 15).
        output_dim: outputs of the final head.
    """

    def __init__(self, input_dim: int = 1, width: int = 64, depth: int = 15, output_dim: int = 1) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("width", width), ("depth", depth), ("output_dim", output_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.input_layer = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.BatchNorm1d(width)) for _ in range(depth))
        self.classifier = nn.Linear(width, output_dim)
        self.stage_names = tuple(f"block{i + 1}" for i in range(depth))
        self.feature_dim = width

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Block outputs by name, stopping after `upto`.

        Args:
            x: (N, input_dim).
            upto: the last stage to compute; None computes all.

        Returns:
            {"block1": (N, width), ...}.
        """
        if upto is not None and upto not in self.stage_names:
            raise ValueError(f"upto must be one of {self.stage_names}, got {upto!r}")
        h, taps = self.input_layer(x), {}
        for name, block in zip(self.stage_names, self.blocks):
            h = h + block(h)
            taps[name] = h
            if name == upto:
                break
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, input_dim) -> (N, output_dim) from the last block."""
        return self.classifier(self.features(x)[self.stage_names[-1]])


class MultiExitLoss:
    """A loss_fn for kdteach.train.fit(): the mean over exits of each exit's loss.

    The last exit gets cross-entropy with the labels. Each earlier exit gets Hinton's distillation loss with the
    last exit's (detached) logits as the teacher: (1 - distill_weight) * CE + distill_weight * T^2 * KL
    (Phuong & Lampert 2019); distill_weight = 0 is plain cross-entropy at every exit.

    Args:
        distill_weight: weight of the soft term for the earlier exits, in [0, 1].
        temperature: T of the soft term (> 0).
    """

    def __init__(self, *, distill_weight: float = 0.0, temperature: float = 3.0) -> None:
        if not isinstance(distill_weight, (int, float)) or not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        if outputs.dim() != 3:
            raise ValueError(f"outputs must have shape (exits, N, C) (a MultiExit model), got {tuple(outputs.shape)}")
        labels = batch["y"]
        last = outputs[-1].float()
        teacher = last.detach() if self.distill_weight > 0 else None
        losses = [F.cross_entropy(last, labels)]
        for logits in outputs[:-1]:
            losses.append(kd_loss(logits.float(), teacher, labels, temperature=self.temperature, soft_weight=self.distill_weight))
        return torch.stack(losses).mean()


def multi_exit_mse(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """A loss_fn for fit(): the mean over exits of the squared error against batch["target"].

    The regression target is called "target", not "y", because fit() reads "y" as class labels.

    Args:
        outputs: (exits, N, 1) or (exits, N).
        batch: holds "target" (N,).

    Returns:
        A scalar.
    """
    predictions = outputs.float().reshape(outputs.shape[0], outputs.shape[1])
    return ((predictions - batch["target"].float()) ** 2).mean()


def _batches(data: Batches | torch.Tensor, batch_size: int) -> Batches:
    if isinstance(data, Batches):
        return data
    if isinstance(data, torch.Tensor):
        return Batches({"x": data}, batch_size)
    raise ValueError(f"data must be Batches or a tensor of inputs, got {type(data).__name__}")


def exit_logits(model: MultiExit, data: Batches | torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Every exit's outputs on a dataset, in eval mode and dataset order.

    Args:
        model: a MultiExit network.
        data: Batches (their transform is applied) or a tensor of ready inputs.
        batch_size: rows per forward pass when data is a tensor.

    Returns:
        (exits, N, C) float32, on the model's device.
    """
    outputs = predict(model, _batches(data, batch_size))
    if outputs.dim() != 3:
        raise ValueError(f"model must return (exits, N, C) outputs, got shape {tuple(outputs.shape)}")
    return outputs


@torch.no_grad()
def exit_feature_vectors(model: MultiExit, data: Batches | torch.Tensor, *, batch_size: int = 1024) -> list[torch.Tensor]:
    """Every exit's head inputs (pooled stage outputs) on a dataset, in eval mode: e.g. for Bayesian heads.

    Args:
        model: a MultiExit network.
        data: Batches or a tensor of ready inputs.
        batch_size: rows per pass when data is a tensor.

    Returns:
        One (N, width) float32 tensor per exit, in dataset order.
    """
    batches = _batches(data, batch_size)
    ordered = Batches(batches.tensors, batches.batch_size, shuffle=False, transform=batches.transform)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = [[h.float() for h in model.exit_features(batch["x"].to(device))] for batch in ordered]
    model.train(was_training)
    return [torch.cat([chunk[t] for chunk in chunks]) for t in range(model.num_exits)]


def _check_exit_logits(exit_logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(exit_logits, torch.Tensor) or exit_logits.dim() != 3:
        raise ValueError(f"exit_logits must have shape (exits, N, C), got {getattr(exit_logits, 'shape', type(exit_logits).__name__)}")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != exit_logits.shape[1:2]):
        raise ValueError(f"labels must have shape ({exit_logits.shape[1]},), got {getattr(labels, 'shape', type(labels).__name__)}")


def exit_accuracy(exit_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of every exit.

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).

    Returns:
        (exits,) float64.
    """
    _check_exit_logits(exit_logits, labels)
    return (exit_logits.argmax(dim=-1) == labels.to(exit_logits.device)).double().mean(dim=1)


@torch.no_grad()
def calibration_error(exit_logits: torch.Tensor, labels: torch.Tensor, *, bins: int = 15) -> torch.Tensor:
    """Expected calibration error of every exit: sum over confidence bins of |accuracy - confidence| * bin share.

    Confidence is the top softmax probability; bins are equal-width on [0, 1].

    Args:
        exit_logits: (exits, N, C).
        labels: (N,).
        bins: number of bins (>= 1).

    Returns:
        (exits,) float64.
    """
    _check_exit_logits(exit_logits, labels)
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    confidence, prediction = torch.softmax(exit_logits.double(), dim=-1).max(dim=-1)
    correct = (prediction == labels.to(exit_logits.device)).double()
    which = (confidence * bins).long().clamp(max=bins - 1)  # (exits, N)
    errors = []
    for t in range(exit_logits.shape[0]):
        gap = torch.bincount(which[t], weights=confidence[t] - correct[t], minlength=bins)  # per bin: sum(conf - correct)
        errors.append(gap.abs().sum() / max(exit_logits.shape[1], 1))
    return torch.stack(errors)


def exit_costs(model: MultiExit, example_input: torch.Tensor) -> list[dict[str, float]]:
    """What it costs to reach each exit, per example: multiply-accumulates and parameters.

    Reaching exit t means running the backbone up to exit t's stage and evaluating heads 0..t (an early-exit policy
    looks at every head on the way). MACs are counted by torch's FLOP counter (matrix products and convolutions;
    FLOPs = 2 MACs) on one example; parameters are those of the modules that actually ran, plus the heads.

    Args:
        model: a MultiExit network.
        example_input: a batch of at least one input (only the first row is used).

    Returns:
        One dict per exit: {"exit", "stage", "macs", "params"}.
    """
    device = next(model.parameters()).device
    x = example_input[:1].to(device)
    was_training = model.training
    model.eval()
    costs = []
    for t, name in enumerate(model.exit_names):
        ran: dict[int, nn.Module] = {}

        def record(module: nn.Module, _inputs: tuple) -> None:  # a pre-hook must return None to leave inputs alone
            ran[id(module)] = module

        hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            taps = model.backbone.features(x, upto=name)
            for head, stage in zip(model.heads[: t + 1], model.exit_names[: t + 1]):
                head(_head_input(taps[stage], model.head_pool))
        for hook in hooks:
            hook.remove()
        params = {id(p): p.numel() for m in ran.values() for p in m.parameters(recurse=False)}
        costs.append({"exit": float(t), "stage": name, "macs": counter.get_total_flops() / 2, "params": float(sum(params.values()))})
    model.train(was_training)
    return costs


def _confidence_thresholds(threshold: float | Sequence[float] | torch.Tensor, exits: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(threshold, dtype=torch.float64, device=device)
    if t.dim() == 0:
        t = t.expand(exits)
    if t.shape != (exits,):
        raise ValueError(f"threshold must be a number or one value per exit ({exits}), got shape {tuple(t.shape)}")
    return t


def confidence_exit(exit_logits: torch.Tensor, threshold: float | Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The confidence-threshold policy on full-pass logits: stop at the first exit whose top softmax probability
    reaches the threshold; the last exit answers for everything that never does.

    Args:
        exit_logits: (exits, N, C).
        threshold: a confidence in [0, 1], or one per exit.

    Returns:
        exit_index (N,) long and predictions (N,) long.
    """
    _check_exit_logits(exit_logits)
    exits = exit_logits.shape[0]
    t = _confidence_thresholds(threshold, exits, exit_logits.device)
    confidence, prediction = torch.softmax(exit_logits.double(), dim=-1).max(dim=-1)  # (exits, N)
    confident = confidence >= t[:, None]
    confident[-1] = True
    exit_index = confident.double().argmax(dim=0)  # the first True
    return exit_index, prediction.gather(0, exit_index[None]).squeeze(0)


def threshold_curve(
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    exit_macs: Sequence[float],
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, float]]:
    """Accuracy against mean compute of the confidence-threshold policy, one point per threshold.

    Args:
        exit_logits: (exits, N, C) full-pass logits.
        labels: (N,).
        exit_macs: cost of reaching each exit (exit_costs' "macs").
        thresholds: confidences to try; None uses 0.0, 0.05, ..., 1.0 (0 stops everyone at exit 0, 1 almost no one).

    Returns:
        One dict per threshold: {"threshold", "accuracy", "mean_macs", "exit_k_share" for each exit k}.
    """
    _check_exit_logits(exit_logits, labels)
    exits = exit_logits.shape[0]
    if len(exit_macs) != exits:
        raise ValueError(f"exit_macs must hold one cost per exit ({exits}), got {len(exit_macs)}")
    macs = torch.as_tensor(list(exit_macs), dtype=torch.float64, device=exit_logits.device)
    grid = [round(0.05 * i, 2) for i in range(21)] if thresholds is None else list(thresholds)
    rows = []
    for threshold in grid:
        index, prediction = confidence_exit(exit_logits, threshold)
        row = {"threshold": float(threshold), "accuracy": float((prediction == labels.to(prediction.device)).double().mean()), "mean_macs": float(macs[index].mean())}
        shares = torch.bincount(index, minlength=exits).double() / len(index)
        row.update({f"exit_{k}_share": float(shares[k]) for k in range(exits)})
        rows.append(row)
    return rows


@torch.no_grad()
def early_exit_predict(model: MultiExit, x: torch.Tensor, threshold: float | Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The confidence-threshold policy with real early stopping (see the module docstring).

    Exit 0 is computed for every example; exit t only for the examples not yet confident. Stages beyond an
    example's exit never run for it; the earlier stages are recomputed for the examples that continue.

    Args:
        model: a MultiExit classifier (run in eval mode).
        x: (N, ...) inputs.
        threshold: a confidence in [0, 1], or one per exit.

    Returns:
        predictions (N,) long and exit_index (N,) long, on x's device.
    """
    device = next(model.parameters()).device
    t = _confidence_thresholds(threshold, model.num_exits, device)
    was_training = model.training
    model.eval()
    n = len(x)
    predictions = torch.zeros(n, dtype=torch.long, device=device)
    exit_index = torch.full((n,), model.num_exits - 1, dtype=torch.long, device=device)
    remaining = torch.arange(n, device=device)
    for k in range(model.num_exits):
        if len(remaining) == 0:
            break
        probs = torch.softmax(model.forward_exit(x[remaining.to(x.device)].to(device), k).double(), dim=-1)
        confidence, prediction = probs.max(dim=-1)
        stop = confidence >= t[k] if k < model.num_exits - 1 else torch.ones_like(confidence, dtype=torch.bool)
        predictions[remaining[stop]] = prediction[stop]
        exit_index[remaining[stop]] = k
        remaining = remaining[~stop]
    model.train(was_training)
    return predictions.to(x.device), exit_index.to(x.device)
