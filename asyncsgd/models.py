"""Models. Input channels, image size and class count always come from the dataset."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from .config import ConfigError, ModelConfig

IMAGE_MODELS = {"lenet", "cnn"}


def _flat_size(features: nn.Module, input_shape: Tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class MLP(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], num_classes: int):
        layers: list = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LeNet(nn.Module):
    """LeNet-5 layout; both convolutions are padded so 8x8 digits survive two poolings."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, tuple(input_shape))
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class CIFARNet(nn.Module):
    """design.md's CIFAR-shaped CNN: 2.4M parameters (9.5 MB of fp32 gradients) on 3x32x32."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, tuple(input_shape))
        self.classifier = nn.Sequential(
            nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def check_model_input(cfg: ModelConfig, input_shape: Tuple[int, ...]) -> None:
    if cfg.name in IMAGE_MODELS and len(input_shape) != 3:
        raise ConfigError(
            f"model={cfg.name} needs image input [channels, height, width], but the dataset gives {list(input_shape)}"
        )


def build_model(cfg: ModelConfig, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    check_model_input(cfg, input_shape)
    if cfg.name == "mlp":
        return MLP(input_shape, cfg.hidden, num_classes)
    if cfg.name == "lenet":
        return LeNet(input_shape, num_classes)
    if cfg.name == "cnn":
        return CIFARNet(input_shape, num_classes)
    raise ConfigError(f"model={cfg.name} is not known")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
