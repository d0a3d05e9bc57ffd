"""asyncsgd.strategies.split: a large nn.Linear as row blocks, each its own layer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from asyncsgd.config import LayerwiseConfig
from asyncsgd.strategies.split import RowBlockLinear, split_linear_layers

from .test_strategies import assert_same, plain, run


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 40)  # 40x6 floats = 960 bytes: split at 256 bytes -> 10 rows per block
        self.out = nn.Linear(40, 3)  # 480 bytes: split too (256 // 160 = 1 row per block)

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)))


def test_row_blocks_compute_the_layer_and_keep_its_state_dict_layout():
    torch.manual_seed(0)
    linear = nn.Linear(7, 10)
    blocks = RowBlockLinear(linear, rows=4)
    assert [b.out_features for b in blocks.blocks] == [4, 4, 2]
    x = torch.randn(5, 7)
    torch.testing.assert_close(blocks(x), linear(x), rtol=1e-6, atol=1e-6)
    assert list(blocks.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(blocks.state_dict()["weight"], linear.weight.detach(), rtol=0, atol=0)

    other = nn.Linear(7, 10)  # loading a plain Linear's state puts its rows into the blocks
    blocks.load_state_dict(other.state_dict())
    torch.testing.assert_close(blocks(x), other(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        blocks.load_state_dict(nn.Linear(7, 9).state_dict())


def test_only_linear_layers_larger_than_the_limit_are_split():
    model = Wide()
    keys = list(model.state_dict())
    assert split_linear_layers(model, 1000) == []
    assert split_linear_layers(model, 256) == ["inp", "out"]
    assert [len(model.inp.blocks), len(model.out.blocks)] == [4, 3]
    assert list(model.state_dict()) == keys  # checkpoints and model_final.pt see the same layout
    assert len(list(model.parameters())) == 2 * (4 + 3)


@pytest.mark.parametrize("priority", [False, True])
def test_layerwise_with_split_layers_is_exact(comm, priority):
    cfg = LayerwiseConfig(split_mb=256 / 2**20, priority=priority, chunk_mb=64 / 2**20, urgent_share=0.3)
    model, strategy = run(cfg, comm, Wide)
    assert isinstance(model.inp, RowBlockLinear) and strategy.describe()["buckets"] == 4 + 3  # one per block (weight and bias)
    assert_same(model, plain(Wide))


def test_loading_refuses_a_wrong_shape_and_reports_unexpected_keys():
    blocks = RowBlockLinear(nn.Linear(7, 10), rows=4)
    state = {"weight": torch.zeros(10, 1), "bias": torch.zeros(10)}  # copy_ would broadcast it silently
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: \(10, 1\) in the checkpoint, \(10, 7\)"):
        blocks.load_state_dict(state)
    state = {**nn.Linear(7, 10).state_dict(), "junk": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="Unexpected key.*junk"):
        blocks.load_state_dict(state)


def test_frozen_and_tied_parameters_keep_what_they_were():
    frozen = nn.Linear(6, 40)
    frozen.bias.requires_grad_(False)
    assert not RowBlockLinear(frozen, rows=10).blocks[0].bias.requires_grad
    model = Wide()
    model.tied = nn.Linear(6, 40)
    model.tied.weight = model.inp.weight  # a tie: splitting one side would cut it
    assert split_linear_layers(model, 256) == ["out"]
