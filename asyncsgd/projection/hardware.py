"""Hand-made profiles for hardware this machine is not: per-layer FLOPs over a device's throughput.

The layers, their gradient bytes and their FLOPs come from the real network
(torchvision's, built by :mod:`asyncsgd.models` on the meta device, so no
memory is used): a convolution costs ``2 Cin/groups k_h k_w Cout H_out W_out``
FLOPs per sample forward, a linear layer ``2 in out``; backward costs twice
forward (the gradient with respect to the input and to the weights), except
for the first layer, which needs no input gradient; parameter-free layers
(ReLU, pooling, LRN) are left out (a few percent of the arithmetic). A
device turns FLOPs into seconds at ``peak * efficiency``; the update of a
layer is memory traffic (SGD with momentum reads the weight, gradient and
momentum and writes two: 5 accesses of 4 bytes per parameter) at the device's
memory bandwidth. Every device number says where it comes from; the
efficiencies are assumptions, written as such, and the projection report
shows what halving or doubling the compute does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

from .profile import Layer, Profile


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # fp32 FLOP/s
    efficiency: float  # fraction of peak the framework reaches on convolutions and GEMMs (assumption)
    memory_bps: float  # bytes/s
    sources: Dict[str, str]


DEVICES = {
    "sandybridge-2s": Device(
        name="2 x Intel Xeon E5-2670 (Sandy Bridge-EP, 8 cores, 2.6 GHz)",
        peak_flops=2 * 8 * 2.6e9 * 16, efficiency=0.3, memory_bps=2 * 51.2e9 * 0.75,
        sources={
            "peak_flops": "2 sockets x 8 cores x 2.6 GHz x 16 fp32 FLOP/cycle (AVX: one 8-wide add and one 8-wide "
                          "multiply per cycle); Intel ARK E5-2670",
            "efficiency": "assumption: 30% of peak for Caffe with MKL on convolutions and GEMMs of that generation",
            "memory_bps": "4 channels DDR3-1600 per socket = 51.2 GB/s peak (Intel ARK), 75% of it reached "
                          "(assumption, STREAM-class)",
            "node": "a Sandy Bridge-class CPU cluster node with one worker per node using all 16 cores",
        }),
    "p100": Device(
        name="NVIDIA Tesla P100 SXM2 (DGX-1)",
        peak_flops=10.6e12, efficiency=0.35, memory_bps=732e9 * 0.75,
        sources={
            "peak_flops": "10.6 TFLOP/s fp32 (NVIDIA Tesla P100 SXM2 datasheet)",
            "efficiency": "assumption: 35% of peak for cuDNN 5/6-era training of AlexNet/GoogLeNet (for scale: "
                          "BVLC's GoogLeNet on a K40c, batch 128, forward+backward 1688.8 ms -- "
                          "BVLC/caffe models/bvlc_googlenet/readme.md -- is ~16% of that GPU's 4.29 TFLOP/s peak)",
            "memory_bps": "732 GB/s HBM2 (datasheet), 75% of it reached (assumption)",
        }),
}


def layer_flops(model, input_shape: Tuple[int, ...]) -> List[Tuple[str, str, List[int], float]]:
    """(name, type, tensor bytes, forward FLOPs per sample) for each layer that owns parameters."""
    import torch
    from torch import nn

    from .measure import _layers

    flops: Dict[int, float] = {}
    hooks = []
    for _, module, _ in _layers(model):
        def hook(m, args, out, key=id(module)):
            if isinstance(m, nn.Conv2d):
                _, _, h, w = out.shape
                kh, kw = m.kernel_size
                flops[key] = flops.get(key, 0.0) + 2.0 * m.in_channels / m.groups * kh * kw * m.out_channels * h * w
            elif isinstance(m, nn.Linear):
                flops[key] = flops.get(key, 0.0) + 2.0 * m.in_features * m.out_features
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                flops[key] = flops.get(key, 0.0) + 4.0 * out[0].numel()
        hooks.append(module.register_forward_hook(hook))
    with torch.device("meta"):
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return [(n, type(m).__name__, [p.numel() * 4 for p in ps], flops.get(id(m), 0.0)) for n, m, ps in _layers(model)]


def handmade_profile(model_name: str, input_shape: Tuple[int, ...], batch: int, device: str,
                     classes: int = 1000, name: str = "") -> Profile:
    """A profile of torchvision's ``model_name`` at ``batch`` per worker on ``device`` (see the module docstring)."""
    import torch

    from ..config import GROUPS
    from ..models import build_model

    dev = DEVICES[device]
    cfg = GROUPS["model"][model_name]()
    with torch.device("meta"):
        model = build_model(cfg, tuple(input_shape), classes)
    model.train()
    rate = dev.peak_flops * dev.efficiency
    layers = []
    rows = layer_flops(model, tuple(input_shape))
    for i, (n, t, tensors, f) in enumerate(rows):
        forward = batch * f / rate
        backward = forward * (1.0 if i == 0 else 2.0)
        update = sum(tensors) / 4 * 5 * 4 / dev.memory_bps
        layers.append(Layer(name=n, type=t, tensors=tensors, forward_s=forward, backward_s=backward, update_s=update))
    total_flops = sum(f for *_, f in rows)
    shape = "x".join(map(str, input_shape))
    return Profile(
        layers=layers, name=name or f"{model_name}-b{batch}-{device}", model=model_name, input_shape=list(input_shape),
        batch_size=batch, device=dev.name,
        source=(f"hand-made: per-layer FLOPs of torchvision's {model_name} at {shape} ({total_flops / 1e9:.2f} GFLOP "
                f"forward per sample, computed from the layers), backward = 2 x forward (1 x for the first layer), "
                f"at {dev.efficiency:.0%} of {dev.peak_flops / 1e12:.3g} TFLOP/s; updates at the memory bandwidth"),
        sources={**dev.sources, "flops": "computed from the layer shapes (asyncsgd.projection.hardware.layer_flops)",
                 "batch_size": "per worker; see docs/projection.md for why this batch"},
        step={"update_all_s": sum(l.update_s for l in layers)},
        measurements={"forward_gflop_per_sample": total_flops / 1e9, "device": device},
    )
