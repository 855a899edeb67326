"""ResNets with named feature taps: CIFAR-style (He et al. 2016, section 4.2) and torchvision's ImageNet ResNets.

Every model here has the same interface as kdteach.models.MLP, so readouts, probes, SimKD-style students and
multi-exit wrappers work on any of them without forward hooks:

    model.stage_names          ("stem", "layer1", "layer2", "layer3", "pooled")
    model.features(x, upto=)   {stage name: output} in one forward pass, stopping after `upto`
    model(x)                   logits = model.classifier(features["pooled"])
    model.classifier           the nn.Linear head on "pooled"
    model.feature_dim          the width of "pooled"

A CIFAR ResNet of depth 6n + 2 has a 3x3 stem and three stages of n BasicBlocks at widths (w, 2w, 4w), the last
two halving the resolution: depth 20 and width 16 is He et al.'s ResNet-20 (0.27M parameters).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet_cifar",
    "resnet_student",
    "resnet_teacher",
    "STUDENT_CONFIG",
    "TEACHER_CONFIG",
    "TorchvisionResNet",
    "resnet18",
    "resnet50",
    "stage_feature_vectors",
]

# The course's presets, at 32x32 inputs: a small student and a teacher with ~30x its parameters.
STUDENT_CONFIG = {"depth": 8, "width": 16}  # 78k parameters
TEACHER_CONFIG = {"depth": 20, "width": 32}  # 1.1M parameters


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; a 1x1 conv-BN shortcut where the shape changes.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: 2 halves the resolution (first block of a stage), 1 keeps it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, H, W) -> (N, out, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _check_upto(upto: str | None, stage_names: Sequence[str]) -> None:
    if upto is not None and upto not in stage_names:
        raise ValueError(f"upto must be one of {tuple(stage_names)}, got {upto!r}")


def _run_stages(stages: Sequence[tuple[str, nn.Module]], x: torch.Tensor, upto: str | None) -> dict[str, torch.Tensor]:
    # One pass through the named stages, keeping each output; "pooled" (global average pool) ends every ResNet.
    taps: dict[str, torch.Tensor] = {}
    h = x
    for name, module in stages:
        h = module(h)
        taps[name] = h
        if name == upto:
            return taps
    taps["pooled"] = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
    return taps


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, three stages of BasicBlocks at widths (w, 2w, 4w), global pool, linear head.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...): n blocks per stage.
        width: channels of the stem and the first stage.
        num_classes: outputs of the head.
        in_channels: channels of the input images.
    """

    stage_names: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "pooled")

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}")
        for name, value in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        blocks = (depth - 2) // 6
        self.depth, self.width, self.num_classes = depth, width, num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = _stage(width, width, blocks, stride=1)
        self.layer2 = _stage(width, 2 * width, blocks, stride=2)
        self.layer3 = _stage(2 * width, 4 * width, blocks, stride=2)
        self.feature_dim = 4 * width
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Stage outputs by name in one forward pass.

        Args:
            x: (N, C, H, W) float images.
            upto: the last stage to compute (one of stage_names); None computes all.

        Returns:
            {"stem": (N, w, H, W), "layer1": ..., "layer3": (N, 4w, H/4, W/4), "pooled": (N, 4w)}, up to `upto`.
        """
        _check_upto(upto, self.stage_names)
        stages = (("stem", self.stem), ("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3))
        return _run_stages(stages, x, upto)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return self.classifier(self.features(x)["pooled"])


def resnet_cifar(depth: int, width: int, num_classes: int, in_channels: int = 3) -> CifarResNet:
    """A CIFAR-style ResNet of the given depth (6n + 2) and base width; see CifarResNet."""
    return CifarResNet(depth, width, num_classes, in_channels)


def resnet_student(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """The course's small student: ResNet-8 at width 16 (STUDENT_CONFIG, 78k parameters)."""
    return CifarResNet(num_classes=num_classes, in_channels=in_channels, **STUDENT_CONFIG)


def resnet_teacher(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """The course's teacher: ResNet-20 at width 32 (TEACHER_CONFIG, 1.1M parameters)."""
    return CifarResNet(num_classes=num_classes, in_channels=in_channels, **TEACHER_CONFIG)


class TorchvisionResNet(nn.Module):
    """torchvision's ImageNet ResNet (224-pixel inputs) behind the feature-tap interface.

    Stages: "stem" (7x7 conv, BN, ReLU, max pool), "layer1" ... "layer4", "pooled". The ImageNet head is replaced
    by a fresh nn.Linear(feature_dim, num_classes).

    Args:
        arch: "resnet18" or "resnet50".
        num_classes: outputs of the new head.
        weights: None (random initialisation, the default; nothing is downloaded) or a torchvision weights name such
            as "IMAGENET1K_V1" (downloaded by torchvision on first use; meant for Colab).
    """

    stage_names: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4", "pooled")

    def __init__(self, arch: str, num_classes: int, *, weights: str | None = None) -> None:
        super().__init__()
        import torchvision

        if arch not in ("resnet18", "resnet50"):
            raise ValueError(f"arch must be 'resnet18' or 'resnet50', got {arch!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        net = getattr(torchvision.models, arch)(weights=weights)
        self.arch, self.num_classes = arch, num_classes
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor, *, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Stage outputs by name in one forward pass, stopping after `upto` (see CifarResNet.features)."""
        _check_upto(upto, self.stage_names)
        stages = (("stem", self.stem), ("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3), ("layer4", self.layer4))
        return _run_stages(stages, x, upto)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) images -> (N, num_classes) logits."""
        return self.classifier(self.features(x)["pooled"])


def resnet18(num_classes: int, *, weights: str | None = None) -> TorchvisionResNet:
    """torchvision's ResNet-18 with a new head and named stages (weights=None: nothing is downloaded)."""
    return TorchvisionResNet("resnet18", num_classes, weights=weights)


def resnet50(num_classes: int, *, weights: str | None = None) -> TorchvisionResNet:
    """torchvision's ResNet-50 with a new head and named stages (weights=None: nothing is downloaded)."""
    return TorchvisionResNet("resnet50", num_classes, weights=weights)


def stage_feature_vectors(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One vector per example for every stage: global average pooling over space for (N, C, H, W) maps.

    Args:
        features: the output of a model's features().

    Returns:
        {stage name: (N, C)} (2-D stages pass through unchanged).
    """
    return {name: (h.mean(dim=(2, 3)) if h.dim() == 4 else h.flatten(1)) for name, h in features.items()}
