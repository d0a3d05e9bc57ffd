"""Image datasets on disk: MNIST, Fashion-MNIST, CIFAR-10/100, ImageFolder.

CIFAR and ImageFolder trees are read by torchvision's own classes from their
standard layouts under ``dataset.root``; MNIST and Fashion-MNIST by
:mod:`asyncsgd.idx`, from the idx files as distributed (gzipped or not, flat or
in torchvision's layout). docs/datasets.md lists the layouts. Fashion-MNIST's
root defaults to where Debian's ``dataset-fashion-mnist`` installs it
(:data:`SYSTEM_ROOTS`) when neither ``dataset.root`` nor $ASYNCSGD_DATA says
otherwise. :func:`check_root` looks at the layout before any worker starts and
turns every problem into one line saying what was expected where and how to get it.

Two deliberate departures from torchvision's defaults:

- CIFAR files are checked for presence, not for their MD5 sums: torchvision
  hashes all 170 MB on every construction, i.e. in each of P workers at start-up,
  and the checksum also rejects smaller sets written in the same format (the
  tests build such sets). ``dataset.download=true`` still verifies the archive.
- Random training augmentation draws from a generator seeded by
  (seed, epoch, sample index) (:class:`asyncsgd.dataset_base.SeededAugment`), so a
  P-worker run sees the same crops as a 1-worker run, whatever the number of
  DataLoader processes.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision.datasets as tvd
from torchvision.transforms import v2

from .config import (
    CIFAR10Config,
    ConfigError,
    DatasetConfig,
    ImageNetConfig,
    TorchvisionSetConfig,
)
from .dataset_base import DataSplits, SeededAugment
from . import idx

log = logging.getLogger("asyncsgd")

# Per-channel mean and std of the training images, scaled to [0, 1] (the usual published values;
# CIFAR's are the true std, not the 0.2023/0.1994/0.2010 that circulates with the mean).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DOWNLOAD_HINT = "add dataset.download=true to fetch it there with torchvision (needs internet)"
FOLDER_LAYOUT = "<root>/train/<class>/<image> and <root>/val/<class>/<image>"


@dataclass(frozen=True)
class TorchvisionSet:
    """Where a torchvision dataset class looks for its files, and what it yields."""

    class_name: str  # in torchvision.datasets (MNIST, CIFAR10, ...)
    folder: str  # under dataset.root
    files: Tuple[str, ...]  # inside folder
    input_shape: Tuple[int, int, int]
    num_classes: int


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SETS = {
    "mnist": TorchvisionSet("MNIST", "MNIST/raw", _MNIST_FILES, (1, 28, 28), 10),
    "fashion_mnist": TorchvisionSet("FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, (1, 28, 28), 10),
    "cifar10": TorchvisionSet(
        "CIFAR10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"), (3, 32, 32), 10,
    ),
    "cifar100": TorchvisionSet("CIFAR100", "cifar-100-python", ("train", "test", "meta"), (3, 32, 32), 100),
}
_IDX_SETS = ("MNIST", "FashionMNIST")  # read by asyncsgd.idx, not by torchvision

# Where a system package installs a set: the root used when dataset.root (and $ASYNCSGD_DATA) is unset.
SYSTEM_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}  # Debian: apt-get install dataset-fashion-mnist
SYSTEM_HINT = {"fashion_mnist": "or install Debian's dataset-fashion-mnist (as root: ./scripts/setup-data), "
                                "which puts it in /usr/share/datasets/fashion-mnist"}


def input_shape(cfg: DatasetConfig) -> Tuple[int, int, int]:
    if isinstance(cfg, ImageNetConfig):
        return (3, cfg.size, cfg.size)
    return SETS[cfg.name].input_shape


def data_root(cfg: DatasetConfig) -> Optional[str]:
    """``dataset.root``, or, when it is unset, the set's system location if that exists."""
    if cfg.root is not None:
        return cfg.root
    system = SYSTEM_ROOTS.get(cfg.name)
    return system if system is not None and Path(system).is_dir() else None


# ---------------------------------------------------------------- checks before launch
def check_root(cfg: DatasetConfig) -> None:
    """Raise ConfigError (one line) unless ``cfg.root`` holds the layout the set needs."""
    if isinstance(cfg, ImageNetConfig):
        _check_folder_tree(cfg)
        return
    spec = SETS[cfg.name]
    expected = f"{spec.folder}/{{{','.join(spec.files)}}}"
    if spec.class_name in _IDX_SETS:
        expected += " (or the four files flat in it; gzipped or not)"
    root_value = data_root(cfg)
    if root_value is None:
        system = f"; {SYSTEM_HINT[cfg.name]}" if cfg.name in SYSTEM_HINT else ""
        raise ConfigError(
            f"dataset={cfg.name} needs dataset.root=DIR (or $ASYNCSGD_DATA), the directory holding "
            f"{expected}{system}; {DOWNLOAD_HINT}"
        )
    root = Path(root_value).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"dataset.root={root_value} is a file; it must be the directory holding {expected}")
    if cfg.download:
        return  # torchvision fetches whatever is missing
    if not root.is_dir():
        raise ConfigError(f"dataset.root={root_value} does not exist; expected {expected} under it; {DOWNLOAD_HINT}")
    if spec.class_name in _IDX_SETS:
        _check_idx_files(cfg, spec, root)
        return
    folder = root / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise ConfigError(_missing_files_message(cfg, spec, root, folder, missing))


