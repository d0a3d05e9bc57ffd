"""What the first training step shows about a model: where each parameter is first used in
forward, and the order in which backward finishes the gradients.

``layerwise`` needs both to place its waits and to order its reductions, and the
parameter registration order answers neither: torchvision's GoogLeNet registers
its auxiliary classifiers after the last inception block but runs them in the
middle, and a parameter can be used outside the module that owns it
(``F.linear(h, self.head.weight)``). So, as DDP rebuilds its buckets after the
first iteration, the first step is observed:

- forward: a :class:`~torch.overrides.TorchFunctionMode` sees every torch call;
  the first call that takes a parameter records it, together with the innermost
  module running at that moment (global module hooks keep the stack). Waiting
  for that parameter's reduction in that module's forward pre-hook is therefore
  always early enough.
- backward: post-accumulate-grad hooks give the order gradients become ready.

Only one rank's observation is used (rank 0's, broadcast), so every rank builds
the same buckets and lanes even if control flow differed between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class Observation:
    """Plain values only (it is broadcast as an object)."""

    ready: List[int] = field(default_factory=list)  # parameter indices, in the order their gradients were ready
    first_use: Dict[int, int] = field(default_factory=dict)  # parameter index -> position of its first use
    used_in: Dict[int, str] = field(default_factory=dict)  # parameter index -> module name ('' = the model)


class _Uses(TorchFunctionMode):
    def __init__(self, recorder: "Recorder"):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.recorder.saw(tree_flatten((args, kwargs or {}))[0])
        return func(*args, **(kwargs or {}))


class Recorder:
    """Observes the first training-mode forward and backward of ``model`` after it is created."""

    def __init__(self, model: nn.Module, params: List[nn.Parameter]):
        self.model = model
        self.index = {id(p): i for i, p in enumerate(params)}
        self.names = {id(m): name for name, m in model.named_modules()}
        self.obs = Observation()
        self._stack: List[str] = []
        self._mode: Optional[_Uses] = None
        self._uses = 0
        self._hooks = [model.register_forward_pre_hook(self._forward_starts),
                       model.register_forward_hook(self._forward_ends)]
        self.forward_seen = False

    # -- forward -------------------------------------------------------------------------------
    def _forward_starts(self, module, args) -> None:
        if self.forward_seen or not module.training or not torch.is_grad_enabled():
            return
        self._stack = [""]
        self._hooks += [nn.modules.module.register_module_forward_pre_hook(self._enter),
                        nn.modules.module.register_module_forward_hook(self._leave)]
        self._mode = _Uses(self)
        self._mode.__enter__()

    def _forward_ends(self, module, args, output) -> None:
        if self._mode is None:
            return
        self._mode.__exit__(None, None, None)
        self._mode = None
        self.forward_seen = True
        for h in self._hooks[2:]:
            h.remove()
        del self._hooks[2:]

    def _enter(self, module, args) -> None:
        name = self.names.get(id(module))
        if name is not None:
            self._stack.append(name)

    def _leave(self, module, args, output) -> None:
        if id(module) in self.names and len(self._stack) > 1:
            self._stack.pop()

    def saw(self, values) -> None:
        for value in values:
            i = self.index.get(id(value)) if isinstance(value, nn.Parameter) else None
            if i is not None and i not in self.obs.first_use:
                self.obs.first_use[i] = self._uses
                self.obs.used_in[i] = self._stack[-1]
                self._uses += 1

    # -- backward ------------------------------------------------------------------------------
    def grad_ready(self, index: int) -> None:
        self.obs.ready.append(index)

    def close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self._hooks:
            h.remove()
        self._hooks = []
