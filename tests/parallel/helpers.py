"""Run real multi-process training through the CLI and compare final parameters."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterator, List

import torch

from ..conftest import read_summary, run_cli

COMMON = ["train.epochs=2", "train.max_steps=60", "train.lr=0.05", "train.momentum=0.9",
          "train.weight_decay=0.001", "train.eval_every_epochs=0", "seed=3"]


def train_and_load(workdir: Path, name: str, args: List[str]) -> Dict[str, torch.Tensor]:
    run_dir = workdir / name
    result = run_cli([*COMMON, *args, f"hydra.run.dir={run_dir}"], cwd=workdir)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    assert read_summary(run_dir)["status"] == "complete"
    return torch.load(run_dir / "model_final.pt", weights_only=True)


def max_relative_error(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)


def global_batches(n: int, batch: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """The sample indices of each of ``steps`` global batches: consecutive slices of ``randperm(n)``
    seeded with seed+epoch, the incomplete tail of each epoch dropped (design.md, "Data order")."""
    step, epoch = 0, 0
    while step < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(n // batch):
            if step == steps:
                return
            yield order[i * batch:(i + 1) * batch]
            step += 1
        epoch += 1


def reference_sgd(model_name: str, batch: int, steps: int, lr=0.05, momentum=0.9, weight_decay=0.001, seed=3,
                  k: int = 0, drain: bool = True, cosine: bool = False) -> Dict[str, torch.Tensor]:
    """Plain single-process SGD on digits, written out here to pin the semantics down.

    Global batches are consecutive slices of ``randperm(n)`` seeded with seed+epoch
    (incomplete tail dropped). With ``k`` > 0 it is delayed SGD: the gradient
    computed at step t (at the weights of step t) is applied at step t+k; steps
    0..k-1 apply nothing; at the end the k gradients still owed are applied if
    ``drain``. ``cosine``: the gradient of step t is applied with
    lr * (1 + cos(pi * t / steps)) / 2, whenever it is applied.
    """
    import torch.nn.functional as F

    from asyncsgd.config import DigitsConfig, LeNetConfig, MLPConfig
    from asyncsgd.data import load_dataset
    from asyncsgd.models import build_model

    data = load_dataset(DigitsConfig(), seed)
    x_all, y_all = data.train.tensors
    torch.manual_seed(seed)
    model_cfg = {"mlp": MLPConfig(), "lenet": LeNetConfig()}[model_name]
    model = build_model(model_cfg, data.input_shape, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    params = list(model.parameters())
    owed: List[tuple] = []  # (step, gradients)

    def apply(step: int, grads: List[torch.Tensor]) -> None:
        for p, g in zip(params, grads):
            p.grad = g
        opt.param_groups[0]["lr"] = lr * (0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0)
        opt.step()

    for step, idx in enumerate(global_batches(len(x_all), batch, steps, seed)):
        model.zero_grad()
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        owed.append((step, [p.grad.clone() for p in params]))
        if len(owed) > k:
            apply(*owed.pop(0))
    while drain and owed:
        apply(*owed.pop(0))
    return {k_: v.detach().clone() for k_, v in model.state_dict().items()}
