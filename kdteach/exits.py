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
  is what an incremental implementation would spend (exit_costs), not what was spent. They, and the accuracy and
  calibration of every exit, need only the logits: they live in kdteach.exit_metrics and are re-exported here.
- `early_exit_predict` really stops, stage by stage: every example runs the first stage and exit 1's head; the
  examples that are not confident enough carry their activations on to the next stage (nothing is recomputed), and
  so on. Stages after an example's exit never run for it, so the compute it spends per example is exactly the ideal
  count of `exit_costs` at that example's exit; `measure_early_exit` counts it (torch's FLOP counter on the real
  run), times it (warm-up, then the median of several repeats) and checks it against the simulated policy.

Training uses the mean of the exits' losses; with distill_weight > 0 every earlier exit is also distilled from the
last exit's softened output (Phuong & Lampert 2019, "Distillation-based training for multi-exit architectures").
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdteach import checks
from kdteach.checks import check_int
from kdteach.data.batches import Batch, Batches
from kdteach.distill import kd_loss
from kdteach.exit_metrics import (  # re-exported: kd.exits.* is where notebooks and experiments find them
    ECE_BINS,
    PolicyPoint,
    _confidence_thresholds,
    calibration_error,
    confidence_exit,
    exit_accuracy,
    reliability_bins,
    threshold_curve,
)
from kdteach.train import predict
from kdteach.models.mlp import MLP

__all__ = [
    "MultiExit",
    "ResidualMLP",
    "MultiExitLoss",
    "multi_exit_mse",
    "exit_logits",
    "exit_feature_vectors",
    "exit_accuracy",
    "ECE_BINS",
    "reliability_bins",
    "calibration_error",
    "ExitCost",
    "exit_costs",
    "confidence_exit",
    "PolicyPoint",
    "threshold_curve",
    "stage_steps",
    "EarlyExitOutput",
    "early_exit_predict",
    "EarlyExitRun",
    "measure_early_exit",
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
    def stage_names(self) -> tuple[str, ...]:
        """The backbone's stages: with features(), the feature-tap interface an EarlyReadout reads."""
        return tuple(self.backbone.stage_names)

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """The backbone's stage outputs up to `upto` (its features()), so DeDiER's readout can read a multi-exit student."""
        return self.backbone.features(x, upto=upto)

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

    def stage_steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """One function per block: its output from the previous block's (the first takes the input x)."""
        def first(x: torch.Tensor) -> torch.Tensor:
            h = self.input_layer(x)
            return h + self.blocks[0](h)

        return [first] + [lambda h, block=block: h + block(h) for block in self.blocks[1:]]

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
        checks.check_tensor("outputs", outputs, dims=(3,), floating=True, what="(exits, N, C) (a MultiExit model)")
        labels = batch["y"]
        # Read only off the GPU: inside a GPU step the range is fit()'s first-batch check (no host sync per step).
        checks.check_labels("batch['y']", labels, outputs.shape[1], outputs.shape[2])
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


@dataclass(frozen=True)
class ExitCost:
    """What it costs one example to reach an exit: multiply-accumulates and the parameters that ran."""

    exit: int
    stage: str
    macs: float
    params: int


def exit_costs(model: MultiExit, example_input: torch.Tensor) -> list[ExitCost]:
    """What it costs to reach each exit, per example: multiply-accumulates and parameters.

    Reaching exit t means running the backbone up to exit t's stage and evaluating heads 0..t (an early-exit policy
    looks at every head on the way). MACs are counted by torch's FLOP counter (matrix products and convolutions;
    FLOPs = 2 MACs) on one example; parameters are those of the modules that actually ran, plus the heads.

    Args:
        model: a MultiExit network.
        example_input: a batch of at least one input (only the first row is used).

    Returns:
        One ExitCost per exit.
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
        costs.append(ExitCost(t, name, counter.get_total_flops() / 2, int(sum(params.values()))))
    model.train(was_training)
    return costs


def stage_steps(backbone: nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The backbone one stage at a time: steps[i] maps stage i-1's output (the input for i = 0) to stage i's.

    The feature-tap interface hands out prefixes (`features(x, upto=...)`); an early-exit path that carries each
    example's activations forward needs single stages. Supported: a backbone with its own `stage_steps()` (the
    ResidualMLP), kdteach's MLP, and backbones whose every stage is a submodule of that name except a final
    "pooled" stage, a global average pool (the CIFAR and torchvision ResNets).

    Args:
        backbone: a backbone with the feature-tap interface.

    Returns:
        One function per entry of backbone.stage_names.
    """
    if hasattr(backbone, "stage_steps"):
        return backbone.stage_steps()
    if isinstance(backbone, MLP):  # as in MLP.features: input dropout, then dropout(relu(linear)) per hidden layer
        steps = [lambda h, layer=layer: backbone.dropout(torch.relu(layer(h))) for layer in backbone.hidden]
        first = steps[0]
        steps[0] = lambda x: first(backbone.input_dropout(x.flatten(1)))
        return steps
    names = list(backbone.stage_names)
    pooled = names[-1] == "pooled"
    modules = [getattr(backbone, name, None) for name in (names[:-1] if pooled else names)]
    if not all(isinstance(m, nn.Module) for m in modules):
        raise ValueError(f"backbone {type(backbone).__name__} does not expose its stages one by one (see stage_steps)")
    return modules + ([lambda h: torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)] if pooled else [])


@dataclass(frozen=True)
class EarlyExitOutput:
    """What the real early-exit path returns: per example its prediction, its exit and that exit's logits."""

    predictions: torch.Tensor
    exit_index: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def early_exit_predict(model: MultiExit, x: torch.Tensor, threshold: float | Sequence[float] | torch.Tensor) -> EarlyExitOutput:
    """The confidence-threshold policy with real early stopping, stage by stage (see the module docstring).

    Every example runs up to exit 0's stage and its head; the examples not yet confident carry their activations
    forward to the next exit's stages, so no stage runs twice for an example and no stage runs after its exit.

    Args:
        model: a MultiExit classifier (run in eval mode).
        x: (N, ...) inputs.
        threshold: a confidence in [0, 1], or one per exit.

    Returns:
        EarlyExitOutput: predictions (N,) long, exit_index (N,) long and logits (N, C) of each example's exit, on
        x's device.
    """
    device = next(model.parameters()).device
    t = _confidence_thresholds(threshold, model.num_exits, device)
    steps = stage_steps(model.backbone)
    last_stage = [list(model.backbone.stage_names).index(name) for name in model.exit_names]
    was_training = model.training
    model.eval()
    n = len(x)
    predictions = torch.zeros(n, dtype=torch.long, device=device)
    exit_index = torch.full((n,), model.num_exits - 1, dtype=torch.long, device=device)
    logits = torch.zeros(n, model.num_outputs, device=device)
    remaining, h, done = torch.arange(n, device=device), x.to(device), 0
    for k, head in enumerate(model.heads):
        if len(remaining) == 0:
            break
        for step in steps[done: last_stage[k] + 1]:
            h = step(h)
        done = last_stage[k] + 1
        out = head(_head_input(h, model.head_pool))
        confidence, prediction = torch.softmax(out.double(), dim=-1).max(dim=-1)
        stop = confidence >= t[k] if k < model.num_exits - 1 else torch.ones_like(confidence, dtype=torch.bool)
        predictions[remaining[stop]], exit_index[remaining[stop]], logits[remaining[stop]] = prediction[stop], k, out[stop].float()
        remaining, h = remaining[~stop], h[~stop]  # only the examples that go on keep their activations
    model.train(was_training)
    return EarlyExitOutput(predictions.to(x.device), exit_index.to(x.device), logits.to(x.device))


@dataclass(frozen=True)
class EarlyExitRun:
    """The real early-exit path measured: where examples left, the compute spent against the ideal, the time.

    Attributes:
        threshold: the confidence threshold.
        exit_shares: share of examples leaving at each exit.
        ideal_macs: mean MACs per example of an implementation that spends exactly exit_costs at each exit.
        spent_macs: mean MACs per example counted (FLOP counter) on the real run.
        full_macs: MACs of one example through the whole network with every head.
        early_seconds, full_seconds: median wall time of the early-exit path and of one full pass with every exit.
        repeats: timed repeats (after one warm-up run each).
        matches_simulated: the same exits and predictions as confidence_exit on full-pass logits.
    """

    threshold: float
    exit_shares: tuple[float, ...]
    ideal_macs: float
    spent_macs: float
    full_macs: float
    early_seconds: float
    full_seconds: float
    repeats: int
    matches_simulated: bool


def _median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    # One warm-up call (allocations, kernel selection), then the median of `repeats` timed calls; CUDA work is
    # waited for, or the clock would stop before the GPU did.
    def timed() -> float:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    timed()
    return statistics.median(timed() for _ in range(repeats))


@torch.no_grad()
def measure_early_exit(model: MultiExit, x: torch.Tensor, threshold: float, *, repeats: int = 5) -> EarlyExitRun:
    """Runs the real early-exit path on x: checks it against the simulated policy, counts its MACs, times it.

    Args:
        model: a MultiExit classifier.
        x: (N, ...) inputs (one batch).
        threshold: the confidence threshold.
        repeats: timed repeats (>= 1), each after a warm-up run.

    Returns:
        EarlyExitRun.
    """
    repeats = check_int("repeats", repeats, minimum=1)
    device = next(model.parameters()).device
    model.eval()
    full = model(x.to(device))
    index, prediction = confidence_exit(full, threshold)
    counter = FlopCounterMode(display=False)
    with counter:
        real = early_exit_predict(model, x, threshold)
    macs = torch.tensor([c.macs for c in exit_costs(model, x)], dtype=torch.float64)
    exit_index = real.exit_index.cpu()
    same = bool(torch.equal(exit_index, index.cpu()) and torch.equal(real.predictions.cpu(), prediction.cpu()))
    shares = torch.bincount(exit_index, minlength=model.num_exits).double() / len(x)
    return EarlyExitRun(
        threshold=float(threshold),
        exit_shares=tuple(float(v) for v in shares),
        ideal_macs=float(macs[exit_index].mean()),
        spent_macs=counter.get_total_flops() / 2 / len(x),
        full_macs=float(macs[-1]),
        early_seconds=_median_seconds(lambda: early_exit_predict(model, x, threshold), device, repeats),
        full_seconds=_median_seconds(lambda: model(x.to(device)), device, repeats),
        repeats=repeats,
        matches_simulated=same,
    )
