"""MNIST-format (idx) image sets read as they are distributed: gzipped or not, flat or in torchvision's layout.

The four files of MNIST and Fashion-MNIST (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``)
are found under ``root`` in either layout, each plain or with ``.gz``:

- torchvision's: ``root/MNIST/raw/`` (``root/FashionMNIST/raw/``), what
  ``dataset.download=true`` writes;
- flat: the four files directly in ``root``, as the original archives unpack
  and as Debian's ``dataset-fashion-mnist`` installs them
  (``/usr/share/datasets/fashion-mnist/*.gz``).

A gzipped file is decompressed in memory at load time (a fraction of a second
for 26 MB): nothing is copied or unpacked on disk. The images stay uint8 in
memory (47 MB for 60,000) and each sample is scaled to [0, 1] and normalised
when it is read, which is what torchvision's ToImage/ToDtype/Normalize do.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset_base import Batch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NAMES = [name for pair in FILES.values() for name in pair]
# First bytes of each idx file: 0x0803 for 3-d uint8 images, 0x0801 for 1-d uint8 labels.
MAGIC = {"images": b"\x00\x00\x08\x03", "labels": b"\x00\x00\x08\x01"}


class IdxError(ValueError):
    """An idx file is missing or malformed; the message is one line naming the file."""


def _kind(name: str) -> str:
    return "images" if "images" in name else "labels"


def locate(root: Path, folder: str) -> Tuple[Dict[str, Path], List[str]]:
    """(file found for each name, names not found) under ``root`` in either layout.

    All four files are taken from one place (the first layout that has any of
    them), so a stray file in the other layout cannot mix two copies of the set.
    """
    for base in (Path(root) / folder, Path(root)):
        found = {}
        for name in NAMES:  # plain before gzipped: torchvision's download leaves both
            path = next((p for p in (base / name, base / f"{name}.gz") if p.is_file()), None)
            if path is not None:
                found[name] = path
        if found:
            return found, [n for n in NAMES if n not in found]
    return {}, list(NAMES)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def check_header(path: Path) -> None:
    """Raise IdxError unless ``path`` starts with the idx magic number of its kind (gzip or not)."""
    kind = _kind(path.name)
    try:
        with _open(path) as f:
            head = f.read(4)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise IdxError(f"{path} cannot be read ({exc})") from None
    if head != MAGIC[kind]:
        raise IdxError(f"{path} is not an idx {kind} file (it does not start with the idx magic number)")


def read(path: Path) -> np.ndarray:
    """The uint8 array an idx file holds, shaped as its header says."""
    kind = _kind(path.name)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise IdxError(f"{path} cannot be read ({exc})") from None
    if data[:4] != MAGIC[kind]:
        raise IdxError(f"{path} is not an idx {kind} file (it does not start with the idx magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        shape = "x".join(map(str, dims))
        raise IdxError(f"{path} is truncated or padded: its header announces "
                       f"{shape + ' = ' if ndim > 1 else ''}{expected} bytes, it holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class IdxImages(Dataset):
    """One split of an idx set: (1 x H x W normalised float tensor, int label) per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]):
        if len(images) != len(labels):
            raise IdxError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(images.copy())  # N x H x W uint8 (a copy: frombuffer is read-only)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean, self.std = float(mean[0]), float(std[0])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index].unsqueeze(0).to(torch.float32).div_(255.0)
        return x.sub_(self.mean).div_(self.std), int(self.labels[index])

    def __getitems__(self, indices) -> Batch:
        """A whole batch at once, the same values as its samples one by one (element-wise arithmetic)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[index].unsqueeze(1).to(torch.float32).div_(255.0)
        return Batch(x.sub_(self.mean).div_(self.std), self.labels[index])


def load_split(files: Dict[str, Path], split: str, mean, std) -> IdxImages:
    images_name, labels_name = FILES[split]
    return IdxImages(read(files[images_name]), read(files[labels_name]), mean, std)


def describe(files: Dict[str, Path]) -> Optional[str]:
    """The directory the files were found in (for log lines)."""
    parents = {p.parent for p in files.values()}
    return str(parents.pop()) if len(parents) == 1 else None
