"""Deterministic, resumable mini-batch iteration over in-memory datasets.

A dataset split is a dict of NumPy arrays sharing a leading axis N. The order
of an epoch is a pure function of (seed, epoch), and any augmentation receives
a Generator seeded from (seed, epoch, step), so a run resumed at (epoch, step)
sees exactly the batches it would have seen.

Multi-host: every process walks the same global batches and keeps the
``process_index``-th contiguous slice of each (the layout ``jax.make_array_
from_process_local_data`` expects for a batch sharded on its leading axis).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]
Transform = Callable[[Batch, np.random.Generator], Batch]


def dataset_size(data: Mapping[str, np.ndarray]) -> int:
    """Common leading size N of a split; raises if the arrays disagree or there are none."""
    if not data:
        raise ValueError("dataset split has no arrays")
    sizes = {k: len(v) for k, v in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays of a split must share their leading size, got {sizes}")
    return next(iter(sizes.values()))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of ``n`` examples in ``epoch``: a permutation depending only on (seed, epoch).

    Returns:
      int64 array (n,).
    """
    if n < 0 or epoch < 0:
        raise ValueError(f"n and epoch must be >= 0, got n={n}, epoch={epoch}")
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)


def step_rng(seed: int, epoch: int, step: int, process_index: int = 0) -> np.random.Generator:
    """Generator for the augmentation of this process's slice of global batch ``step`` of ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch), int(step), int(process_index), 0xA06])


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of global batches in one epoch."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    data: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    drop_last: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    transform: Transform | None = None,
    shuffle: bool = True,
) -> Iterator[Batch]:
    """Yield the batches of one epoch, starting at ``start_step``.

    Args:
      data: split dict of arrays with a common leading axis N.
      batch_size: global batch size (over all processes); must divide by ``process_count``.
      seed, epoch: determine the order (see :func:`epoch_permutation`).
      start_step: first global batch to yield (for resuming).
      drop_last: drop the final incomplete batch (needed for fixed shapes under jit).
      process_index, process_count: this process keeps slice ``process_index`` of each batch.
      transform: ``transform(batch, rng) -> batch`` applied to the process-local batch,
        ``rng`` is :func:`step_rng` (seed, epoch, step, process_index).
      shuffle: if False, iterate in storage order (evaluation).

    Yields:
      dicts of NumPy arrays with leading size ``batch_size // process_count``
      (the last batch may be smaller when ``drop_last`` is False).
    """
    n = dataset_size(data)
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    num_steps = steps_per_epoch(n, batch_size, drop_last)
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"start_step {start_step} is outside 0..{num_steps}")
    order = epoch_permutation(seed, epoch, n) if shuffle else np.arange(n)
    for step in range(start_step, num_steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        per = -(-len(idx) // process_count)
        idx = idx[process_index * per : (process_index + 1) * per]
        batch = {k: np.asarray(v[idx]) for k, v in data.items()}
        if transform is not None:
            batch = transform(batch, step_rng(seed, epoch, step, process_index))
        yield batch


def prefetch(iterator: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
    """Run ``iterator`` in a background thread, keeping up to ``size`` items ready.

    Exceptions raised by the producer are re-raised in the consumer. Closing the
    returned generator stops the producer.
    """
    if size <= 0:
        raise ValueError(f"prefetch size must be positive, got {size}")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # handed to the consumer
            q.put((done, e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
