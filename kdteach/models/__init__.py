"""Models: MLPs, CIFAR- and ImageNet-style ResNets with named feature taps, text model builders."""
from kdteach.models.mlp import MLP
from kdteach.models.resnet import *  # noqa: F401,F403
from kdteach.models.text import *  # noqa: F401,F403
