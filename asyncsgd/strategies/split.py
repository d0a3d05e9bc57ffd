"""Large fully connected layers computed as row blocks, each block a layer of its own.

For ``layerwise`` (``strategy.split_mb``). In a model like design.md's CNN one
fully connected layer holds most of the gradient bytes, and as one layer it is
one unit of everything the schedule can overlap: its whole weight gradient is
finished by one matrix product at the end of its backward (the link has had
nothing to carry since the layers after it), and its next forward starts only
once all of it has arrived and been updated (the link then idles through the
rest of the forward and the start of backward).

Cut by output rows, ``y = x W^T + b`` is ``cat_k(x W_k^T + b_k)``: the same
arithmetic per output element (the gradient flowing back to the layer's input
is a sum over blocks, equal to the whole product's up to float rounding,
about 1e-6 relative). With each block its own parameter (and module):

- backward finishes the blocks one by one, so the first block's reduction
  starts after one block's product, not after the whole layer's;
- the next forward waits for each block just before its own product, so the
  last block to arrive delays only the last slice of the layer's compute.

The model's ``state_dict`` keeps the original layout (``weight``, ``bias``),
so checkpoints, ``model_final.pt`` and comparisons with other strategies see
one ``nn.Linear``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

import torch
from torch import nn


class _Block(nn.Linear):
    """One row block; its parent loads and saves it as part of the whole weight."""

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # the parent reads the full tensors
        return None


class RowBlockLinear(nn.Module):
    """An ``nn.Linear`` whose output rows are split into blocks of at most ``rows`` rows."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        has_bias = linear.bias is not None
        blocks = []
        for r0 in range(0, self.out_features, rows):
            r1 = min(r0 + rows, self.out_features)
            block = _Block(self.in_features, r1 - r0, bias=has_bias, device=linear.weight.device,
                           dtype=linear.weight.dtype)
            with torch.no_grad():
                block.weight.copy_(linear.weight[r0:r1])
                if has_bias:
                    block.bias.copy_(linear.bias[r0:r1])
            block.weight.requires_grad_(linear.weight.requires_grad)
            if has_bias:
                block.bias.requires_grad_(linear.bias.requires_grad)
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(x) for block in self.blocks], dim=-1)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        # The whole weight and bias are new tensors (copies of the blocks), so keep_vars=True cannot
        # hand out the parameters themselves; nothing in asyncsgd asks for them.
        if keep_vars:
            raise NotImplementedError("RowBlockLinear.state_dict(keep_vars=True): its weight is several parameters")
        if destination is None:
            destination = OrderedDict()
        for name in ("weight", "bias"):
            parts = [getattr(block, name) for block in self.blocks]
            if parts[0] is not None:
                with torch.no_grad():
                    destination[prefix + name] = torch.cat([p.detach() for p in parts])
        return destination

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                                   and k[len(prefix):] not in ("weight", "bias"))
        for name in ("weight", "bias"):
            if getattr(self.blocks[0], name) is None:
                continue
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            full, r0 = state_dict[key], 0
            shape = (self.out_features, self.in_features) if name == "weight" else (self.out_features,)
            if tuple(full.shape) != shape:
                error_msgs.append(f"size mismatch for {key}: {tuple(full.shape)} in the checkpoint, "
                                  f"{shape} in the model")
                continue
            with torch.no_grad():
                for block in self.blocks:
                    part = getattr(block, name)
                    part.copy_(full[r0: r0 + part.shape[0]])
                    r0 += part.shape[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={len(self.blocks)}"


def block_rows(out_features: int, row_bytes: int, max_bytes: int) -> int:
    """Rows per block: as few equal blocks as keep each within ``max_bytes`` (the last one shorter)."""
    blocks = min(out_features, -(-out_features // max(1, max_bytes // row_bytes)))
    return -(-out_features // blocks)


def split_linear_layers(model: nn.Module, max_bytes: int) -> List[str]:
    """Replace, in place, every ``nn.Linear`` whose weight is larger than ``max_bytes`` by a
    :class:`RowBlockLinear` of as few equal blocks as keep each within ``max_bytes`` (at least
    one row each); returns the names replaced."""
    replaced = []
    # a layer whose parameters another module also holds (tied weights) keeps its tie: not split
    holders: Dict[nn.Parameter, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[p] = holders.get(p, 0) + 1
    parents: Dict[nn.Module, int] = {}
    for module in model.modules():
        for child in module.children():
            parents[child] = parents.get(child, 0) + 1
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear or parents[child] > 1 or any(holders[p] > 1 for p in child.parameters()):
                continue
            row_bytes = child.in_features * child.weight.element_size()
            if child.out_features * row_bytes <= max_bytes:
                continue
            setattr(module, child_name, RowBlockLinear(child, block_rows(child.out_features, row_bytes, max_bytes)))
            replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced
