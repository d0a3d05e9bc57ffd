"""Models. Input channels, image size and class count always come from the dataset.

The small networks live here; torchvision's ImageNet networks, adapted to small
images, in :mod:`asyncsgd.image_models` (imported only when used).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, ModelConfig

TORCHVISION_MODELS = {"alexnet", "googlenet", "resnet18", "resnet50", "vgg11"}
IMAGE_MODELS = {"lenet", "cnn"} | TORCHVISION_MODELS


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
    if cfg.name in TORCHVISION_MODELS:
        _dry_run(cfg, input_shape)


def _dry_run(cfg: ModelConfig, input_shape: Tuple[int, ...]) -> None:
    """Push a batch through the network on the meta device: shapes only, no memory, no arithmetic."""
    from . import image_models

    with torch.device("meta"):
        model = image_models.build(cfg, input_shape, num_classes=2)
        try:
            model(torch.zeros(2, *input_shape))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0]
            fix = "use model.stem=small or larger images" if hasattr(cfg, "stem") else "use larger images"
            shape = "x".join(map(str, input_shape))
            raise ConfigError(f"model={cfg.name} cannot take {shape} input ({reason}); {fix}") from None


def build_model(cfg: ModelConfig, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    check_model_input(cfg, input_shape)
    if cfg.name in TORCHVISION_MODELS:
        from . import image_models

        return image_models.build(cfg, input_shape, num_classes)
    if cfg.name == "mlp":
        return MLP(input_shape, cfg.hidden, num_classes)
    if cfg.name == "lenet":
        return LeNet(input_shape, num_classes)
    if cfg.name == "cnn":
        return CIFARNet(input_shape, num_classes)
    raise ConfigError(f"model={cfg.name} is not known")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loss_and_logits(output, y: torch.Tensor, cfg: ModelConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training loss (mean over the local batch) and the main logits of a model's output.

    A model may return a tuple ``(logits, *auxiliary logits)`` in training, as
    torchvision's GoogLeNet does (GoogLeNetOutputs); each auxiliary classifier's
    loss is then added with weight ``model.aux_weight`` (0.3 in the paper).
    """
    if not isinstance(output, tuple):
        return F.cross_entropy(output, y), output
    logits, *auxiliary = output
    loss = F.cross_entropy(logits, y)
    for aux in auxiliary:
        if aux is not None:
            loss = loss + cfg.aux_weight * F.cross_entropy(aux, y)
    return loss, logits


def average_buffers(model: nn.Module, comm) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over all ranks.

    Gradient averaging keeps the weights identical on every rank, but each rank's
    running statistics come from its own batches only. Before evaluation and
    saving, the average of the P estimates is the one that has seen every batch.
    """
    buffers = [b for b in model.buffers() if b.is_floating_point()]  # registration order: same on every rank
    if not buffers or comm.size == 1:
        return
    flat = torch.cat([b.detach().reshape(-1) for b in buffers])
    comm.allreduce(flat, average=True)
    offset = 0
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
