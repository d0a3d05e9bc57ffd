"""torchvision networks: every one trains on 28x28 and 32x32 input; the ImageNet stem is torchvision's own."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from asyncsgd.config import (
    AlexNetConfig,
    ConfigError,
    GoogLeNetConfig,
    ResNet18Config,
    ResNet50Config,
    VGG11Config,
)
from asyncsgd.models import average_buffers, build_model, check_model_input, count_parameters, loss_and_logits

CONFIGS = {
    "alexnet": AlexNetConfig, "googlenet": GoogLeNetConfig, "resnet18": ResNet18Config,
    "resnet50": ResNet50Config, "vgg11": VGG11Config,
}


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28px", "32px"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_backward_on_small_images(name, shape):
    torch.manual_seed(0)
    cfg = CONFIGS[name]()
    model = build_model(cfg, shape, num_classes=7)
    x, y = torch.randn(2, *shape), torch.tensor([3, 6])
    loss, logits = loss_and_logits(model(x), y, cfg)
    assert logits.shape == (2, 7)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)  # plain logits at test time, auxiliaries or not


# torchvision's own parameter counts for 1000 classes: the ImageNet stem must change nothing.
TORCHVISION_PARAMETERS = {
    "alexnet": 61_100_840, "googlenet": 13_004_888, "resnet18": 11_689_512,
    "resnet50": 25_557_032, "vgg11": 132_863_336,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_imagenet_input_gets_torchvision_network(name):
    cfg = CONFIGS[name]() if name == "vgg11" else CONFIGS[name](stem="auto")
    with torch.device("meta"):  # shapes only: no 500 MB of VGG weights
        model = build_model(cfg, (3, 224, 224), num_classes=1000)
        reference = getattr(tvm, name)(weights=None, **({"aux_logits": True, "init_weights": True} if name == "googlenet" else {}))
    assert count_parameters(model) == count_parameters(reference) == TORCHVISION_PARAMETERS[name]
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_small_stem_keeps_resolution():
    resnet = build_model(ResNet18Config(), (3, 32, 32), 10)
    assert resnet.conv1.stride == (1, 1) and resnet.conv1.kernel_size == (3, 3)
    assert isinstance(resnet.maxpool, nn.Identity)
    with torch.no_grad():
        assert resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(torch.zeros(1, 3, 32, 32)))))).shape[-1] == 32
    imagenet_stem = build_model(ResNet18Config(stem="imagenet"), (3, 32, 32), 10)
    assert imagenet_stem.conv1.stride == (2, 2) and isinstance(imagenet_stem.maxpool, nn.MaxPool2d)
    alexnet = build_model(AlexNetConfig(), (1, 28, 28), 10)
    assert alexnet.features[0].in_channels == 1 and alexnet.features[0].kernel_size == (3, 3)


def test_googlenet_auxiliary_loss_weight_and_switch():
    torch.manual_seed(1)
    cfg = GoogLeNetConfig(dropout=0.0, dropout_aux=0.0)
    model = build_model(cfg, (3, 32, 32), 10)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3
    loss, logits = loss_and_logits(out, y, cfg)
    ce = nn.functional.cross_entropy
    expected = ce(out.logits, y) + 0.3 * ce(out.aux_logits1, y) + 0.3 * ce(out.aux_logits2, y)
    torch.testing.assert_close(loss, expected)
    assert logits is out.logits
    loss.backward()
    assert model.aux1.fc2.weight.grad is not None and model.aux2.fc2.weight.grad.abs().sum() > 0

    off = build_model(GoogLeNetConfig(aux_logits=False), (3, 32, 32), 10)
    assert off.aux1 is None and off.aux2 is None
    assert count_parameters(model) - count_parameters(off) == sum(
        p.numel() for m in (model.aux1, model.aux2) for p in m.parameters()
    )
    assert isinstance(off(x), torch.Tensor)  # no auxiliaries: the plain cross-entropy path


def test_too_small_input_is_refused_before_launch():
    check_model_input(AlexNetConfig(), (1, 8, 8))  # the small stem copes with 8x8 digits
    with pytest.raises(ConfigError, match=r"model=alexnet cannot take 1x8x8 input .*use model.stem=small"):
        check_model_input(AlexNetConfig(stem="imagenet"), (1, 8, 8))
    with pytest.raises(ConfigError, match="needs image input"):
        check_model_input(ResNet18Config(), (64,))


class _TwoRankMean:
    """Stands in for a 2-rank communicator whose other rank holds ``other``."""

    size = 2

    def __init__(self, other: torch.Tensor):
        self.other = other

    def allreduce(self, tensor, average=True):
        tensor.add_(self.other).div_(2)
        return tensor


def test_batchnorm_statistics_are_averaged_over_ranks():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([3.0, 5.0]))
    bn.num_batches_tracked.fill_(7)
    other = torch.tensor([3.0, 4.0, 1.0, 1.0])  # the other rank's running_mean then running_var
    average_buffers(model, _TwoRankMean(other))
    assert bn.running_mean.tolist() == [2.0, 3.0] and bn.running_var.tolist() == [2.0, 3.0]
    assert int(bn.num_batches_tracked) == 7  # integer counters are left alone
