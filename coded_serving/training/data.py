"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, as numpy arrays.

Nothing may be downloaded at run time, so the data comes from the system package.
Images are float32 ``[N, 1, 28, 28]`` in [0, 1], labels int64. Checkpoints and code
parameters are selected on a validation split carved from the training set; the 10k
test set is for reports only.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"

_IDX_DTYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> "Split":
        """The first ``n`` examples: small, fast subsets for tests and smoke runs."""
        return Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split


def read_idx(path: Path) -> np.ndarray:
    """Parse one gzip'd IDX file (big-endian header: 0, 0, dtype code, ndim, then the dims)."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    data = np.frombuffer(raw[header_end:], dtype=_IDX_DTYPES[raw[2]])
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _load_part(root: Path, part: str) -> Split:
    paths = [root / f"{part}-images-idx3-ubyte.gz", root / f"{part}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}); "
            f"install the Debian package: apt-get install {DEBIAN_PACKAGE}"
        )
    images = read_idx(paths[0]).astype(np.float32)[:, None] / np.float32(255.0)
    labels = read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} {part} images but {len(labels)} labels")
    return Split(images, labels)


def load_fashion_mnist(root: Path | str = DEFAULT_ROOT, val_size: int = 5000, seed: int = 0) -> Dataset:
    """Train/validation split drawn by ``seed`` from the 60k training set; the test set untouched."""
    root = Path(root)
    full_train = _load_part(root, "train")
    if not 0 < val_size < len(full_train):
        raise ValueError(f"val_size must be in (0, {len(full_train)}), got {val_size}")
    order = np.random.default_rng(seed).permutation(len(full_train))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return Dataset(
        train=Split(full_train.images[train_idx], full_train.labels[train_idx]),
        val=Split(full_train.images[val_idx], full_train.labels[val_idx]),
        test=_load_part(root, "t10k"),
    )