def _check_idx_files(cfg, spec: TorchvisionSet, root: Path) -> None:
    found, missing = idx.locate(root, spec.folder)
    if missing:
        where = f"dataset={cfg.name}: {root} has neither {spec.folder}/ nor flat idx files" if not found else (
            f"dataset={cfg.name}: {idx.describe(found) or root} lacks {', '.join(missing)} (plain or .gz)")
        # A root one level too deep in torchvision's layout (pointing at MNIST/) is the usual slip.
        if not found and idx.locate(root, "raw")[0]:
            where += f"; dataset.root must be the directory above {spec.folder}: set dataset.root={root.parent}"
            raise ConfigError(where)
        raise ConfigError(f"{where}; {DOWNLOAD_HINT}")
    for path in found.values():
        try:
            idx.check_header(path)
        except idx.IdxError as exc:
            raise ConfigError(f"dataset={cfg.name}: {exc}; delete it and {DOWNLOAD_HINT}") from None


def _missing_files_message(cfg, spec: TorchvisionSet, root: Path, folder: Path, missing: List[str]) -> str:
    where = f"dataset={cfg.name}: {folder} lacks {', '.join(missing)}"
    inner = spec.folder.split("/")
    # A root one level too deep (pointing at MNIST/ or MNIST/raw/ or cifar-10-batches-py/) is the usual slip.
    for depth in range(1, len(inner) + 1):
        if all((root / "/".join(inner[depth:]) / f).is_file() for f in spec.files):
            parent = root.parents[depth - 1]
            return f"{where}; dataset.root must be the directory above {'/'.join(inner)}: set dataset.root={parent}"
    return f"{where}; {DOWNLOAD_HINT}"


def _image_files(folder: Path):
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):
                yield e.name


