"""Loader: order a pure function of (seed, epoch), exact resume, per-process slices, prefetch."""

import numpy as np
import pytest

from orthojax.data.loader import dataset_size, epoch_permutation, iterate_batches, prefetch, steps_per_epoch


def make_data(n=23):
    return {"x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), "y": np.arange(n)}


def test_epoch_permutation_pure_and_varies():
    p = epoch_permutation(0, 1, 50)
    assert sorted(p.tolist()) == list(range(50))
    np.testing.assert_array_equal(p, epoch_permutation(0, 1, 50))
    assert not np.array_equal(p, epoch_permutation(0, 2, 50))
    assert not np.array_equal(p, epoch_permutation(1, 1, 50))


def test_epoch_covers_every_example_once():
    data = make_data()
    ys = np.concatenate([b["y"] for b in iterate_batches(data, 5, seed=0, epoch=0, drop_last=False)])
    assert sorted(ys.tolist()) == list(range(23))
    batches = list(iterate_batches(data, 5, seed=0, epoch=0))
    assert len(batches) == steps_per_epoch(23, 5) == 4 and all(len(b["y"]) == 5 for b in batches)
    for b in batches:
        np.testing.assert_array_equal(b["x"][:, 0], b["y"])  # keys stay aligned


def test_resume_is_exact():
    data = make_data()
    full = list(iterate_batches(data, 4, seed=7, epoch=3, transform=noise))
    resumed = list(iterate_batches(data, 4, seed=7, epoch=3, start_step=2, transform=noise))
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def noise(batch, rng):
    return {**batch, "x": batch["x"] + rng.normal(size=batch["x"].shape).astype(np.float32)}


def test_process_slices_concatenate_to_global_batch():
    data = make_data(24)
    global_batches = list(iterate_batches(data, 6, seed=1, epoch=0))
    per_process = [list(iterate_batches(data, 6, seed=1, epoch=0, process_index=p, process_count=3)) for p in range(3)]
    for step, g in enumerate(global_batches):
        parts = [per_process[p][step]["y"] for p in range(3)]
        assert all(len(part) == 2 for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), g["y"])


def test_eval_order_and_errors():
    data = make_data(10)
    ys = np.concatenate([b["y"] for b in iterate_batches(data, 4, 0, 0, drop_last=False, shuffle=False)])
    np.testing.assert_array_equal(ys, np.arange(10))
    with pytest.raises(ValueError, match="not divisible"):
        next(iterate_batches(data, 5, 0, 0, process_count=2))
    with pytest.raises(ValueError, match="start_step"):
        next(iterate_batches(data, 5, 0, 0, start_step=9))
    with pytest.raises(ValueError, match="leading size"):
        dataset_size({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="process_index"):
        next(iterate_batches(data, 4, 0, 0, process_index=2, process_count=2))


def test_prefetch_same_items_and_propagates_errors():
    data = make_data()
    direct = list(iterate_batches(data, 3, seed=2, epoch=0))
    fetched = list(prefetch(iterate_batches(data, 3, seed=2, epoch=0), size=2))
    assert len(direct) == len(fetched)
    for a, b in zip(direct, fetched):
        np.testing.assert_array_equal(a["y"], b["y"])

    def failing():
        yield {"y": np.zeros(1)}
        raise RuntimeError("boom")

    it = prefetch(failing())
    next(it)
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
    with pytest.raises(ValueError):
        next(prefetch(iter([]), size=0))


def test_prefetch_close_stops_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), size=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    import time

    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count
