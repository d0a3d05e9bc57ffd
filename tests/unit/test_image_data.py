"""On-disk image sets: read through torchvision from files in the real formats, sharded, checked up front."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncsgd.config import (
    CIFAR10Config,
    CIFAR100Config,
    ConfigError,
    FashionMNISTConfig,
    ImageNetConfig,
    MNISTConfig,
)
from asyncsgd.data import check_dataset_root, dataset_input_shape, load_dataset, make_train_loader
from asyncsgd import idx
from asyncsgd.image_data import STATS
from ..datafiles import labelled_images, write_cifar10, write_cifar100, write_image_folder, write_mnist


def _pixels(x: torch.Tensor, name: str) -> np.ndarray:
    """Undo the normalisation: back to 0..255 pixel values."""
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in STATS[name])
    return ((x * std + mean) * 255).numpy()


def test_mnist_reads_the_idx_files_pixel_for_pixel(mnist_root):
    data = load_dataset(MNISTConfig(root=str(mnist_root)), seed=0)
    assert (len(data.train), len(data.test), data.input_shape, data.num_classes) == (200, 50, (1, 28, 28), 10)
    images, labels = labelled_images(200, 10, (28, 28), seed=1)  # what write_mnist wrote for train
    for i in (0, 7, 199):
        x, y = data.train[i]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        np.testing.assert_allclose(_pixels(x, "mnist")[0], images[i], atol=1e-3)
        assert y == labels[i]


def test_cifar10_reads_the_pickled_batches_in_order(cifar10_root):
    data = load_dataset(CIFAR10Config(root=str(cifar10_root), augment=False), seed=0)
    assert (len(data.train), len(data.test), data.input_shape, data.num_classes) == (100, 20, (3, 32, 32), 10)
    images, labels = labelled_images(20, 10, (32, 32, 3), seed=12)  # data_batch_2 holds samples 20..39
    x, y = data.train[20 + 5]
    np.testing.assert_allclose(_pixels(x, "cifar10").transpose(1, 2, 0), images[5], atol=1e-3)
    assert y == labels[5]


def test_fashion_mnist_and_cifar100_layouts(tmp_path):
    fashion = load_dataset(FashionMNISTConfig(root=str(write_mnist(tmp_path / "f", folder="FashionMNIST"))), seed=0)
    assert (len(fashion.train), len(fashion.test), fashion.input_shape) == (200, 50, (1, 28, 28))
    root = write_cifar100(tmp_path / "c")
    check_dataset_root(CIFAR100Config(root=str(root)))
    cifar = load_dataset(CIFAR100Config(root=str(root)), seed=0)
    assert (len(cifar.train), len(cifar.test), cifar.num_classes) == (200, 100, 100)
    _, labels = labelled_images(100, 100, (32, 32, 3), seed=31)
    assert [cifar.test[i][1] for i in range(100)] == labels.tolist()


def test_cifar_augmentation_is_a_function_of_seed_epoch_and_index(cifar10_root):
    data = load_dataset(CIFAR10Config(root=str(cifar10_root), augment=True), seed=3)
    plain = load_dataset(CIFAR10Config(root=str(cifar10_root), augment=False), seed=3)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = [data.train[i][0] for i in range(30)]
    assert torch.equal(torch.rand(1), before), "augmentation must not consume the training RNG (dropout)"
    assert all(torch.equal(x, data.train[i][0]) for i, x in enumerate(a))  # same sample, same epoch: same crop
    assert sum(not torch.equal(x, plain.train[i][0]) for i, x in enumerate(a)) >= 20  # crops/flips happen
    data.train.set_epoch(1)
    assert sum(not torch.equal(x, data.train[i][0]) for i, x in enumerate(a)) >= 20  # a new epoch, new crops
    other_seed = load_dataset(CIFAR10Config(root=str(cifar10_root), augment=True), seed=4)
    assert sum(not torch.equal(x, other_seed.train[i][0]) for i, x in enumerate(a)) >= 20


def test_image_folder_uses_train_classes_for_val(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("a", "b", "c"))
    for img in (root / "val" / "a").iterdir():  # val may lack a class: b and c keep their indices
        img.unlink()
    (root / "val" / "a").rmdir()
    data = load_dataset(ImageNetConfig(root=str(root), size=24, workers=0), seed=0)
    assert data.num_classes == 3 and data.input_shape == (3, 24, 24)
    assert len(data.train) == 12 and len(data.test) == 4
    assert sorted(int(data.test[i][1]) for i in range(4)) == [1, 1, 2, 2]
    x, _ = data.train[0]
    xv, _ = data.test[0]
    assert x.shape == xv.shape == (3, 24, 24)


def test_image_folder_val_is_resized_then_center_cropped(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "f", classes=("a",), per_class=1, per_class_val=0)
    ramp = np.tile(np.arange(80, dtype=np.uint8)[None, :, None] * 3, (40, 1, 3))  # 80 wide, 40 high, grey ramp
    Image.fromarray(ramp).save(root / "val" / "a" / "ramp.png")
    data = load_dataset(ImageNetConfig(root=str(root), size=20, val_resize=20), seed=0)
    x, _ = data.test[0]
    pixels = _pixels(x, "imagenet")
    # Shorter side 40 -> 20, so 80 -> 40 wide; the center crop keeps columns 10..29 of 40: the middle of the ramp.
    assert x.shape == (3, 20, 20)
    assert abs(pixels[0, :, 0].mean() - 3 * 80 * 10.5 / 40) < 6 and abs(pixels[0, :, -1].mean() - 3 * 80 * 29.5 / 40) < 6


def _global_batches(dataset, world_size: int, batch: int, epoch: int, num_workers: int = 0):
    """Each step's global batch, ranks' local batches interleaved as the strided sharding lays them out."""
    loaders = [make_train_loader(dataset, batch, r, world_size, seed=5, shuffle=True, num_workers=num_workers)
               for r in range(world_size)]
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
    steps = []
    for local in zip(*loaders):
        x = torch.stack([b[0] for b in local], dim=1).flatten(0, 1)  # row j*P + r = rank r's row j
        y = torch.stack([b[1] for b in local], dim=1).flatten(0, 1)
        steps.append((x, y))
    return steps


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet"])
def test_two_workers_see_the_global_batches_of_one(name, mnist_root, cifar10_root, folder_root):
    cfg = {
        "mnist": MNISTConfig(root=str(mnist_root)),
        "cifar10": CIFAR10Config(root=str(cifar10_root), augment=True),  # random crops must match too
        "imagenet": ImageNetConfig(root=str(folder_root), size=16),
    }[name]
    train = load_dataset(cfg, seed=5).train
    for epoch in (0, 1):
        one = _global_batches(train, 1, 4, epoch)
        two = _global_batches(train, 2, 2, epoch)
        assert len(one) == len(two) == len(train) // 4
        for (x1, y1), (x2, y2) in zip(one, two):
            assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_dataloader_processes_do_not_change_the_batches(folder_root):
    train = load_dataset(ImageNetConfig(root=str(folder_root), size=16), seed=1).train
    in_process = _global_batches(train, 2, 2, epoch=3, num_workers=0)
    two_processes = _global_batches(train, 2, 2, epoch=3, num_workers=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, two_processes))


def test_subset_takes_the_first_n_of_a_seeded_permutation(mnist_root):
    full = load_dataset(MNISTConfig(root=str(mnist_root)), seed=2)
    part = load_dataset(MNISTConfig(root=str(mnist_root), subset=30, test_subset=10), seed=2)
    assert len(part.train) == 30 and len(part.test) == 10
    order = torch.randperm(200, generator=torch.Generator().manual_seed(2))[:30]
    assert [part.train[i][1] for i in range(30)] == [full.train[int(j)][1] for j in order]
    with pytest.raises(ConfigError, match="dataset.subset=500 is larger than the 200 training samples"):
        load_dataset(MNISTConfig(root=str(mnist_root), subset=500), seed=2)


def test_input_shapes_are_known_before_loading():
    assert dataset_input_shape(MNISTConfig()) == (1, 28, 28)
    assert dataset_input_shape(CIFAR10Config()) == (3, 32, 32)
    assert dataset_input_shape(ImageNetConfig(size=160)) == (3, 160, 160)


def test_download_flag_with_files_present_needs_no_network(mnist_root):
    data = load_dataset(MNISTConfig(root=str(mnist_root), download=True), seed=0)
    assert len(data.train) == 200


# ---------------------------------------------------------------- root checks, one line each
def _error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        check_dataset_root(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_root_checks_name_what_is_expected_and_how_to_get_it(tmp_path, mnist_root, cifar10_root):
    assert "needs dataset.root=DIR" in _error(MNISTConfig(root=None))
    assert "download=true" in _error(MNISTConfig(root=None))
    assert "does not exist" in _error(MNISTConfig(root=str(tmp_path / "nowhere")))
    (tmp_path / "file").write_text("x")
    assert "is a file" in _error(CIFAR10Config(root=str(tmp_path / "file")))
    msg = _error(CIFAR10Config(root=str(tmp_path)))
    assert "cifar-10-batches-py lacks data_batch_1" in msg and "dataset.download=true" in msg
    # Pointing at the set's own folder: say which directory to use instead.
    assert f"set dataset.root={mnist_root}" in _error(MNISTConfig(root=str(mnist_root / "MNIST")))
    check_dataset_root(MNISTConfig(root=str(mnist_root / "MNIST" / "raw")))  # the four files flat: a layout too
    assert f"set dataset.root={cifar10_root}" in _error(CIFAR10Config(root=str(cifar10_root / "cifar-10-batches-py")))
    check_dataset_root(MNISTConfig(root=str(mnist_root)))
    check_dataset_root(CIFAR10Config(root=str(cifar10_root)))
    check_dataset_root(MNISTConfig(root=str(tmp_path / "empty"), download=True))  # torchvision will fetch it


def test_idx_files_are_read_gzipped_or_not_flat_or_in_torchvision_layout(tmp_path, mnist_root):
    import gzip
    import shutil

    plain = load_dataset(MNISTConfig(root=str(mnist_root)), seed=0)
    flat = tmp_path / "flat"  # as the original archives and Debian's dataset-fashion-mnist ship them
    flat.mkdir()
    for f in (mnist_root / "MNIST" / "raw").iterdir():
        (flat / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    mixed = tmp_path / "mixed" / "MNIST" / "raw"  # torchvision's layout, one file still gzipped
    shutil.copytree(mnist_root / "MNIST" / "raw", mixed)
    (mixed / "t10k-images-idx3-ubyte").unlink()
    shutil.copy(flat / "t10k-images-idx3-ubyte.gz", mixed)
    for root in (flat, tmp_path / "mixed"):
        check_dataset_root(MNISTConfig(root=str(root)))
        data = load_dataset(MNISTConfig(root=str(root)), seed=0)
        for split in ("train", "test"):
            a, b = getattr(data, split), getattr(plain, split)
            assert len(a) == len(b)
            assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(len(a)))
    assert {p.name for p in flat.iterdir()} == {f"{n}.gz" for n in idx.NAMES}  # nothing unpacked beside them


def test_mnist_check_spots_missing_foreign_and_truncated_files(tmp_path):
    import gzip

    root = write_mnist(tmp_path / "m", n_train=10, n_test=10)
    raw = root / "MNIST" / "raw"
    target = raw / "t10k-labels-idx1-ubyte"
    original = target.read_bytes()
    target.unlink()
    assert "lacks t10k-labels-idx1-ubyte (plain or .gz)" in _error(MNISTConfig(root=str(root)))
    target.write_bytes(b"<html>not found</html>")
    assert "is not an idx labels file" in _error(MNISTConfig(root=str(root)))
    target.unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    assert "cannot be read" in _error(MNISTConfig(root=str(root)))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(original[:-3]))  # header passes, body short
    check_dataset_root(MNISTConfig(root=str(root)))
    with pytest.raises(ConfigError, match="is truncated or padded: its header announces 10 bytes, it holds 7"):
        load_dataset(MNISTConfig(root=str(root)), seed=0)


def test_fashion_mnist_defaults_to_the_system_package_location(tmp_path, monkeypatch):
    from asyncsgd import image_data

    system = write_mnist(tmp_path / "usr", folder="FashionMNIST") / "FashionMNIST" / "raw"
    monkeypatch.setitem(image_data.SYSTEM_ROOTS, "fashion_mnist", str(system))
    check_dataset_root(FashionMNISTConfig(root=None))
    assert len(load_dataset(FashionMNISTConfig(root=None), seed=0).train) == 200
    other = write_mnist(tmp_path / "mine", folder="FashionMNIST", n_train=30)
    assert len(load_dataset(FashionMNISTConfig(root=str(other)), seed=0).train) == 30  # dataset.root wins
    monkeypatch.setitem(image_data.SYSTEM_ROOTS, "fashion_mnist", str(tmp_path / "not-installed"))
    msg = _error(FashionMNISTConfig(root=None))
    assert "needs dataset.root=DIR" in msg and "dataset-fashion-mnist" in msg and "./scripts/setup-data" in msg
    assert "dataset-fashion-mnist" not in _error(MNISTConfig(root=None))  # no system package for MNIST


def test_unreadable_cifar_batch_is_one_line(tmp_path):
    root = write_cifar10(tmp_path / "c")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated copy: present, so the up-front check passes
    check_dataset_root(CIFAR10Config(root=str(root)))
    with pytest.raises(ConfigError, match=r"dataset=cifar10: could not read .*cifar-10-batches-py: "):
        load_dataset(CIFAR10Config(root=str(root)), seed=0)


def test_image_folder_checks(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("a", "b"))
    check_dataset_root(ImageNetConfig(root=str(root)))
    assert "needs dataset.root=DIR laid out as" in _error(ImageNetConfig(root=None))
    assert "has no train/ folder" in _error(ImageNetConfig(root=str(root / "train")))
    for img in list((root / "val" / "b").iterdir()):
        img.rename(root / "val" / img.name)  # ImageNet's val arrives flat
    assert "holds images directly; sort them into class folders" in _error(ImageNetConfig(root=str(root)))
    for img in (root / "val").glob("*.*"):
        img.rename(root / "val" / "b" / img.name)
    (root / "val" / "zebra").mkdir()
    assert "class folders that train/ lacks: zebra" in _error(ImageNetConfig(root=str(root)))
    (root / "val" / "zebra").rmdir()
    (root / "train" / "empty").mkdir()
    assert "train/empty has no images" in _error(ImageNetConfig(root=str(root)))


@pytest.mark.parametrize("workers", [0, 2])
def test_idx_batches_fetched_whole_equal_the_samples_stacked(mnist_root, workers):
    """The loaders fetch an idx batch with one indexing (__getitems__); the tensors are those of
    its samples read one by one and stacked, bit for bit, in DataLoader processes too."""
    data = load_dataset(MNISTConfig(root=str(mnist_root)), seed=0)
    loader = make_train_loader(data.train, 16, rank=1, world_size=2, seed=3, shuffle=True, num_workers=workers)
    loader.sampler.set_epoch(2)
    order = list(loader.sampler)
    batches = list(loader)
    assert len(batches) == len(data.train) // 32
    for j, (x, y) in enumerate(batches):
        samples = [data.train[i] for i in order[16 * j: 16 * (j + 1)]]
        assert torch.equal(x, torch.stack([s[0] for s in samples]))
        assert y.dtype == torch.int64 and y.tolist() == [s[1] for s in samples]