def _class_dirs(folder: Path) -> List[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _check_folder_tree(cfg: ImageNetConfig) -> None:
    if cfg.root is None:
        raise ConfigError(f"dataset=imagenet needs dataset.root=DIR laid out as {FOLDER_LAYOUT}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dataset.root={cfg.root} is not a directory; expected {FOLDER_LAYOUT}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(f"dataset.root={cfg.root} has no {split}/ folder; expected {FOLDER_LAYOUT}")
    train_classes = _class_dirs(root / "train")
    if not train_classes:
        raise ConfigError(f"{root / 'train'} has no class folders; expected {FOLDER_LAYOUT}")
    for cls in train_classes:
        if next(_image_files(root / "train" / cls), None) is None:
            raise ConfigError(
                f"{root / 'train' / cls} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "every training class folder needs at least one"
            )
    if next(_image_files(root / "val"), None) is not None:
        raise ConfigError(
            f"{root / 'val'} holds images directly; sort them into class folders {root / 'val'}/<class>/ named as "
            "in train/ (for ImageNet, from the ILSVRC2012 validation labels, e.g. with valprep.sh)"
        )
    val_classes = _class_dirs(root / "val")
    unknown = sorted(set(val_classes) - set(train_classes))
    if unknown:
        raise ConfigError(f"{root / 'val'} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    if not any(next(_image_files(root / "val" / c), None) is not None for c in val_classes):
        raise ConfigError(f"{root / 'val'} has no images; expected {FOLDER_LAYOUT}")


# ---------------------------------------------------------------- loading
def load(cfg: DatasetConfig, seed: int):
    """The train and test splits with their transforms (see :func:`asyncsgd.data.load_dataset`)."""
    if isinstance(cfg, ImageNetConfig):
        train_raw, test, classes = _folder_splits(cfg)
        train_tf, shape, num_classes = imagenet_train_transform(cfg), input_shape(cfg), len(classes)
    else:
        spec = SETS[cfg.name]
        if spec.class_name in _IDX_SETS:
            return _idx_splits(cfg, spec)
        augment = isinstance(cfg, CIFAR10Config) and cfg.augment
        test = _torchvision_set(cfg, spec, train=False, transform=_to_normalized_tensor(cfg.name))
        train_raw = _torchvision_set(cfg, spec, train=True, transform=None if augment else _to_normalized_tensor(cfg.name))
        train_tf = cifar_train_transform(cfg.name) if augment else None
        shape, num_classes = spec.input_shape, spec.num_classes
    train = SeededAugment(train_raw, train_tf, seed) if train_tf is not None else train_raw
    return DataSplits(train, test, tuple(shape), num_classes)


def _idx_splits(cfg: TorchvisionSetConfig, spec: TorchvisionSet) -> DataSplits:
    """MNIST / Fashion-MNIST from their idx files, wherever :func:`asyncsgd.idx.locate` finds them."""
    root = Path(data_root(cfg)).expanduser()
    if cfg.download:
        _download(cfg, spec)  # into root/<folder>/raw, where torchvision keeps the .gz and unpacked files
    found, missing = idx.locate(root, spec.folder)
    if missing:
        raise ConfigError(f"dataset={cfg.name}: {root} lacks {', '.join(missing)} (plain or .gz)")
    log.info("dataset=%s: idx files in %s", cfg.name, idx.describe(found) or root)
    mean, std = STATS[cfg.name]
    try:
        train, test = (idx.load_split(found, split, mean, std) for split in ("train", "test"))
    except idx.IdxError as exc:
        raise ConfigError(f"dataset={cfg.name}: {exc}") from None
    return DataSplits(train, test, spec.input_shape, spec.num_classes)


def _to_normalized_tensor(name: str, before: Sequence[Callable] = ()):
    mean, std = STATS[name]
    return v2.Compose([*before, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def cifar_train_transform(name: str):
    return _to_normalized_tensor(name, [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])


def imagenet_train_transform(cfg: ImageNetConfig):
    crop = v2.RandomResizedCrop(cfg.size, scale=(cfg.min_scale, 1.0), antialias=True)
    return _to_normalized_tensor("imagenet", [crop, v2.RandomHorizontalFlip()])


def imagenet_val_transform(cfg: ImageNetConfig):
    resize = cfg.val_resize or round(cfg.size / 0.875)  # 256 for 224: the usual center-crop ratio
    return _to_normalized_tensor("imagenet", [v2.Resize(resize, antialias=True), v2.CenterCrop(cfg.size)])


def _dataset_class(spec: TorchvisionSet):
    return {"CIFAR10": CIFAR10Files, "CIFAR100": CIFAR100Files}.get(spec.class_name) or getattr(tvd, spec.class_name)


def _torchvision_set(cfg: TorchvisionSetConfig, spec: TorchvisionSet, train: bool, transform):
    cls = _dataset_class(spec)
    root = str(Path(cfg.root).expanduser())
    if cfg.download:
        _download(cfg, spec, train)
    try:
        return cls(root, train=train, transform=transform)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AssertionError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"dataset={cfg.name}: could not read {Path(root) / spec.folder}: {exc}") from exc


def _download(cfg: TorchvisionSetConfig, spec: TorchvisionSet, train: bool = True) -> None:
    """torchvision's downloader into dataset.root, one rank at a time: the others find the files present.
    (For MNIST and Fashion-MNIST one call fetches both splits.)"""
    root = Path(data_root(cfg)).expanduser()
    with _exclusive(root / f".asyncsgd-download-{cfg.name}.lock"):
        _dataset_class(spec)(str(root), train=train, download=True)


@contextmanager
def _exclusive(lock_path: Path):
    """Serialise downloads into one root across the workers (and jobs) of this machine."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _folder_splits(cfg: ImageNetConfig):
    root = Path(cfg.root).expanduser()
    classes = _class_dirs(root / "train")
    train = ClassFolder(str(root / "train"), classes, transform=None)
    test = ClassFolder(str(root / "val"), classes, transform=imagenet_val_transform(cfg))
    return train, test, classes


def _presence_only(base):
    """``base`` (a torchvision CIFAR class) checking that its files exist rather than their MD5 sums."""
    attrs = {
        "__module__": __name__,
        "__doc__": f"torchvision's {base.__name__}, checking that its files exist rather than their MD5 sums.",
        # md5=None makes torchvision's check_integrity test only that the file exists.
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    }
    return type(f"{base.__name__}Files", (base,), attrs)


# Module-level names, so DataLoader worker processes can unpickle them.
CIFAR10Files = _presence_only(tvd.CIFAR10)
CIFAR100Files = _presence_only(tvd.CIFAR100)


class ClassFolder(tvd.ImageFolder):
    """An ImageFolder with a given class list, so val/ uses train/'s class indices."""

    def __init__(self, root: str, classes: List[str], transform=None):
        self._given_classes = list(classes)
        super().__init__(root, transform=transform, allow_empty=True)

    def find_classes(self, directory):
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}
