"""torchvision's ImageNet networks (AlexNet, GoogLeNet, ResNet-18/50, VGG-11), adapted to any image size.

Randomly initialised (``weights=None``) with the dataset's class count. The
adaptations change only what the input forces, so each network keeps the
parameter count of its ImageNet version (up to the first convolution and the
last layer) and with it the bytes every iteration communicates, which is what
decides between the strategies:

- any channel count: the first convolution takes the dataset's channels;
- ``stem=small`` (``auto`` below 64 px): the first convolution becomes 3x3 with
  stride 1 and the early downsampling goes -- ResNet: no max pooling (the usual
  CIFAR ResNet stem); GoogLeNet: no first max pooling; AlexNet: 2x2 poolings
  instead of 3x3 stride-2 ones, so 8x8 input survives all three;
- VGG-11: poolings round up (ceil mode), so 28x28 survives all five; for 32 and
  224 px this is torchvision's VGG-11 unchanged.

docs/models.md has the resulting sizes and measured costs.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torchvision.models as tvm
from torch import nn

from .config import AlexNetConfig, GoogLeNetConfig, ModelConfig, ResNet18Config, ResNet50Config, VGG11Config

SMALL_BELOW = 64  # px: stem=auto adapts inputs whose shorter side is smaller than this


def small_stem(cfg: ModelConfig, input_shape: Sequence[int]) -> bool:
    if cfg.stem == "auto":
        return min(input_shape[1:]) < SMALL_BELOW
    return cfg.stem == "small"


def build(cfg: ModelConfig, input_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    channels = int(input_shape[0])
    if isinstance(cfg, VGG11Config):
        return _vgg11(cfg, channels, num_classes)
    small = small_stem(cfg, input_shape)
    if isinstance(cfg, AlexNetConfig):
        return _alexnet(cfg, channels, num_classes, small)
    if isinstance(cfg, GoogLeNetConfig):
        return _googlenet(cfg, channels, num_classes, small)
    if isinstance(cfg, (ResNet18Config, ResNet50Config)):
        return _resnet(cfg, channels, num_classes, small)
    raise TypeError(f"no torchvision network for model={cfg.name}")


def _alexnet(cfg: AlexNetConfig, channels: int, num_classes: int, small: bool) -> nn.Module:
    model = tvm.alexnet(weights=None, num_classes=num_classes, dropout=cfg.dropout)
    f = model.features  # conv(0) relu pool(2) conv(3) relu pool(5) conv relu conv relu conv relu pool(12)
    if small:
        f[0] = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1)
        for i in (2, 5, 12):
            f[i] = nn.MaxPool2d(kernel_size=2, stride=2)
    elif channels != 3:
        f[0] = nn.Conv2d(channels, 64, kernel_size=11, stride=4, padding=2)
    return model  # torchvision's AlexNet keeps PyTorch's default initialisation, as does the new layer


def _googlenet(cfg: GoogLeNetConfig, channels: int, num_classes: int, small: bool) -> nn.Module:
    model = tvm.googlenet(
        weights=None, num_classes=num_classes, aux_logits=cfg.aux_logits, transform_input=False,
        init_weights=True, dropout=cfg.dropout, dropout_aux=cfg.dropout_aux,
    )
    if small:
        model.conv1.conv = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool1 = nn.Identity()
    elif channels != 3:
        model.conv1.conv = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # torchvision's GoogLeNet initialises convolutions from a truncated normal (std 0.01); so does the new one.
    nn.init.trunc_normal_(model.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
    return model


def _resnet(cfg, channels: int, num_classes: int, small: bool) -> nn.Module:
    make = tvm.resnet18 if isinstance(cfg, ResNet18Config) else tvm.resnet50
    model = make(weights=None, num_classes=num_classes)
    if small:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
    return model


def _vgg11(cfg: VGG11Config, channels: int, num_classes: int) -> nn.Module:
    make = tvm.vgg11_bn if cfg.batch_norm else tvm.vgg11
    model = make(weights=None, num_classes=num_classes, dropout=cfg.dropout)
    f = model.features
    for i, layer in enumerate(f):
        if isinstance(layer, nn.MaxPool2d):
            f[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
    if channels != 3:
        f[0] = nn.Conv2d(channels, 64, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(f[0].weight, mode="fan_out", nonlinearity="relu")  # as torchvision's VGG
        nn.init.zeros_(f[0].bias)
    return model
