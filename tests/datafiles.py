"""Tiny datasets written in the real on-disk formats torchvision reads.

Every image set's pixels encode its label (a bright block whose position is the
class), so a short run can show that images and labels travel together, and
tests can compare decoded pixels with what was written.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def labelled_images(n: int, num_classes: int, shape, seed: int):
    """(uint8 images N x H x W [x C], labels): dim noise plus a bright block placed by the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h, w = shape[0], shape[1]
    cols = 4
    bh, bw = h // 4, w // cols
    for i, k in enumerate(labels):
        r, c = divmod(int(k) % 12, cols)
        images[i, r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 230
    return images, labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of MNIST: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 sizes, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 200, n_test: int = 50) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = labelled_images(n, 10, (28, 28), seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> N x 3072 rows, all red then green then blue (CIFAR's pickle layout)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_batch(path: Path, n: int, num_classes: int, seed: int, label_key: str) -> None:
    images, labels = labelled_images(n, num_classes, (32, 32, 3), seed)
    path.write_bytes(pickle.dumps({"data": _cifar_rows(images), label_key: labels.tolist()}))


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    """cifar-10-batches-py/: data_batch_1..5 (seeds 11..15), test_batch (seed 20), batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", per_batch, 10, seed=10 + i, label_key="labels")
    _write_batch(folder / "test_batch", n_test, 10, seed=20, label_key="labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    return root


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """cifar-100-python/: train, test (100 "fine" classes), meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _write_batch(folder / "train", n_train, 100, seed=30, label_key="fine_labels")
    _write_batch(folder / "test", n_test, 100, seed=31, label_key="fine_labels")
    meta = {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_image_folder(root: Path, classes=("n01", "n02", "n03"), per_class: int = 4, per_class_val: int = 2) -> Path:
    """root/train/<class>/*.{png,JPEG} and root/val/<class>/*: images of varying size, PNG and JPEG."""
    from PIL import Image

    for split, n in (("train", per_class), ("val", per_class_val)):
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                size = (40 + 8 * i, 48 + 4 * k)  # width, height: not square, not the crop size
                images, _ = labelled_images(1, len(classes), (size[1], size[0], 3), seed=100 * k + i)
                name = f"{cls}_{i}.png" if i % 2 == 0 else f"{cls}_{i}.JPEG"
                Image.fromarray(images[0]).save(root / split / cls / name)
    return root
