"""Datasets and the exact data order of design.md ("Data order").

Every epoch draws one permutation from ``seed + epoch`` (or keeps the natural
order), cuts it into global batches of ``world_size * batch_size`` samples, and
gives rank r the samples at positions r, r+P, r+2P... of each global batch. So a
P-worker run visits exactly the global batches of a 1-worker run with batch P*b.
torch's DistributedSampler (strided shards of one seeded permutation, then
batches of b consecutive shard elements) produces exactly that order, so it is
used as is; incomplete global batches at the end of an epoch are dropped so that
every step averages over the same B samples in both runs.

Random augmentation keeps that promise too:
:class:`asyncsgd.dataset_base.SeededAugment` draws each sample's crop from
(seed, epoch, index), so the P-worker and 1-worker runs see the same pixels,
whichever process decodes them. This module holds the in-memory sets (digits,
synthetic), picks the family of a ``dataset=`` choice and builds the loaders;
the on-disk image sets live in :mod:`asyncsgd.image_data` (imported only when
used: torchvision is slow to import). Both families build on
:mod:`asyncsgd.dataset_base`; image_data never imports this module.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from .config import ConfigError, DatasetConfig, ImageNetConfig, TorchvisionSetConfig
from .dataset_base import Batch, DataSplits, SeededAugment, collate  # noqa: F401 - SeededAugment re-exported


def _on_disk(cfg: DatasetConfig) -> bool:
    return isinstance(cfg, (TorchvisionSetConfig, ImageNetConfig))


def dataset_input_shape(cfg: DatasetConfig) -> Tuple[int, ...]:
    """Sample shape known from the config alone (for checks before workers start)."""
    if cfg.name == "digits":
        return (1, 8, 8)
    if cfg.name == "synthetic":
        return tuple(int(s) for s in cfg.shape)
    if _on_disk(cfg):
        from . import image_data

        return image_data.input_shape(cfg)
    raise ConfigError(f"dataset={cfg.name} has no known input shape")


DIGITS_SAMPLES = 1797  # scikit-learn's bundled set


def dataset_sizes(cfg: DatasetConfig) -> Optional[Tuple[int, int]]:
    """(train, test) sample counts known from the config alone; None for on-disk sets."""
    if cfg.name == "digits":
        test = math.ceil(cfg.test_fraction * DIGITS_SAMPLES)  # how train_test_split rounds a fraction
        return DIGITS_SAMPLES - test, test
    if cfg.name == "synthetic":
        return cfg.num_train, cfg.num_test
    return None


def check_sizes(cfg: DatasetConfig, batch_size: int, world_size: int) -> None:
    """dataset.subset / test_subset and the global batch against the sample counts (before launch).

    On-disk sets are counted only when loaded, so for them the same checks run in the workers.
    """
    sizes = dataset_sizes(cfg)
    if sizes is None:
        return
    train, test = sizes
    if cfg.subset is not None and cfg.subset > train:
        raise ConfigError(f"dataset.subset={cfg.subset} is larger than the {train} training samples")
    if cfg.test_subset is not None and cfg.test_subset > test:
        raise ConfigError(f"dataset.test_subset={cfg.test_subset} is larger than the {test} test samples")
    usable = cfg.subset or train
    if batch_size * world_size > usable:
        raise ConfigError(f"train.batch_size={batch_size} x world_size={world_size} is larger than the "
                          f"{usable} training samples; lower train.batch_size")


def check_dataset_root(cfg: DatasetConfig) -> None:
    """For on-disk sets: raise ConfigError (one line) unless dataset.root has the expected layout."""
    if _on_disk(cfg):
        from . import image_data

        image_data.check_root(cfg)


def load_dataset(cfg: DatasetConfig, seed: int) -> DataSplits:
    if cfg.name == "digits":
        splits = _digits(cfg)
    elif cfg.name == "synthetic":
        splits = _synthetic(cfg, seed)
    elif _on_disk(cfg):
        from . import image_data

        splits = image_data.load(cfg, seed)
    else:
        raise ConfigError(f"dataset={cfg.name} is not known")
    if cfg.subset is not None:
        splits.train = _first_of_permutation(splits.train, cfg.subset, seed, "dataset.subset", "training")
    if cfg.test_subset is not None:
        # A fixed permutation, not the run's seed: runs that differ in seed are scored on the same images.
        splits.test = _first_of_permutation(splits.test, cfg.test_subset, 0, "dataset.test_subset", "test")
    return splits


def _first_of_permutation(dataset: Dataset, n: int, seed: int, key: str, what: str) -> Dataset:
    if n > len(dataset):
        raise ConfigError(f"{key}={n} is larger than the {len(dataset)} {what} samples")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:n].tolist())


def _digits(cfg) -> DataSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=digits.target
    )
    # Standardize with training statistics only: the held-out split stays unseen.
    mean, std = float(x_train.mean()), float(x_train.std())

    def tensors(x, y):
        x = torch.from_numpy((x - mean) / std).unsqueeze(1)  # N x 1 x 8 x 8
        return InMemory(x, torch.from_numpy(y).long())

    return DataSplits(tensors(x_train, y_train), tensors(x_test, y_test), (1, 8, 8), 10)


class InMemory(TensorDataset):
    """Samples held as tensors; a batch is fetched with one indexing per tensor (:class:`Batch`)."""

    def __getitems__(self, indices) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return Batch(*(t[index] for t in self.tensors))


class SyntheticImages(Dataset):
    """Class-conditional Gaussian samples, each generated on demand from (seed, index).

    Generating on demand keeps large shapes (3x224x224) out of memory while every
    rank still sees bit-identical samples.
    """

    def __init__(self, shape, num_classes: int, size: int, noise: float, seed: int, means: torch.Tensor):
        self.shape, self.size, self.noise, self.seed = tuple(shape), size, noise, seed
        self.means = means
        self.labels = torch.randint(num_classes, (size,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        label = int(self.labels[index])
        x = self.means[label] + self.noise * torch.randn(self.shape, generator=g)
        return x, label


def _synthetic(cfg, seed: int) -> DataSplits:
    shape = tuple(int(s) for s in cfg.shape)
    means = torch.randn((cfg.num_classes, *shape), generator=torch.Generator().manual_seed(seed + 17))
    train = SyntheticImages(shape, cfg.num_classes, cfg.num_train, cfg.noise, seed * 2 + 1, means)
    test = SyntheticImages(shape, cfg.num_classes, cfg.num_test, cfg.noise, seed * 2 + 2, means)
    return DataSplits(train, test, shape, cfg.num_classes)


class EpochSampler(DistributedSampler):
    """DistributedSampler that also passes the epoch to the datasets it wraps.

    ``set_epoch`` must run before ``iter(loader)``: DataLoader processes receive a
    copy of the dataset (with its epoch) when iteration starts, which is also why
    the loaders never keep their processes alive across epochs.
    """

    _skip = 0

    def skip_next(self, samples: int) -> None:
        """The next iteration starts ``samples`` into this rank's share (resuming mid-epoch);
        the order is unchanged, nothing is loaded for the skipped part."""
        self._skip = samples

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return itertools.islice(super().__iter__(), skip, None)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        inner = self.dataset
        while inner is not None:  # through Subset and other wrappers that expose .dataset
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)
            inner = getattr(inner, "dataset", None)


def make_train_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int, shuffle: bool, num_workers: int = 0
):
    """Loader of this rank's local batches; call ``loader.sampler.set_epoch(e)`` each epoch.

    ``num_workers`` DataLoader processes decode and augment; the batches do not depend on it.
    """
    if len(dataset) < batch_size * world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} x world_size={world_size} is larger than the "
            f"{len(dataset)} training samples; lower train.batch_size"
        )
    sampler = EpochSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                      collate_fn=collate)


def make_eval_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int = 0):
    """This rank's strided share of the test set, every sample exactly once across ranks."""
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    return num_samples // (batch_size * world_size)
