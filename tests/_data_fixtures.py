"""Tiny on-disk datasets in the real layouts, written independently of the readers under test.

Shared by the data-reader tests and the experiments' ``--data-dir`` end-to-end tests.
"""

from __future__ import annotations

import gzip

import numpy as np
from PIL import Image

from orthojax.data.resize import normalize_normals


def write_mtan(root, counts=(3, 2), size=(12, 16)):
    """NYUv2 in MTAN's layout: {train,val}/{image,label,depth,normal}/{i}.npy (labels -1..12, zeros = void)."""
    h, w = size
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), counts):
        for key in ("image", "label", "depth", "normal"):
            (root / split / key).mkdir(parents=True)
        for i in range(n):
            label = rng.integers(-1, 13, (h, w)).astype(np.float64)
            depth = rng.uniform(0.5, 8, (h, w, 1))
            depth[0, :3] = 0
            normal = normalize_normals(rng.normal(size=(h, w, 3))).astype(np.float64)
            normal[0, :3] = 0
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)))
            np.save(root / split / "label" / f"{i}.npy", label)
            np.save(root / split / "depth" / f"{i}.npy", depth)
            np.save(root / split / "normal" / f"{i}.npy", normal)
    return root


def write_sun(root, n=(2, 1), size=(6, 8)):
    """SUN RGB-D in the reorganised layout with {train,test}{13,37}.txt lists; returns the written arrays."""
    h, w = size
    rng = np.random.default_rng(0)
    truth = {}
    for split, count in zip(("train", "test"), n):
        for d in ("image", "depth", "label13", "label37"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        lines13, lines37 = [], []
        for i in range(1, count + 1):
            img = f"image/{split}/img-{i:06d}.png"  # lossless stand-in for the .jpg files
            dep = f"depth/{split}/{i:08d}.png"
            l13, l37 = f"label13/{split}/img13labels-{i:06d}.png", f"label37/{split}/img37labels-{i:06d}.png"
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            depth = rng.integers(0, 65535, (h, w), dtype=np.uint16)
            lab13, lab37 = rng.integers(0, 14, (h, w), dtype=np.uint8), rng.integers(0, 38, (h, w), dtype=np.uint8)
            Image.fromarray(rgb).save(root / img)
            Image.fromarray(depth).save(root / dep)
            Image.fromarray(lab13).save(root / l13)
            Image.fromarray(lab37).save(root / l37)
            lines13.append(f"{img} {dep} {l13}")
            lines37.append(f"{img} {dep} {l37}")
            truth[(split, i - 1)] = (rgb, depth, lab13, lab37)
        (root / f"{split}13.txt").write_text("\n".join(lines13) + "\n")
        (root / f"{split}37.txt").write_text("\n".join(lines37) + "\n")
    return truth


def write_idx(path, array):
    """Independent IDX writer (big-endian header, uint8 payload); gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def id_digits(per_class, first_id):
    """Digits whose 28x28 square is filled with a unique id (so a canvas reveals which digit it holds)."""
    labels = np.repeat(np.arange(10), per_class)
    ids = first_id + np.arange(len(labels))
    return np.broadcast_to(ids[:, None, None], (len(ids), 28, 28)).astype(np.uint8), labels


def write_mnist_idx(root):
    """The four MNIST IDX files (train gzipped, test plain): 120 train digits (ids 1..120), 80 test (121..200)."""
    root.mkdir(parents=True, exist_ok=True)
    train, train_y = id_digits(12, 1)
    test, test_y = id_digits(8, 121)
    write_idx(root / "train-images-idx3-ubyte.gz", train)
    write_idx(root / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(root / "t10k-images-idx3-ubyte", test)
    write_idx(root / "t10k-labels-idx1-ubyte", test_y)
    return root
