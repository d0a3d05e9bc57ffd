"""The data-order rule: P workers with batch b visit the global batches of 1 worker with batch P*b."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from asyncsgd.config import ConfigError, DigitsConfig, SyntheticConfig
from asyncsgd.data import load_dataset, make_eval_loader, make_train_loader


def _indexed(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))


def _global_batches(dataset, P: int, b: int, seed: int, shuffle: bool, epoch: int):
    """Reassemble each step's global batch from the P ranks' local batches."""
    loaders = [make_train_loader(dataset, b, r, P, seed, shuffle) for r in range(P)]
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
    steps = [list(loader) for loader in loaders]
    assert len({len(s) for s in steps}) == 1, "every rank must take the same number of steps"
    return [sorted(torch.cat([steps[r][i][1] for r in range(P)]).tolist()) for i in range(len(steps[0]))]


@pytest.mark.parametrize("P,b", [(2, 16), (3, 5), (4, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("epoch", [0, 3])
def test_p_workers_visit_the_global_batches_of_one_worker(P, b, shuffle, epoch):
    data = _indexed(203)  # not a multiple of any global batch: the tail is dropped alike
    single = _global_batches(data, 1, P * b, seed=7, shuffle=shuffle, epoch=epoch)
    multi = _global_batches(data, P, b, seed=7, shuffle=shuffle, epoch=epoch)
    assert multi == single
    assert len(single) == 203 // (P * b)
    assert all(len(batch) == P * b for batch in single)


def test_shuffle_changes_with_epoch_and_seed_but_not_with_rank_count():
    data = _indexed(64)
    e0 = _global_batches(data, 2, 4, seed=1, shuffle=True, epoch=0)
    e1 = _global_batches(data, 2, 4, seed=1, shuffle=True, epoch=1)
    s2 = _global_batches(data, 2, 4, seed=2, shuffle=True, epoch=0)
    assert e0 != e1 and e0 != s2
    ordered = _global_batches(data, 2, 4, seed=1, shuffle=False, epoch=0)
    assert ordered[0] == list(range(8))


def test_local_batches_are_strided_slices_of_the_global_batch():
    data = _indexed(40)
    loaders = [make_train_loader(data, 5, r, 2, seed=0, shuffle=False) for r in range(2)]
    first = [next(iter(loader))[1].tolist() for loader in loaders]
    assert first == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_eval_shards_cover_the_test_set_exactly_once():
    data = _indexed(101)
    seen = []
    for r in range(3):
        for _, y in make_eval_loader(data, 16, r, 3):
            seen += y.tolist()
    assert sorted(seen) == list(range(101))


def test_global_batch_larger_than_the_data_is_refused():
    with pytest.raises(ConfigError, match="train.batch_size=40 x world_size=2 is larger than the 64 training samples"):
        make_train_loader(_indexed(64), 40, 0, 2, seed=0, shuffle=True)


def test_digits_is_the_real_bundled_set_with_a_fixed_held_out_split():
    splits = load_dataset(DigitsConfig(), seed=0)
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == 360
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    again = load_dataset(DigitsConfig(), seed=5)  # the split does not follow the training seed
    assert torch.equal(splits.test.tensors[1], again.test.tensors[1])
    x = splits.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


def test_synthetic_is_deterministic_and_shaped():
    cfg = SyntheticConfig(shape=[3, 16, 16], num_classes=4, num_train=32, num_test=8)
    a, b = load_dataset(cfg, seed=3), load_dataset(cfg, seed=3)
    x, y = a.train[5]
    assert x.shape == (3, 16, 16) and 0 <= y < 4
    assert torch.equal(x, b.train[5][0])
    assert not torch.equal(x, load_dataset(cfg, seed=4).train[5][0])


def test_subset_takes_a_seeded_prefix_and_checks_its_size():
    cfg = DigitsConfig(subset=100)
    assert len(load_dataset(cfg, seed=0).train) == 100
    with pytest.raises(ConfigError, match="dataset.subset=5000 is larger than"):
        load_dataset(DigitsConfig(subset=5000), seed=0)


def test_in_memory_batches_are_fetched_whole_and_equal_a_plain_loader():
    """digits' tensors are fetched a batch at a time (Batch, collate); the batches are a plain
    TensorDataset loader's with the same sampler, and a plain DataLoader over the set still
    works with the default collate (it sees the Batch as its samples)."""
    from torch.utils.data import DataLoader

    from asyncsgd.data import Batch, InMemory

    train = load_dataset(DigitsConfig(), seed=0).train
    assert isinstance(train, InMemory)
    fetched = train.__getitems__([5, 0, 9])
    assert isinstance(fetched, Batch) and len(fetched) == 3
    assert all(torch.equal(a, b) for a, b in zip(fetched[1], train[0]))
    loader = make_train_loader(train, 32, rank=0, world_size=2, seed=1, shuffle=True)
    loader.sampler.set_epoch(1)
    plain = DataLoader(TensorDataset(*train.tensors), batch_size=32, sampler=loader.sampler, drop_last=True)
    default = DataLoader(train, batch_size=32, sampler=loader.sampler, drop_last=True)
    got, want, other = list(loader), list(plain), list(default)
    assert len(got) == len(want) == len(other) == len(train) // 64
    for (x, y), (xp, yp), (xd, yd) in zip(got, want, other):
        assert torch.equal(x, xp) and torch.equal(y, yp) and torch.equal(x, xd) and torch.equal(y, yd)
