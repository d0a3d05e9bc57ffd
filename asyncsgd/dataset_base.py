"""What every dataset family builds on: the splits a loader returns and seeded augmentation.

:mod:`asyncsgd.data` (the in-memory sets, the data order, the loaders) and
:mod:`asyncsgd.image_data` (the on-disk image sets) both return
:class:`DataSplits` and wrap random training transforms in
:class:`SeededAugment`; keeping the two here lets each family import them
without importing the other.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Tuple

import torch
from torch.utils.data import Dataset
from torch.utils.data import default_collate


@dataclass
class DataSplits:
    train: Dataset
    test: Dataset
    input_shape: Tuple[int, ...]  # one sample, without the batch dimension
    num_classes: int


class Batch(Sequence):
    """A batch a dataset's ``__getitems__`` fetched whole: one indexing of each column tensor.

    DataLoader hands ``__getitems__`` every index of a batch at once. Sample by sample,
    then stacked by ``default_collate``, the digits MLP's data phase (batch 32) took 148 us
    of its ~0.6 ms step; indexed as one, 58 us (most of it DataLoader's own per-batch work).
    :func:`collate` passes the columns through. To any other collate function it is what
    ``__getitems__`` normally returns, a sequence of (input, label) samples, so a plain
    DataLoader over the same dataset still works (and gives the same tensors)."""

    def __init__(self, *columns: torch.Tensor):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i):
        return tuple(c[i] for c in self.columns)


def collate(samples):
    """The loaders' collate function: a :class:`Batch` as its columns, anything else as
    ``default_collate`` stacks it."""
    if isinstance(samples, Batch):
        return list(samples.columns)
    return default_collate(samples)


class SeededAugment(Dataset):
    """Applies a random ``transform`` to ``dataset[i]`` with torch's RNG seeded by (seed, epoch, i).

    Keyed by the sample, not by the process: the crop of sample i in epoch e is the
    same in a P-worker run, a 1-worker run and with any number of DataLoader
    processes. The training process's own RNG stream (dropout) is left untouched.
    :class:`asyncsgd.data.EpochSampler` tells it the epoch.
    """

    def __init__(self, dataset: Dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        sample_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(index)) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            x = self.transform(x)
        return x, y
