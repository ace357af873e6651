"""Data parallelism: one jitted program over a 1-D "data" mesh of every device of every process.

Parameters (the whole train state) are replicated and the batch is sharded along its leading axis.
Under this global view the per-task gradients the methods see are the global-batch gradients, so CosReg
is exact on any number of devices and BatchNorm normalises with global-batch statistics.

Several hosts: call :func:`initialize_distributed` first (``jax.distributed.initialize()``); every
process builds the same mesh over ``jax.devices()`` and passes its own slice of each global batch to
:func:`shard_batch` (the slices are stacked in process order). The recipe:

1. Start the same command on every host, with ``--distributed``. Under SLURM / Open MPI / Kubernetes
   JAX finds the coordinator, the process count and the process id itself; elsewhere pass them
   (``initialize_distributed(True, coordinator_address="host0:1234", num_processes=N, process_id=i)``).
2. Feed each process its slice: ``iterate_batches(..., process_index=jax.process_index(),
   process_count=jax.process_count())``; the global batch must divide the total device count.
3. Put the workdir on a file system every host sees: orbax writes checkpoints from every process and
   coordinates them; ``metrics.jsonl``, TensorBoard and ``config.json`` are written by process 0.
4. Deliver SIGTERM to every process (schedulers do): each saves the same step and exits.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_batch_size",
    "compile_train_step",
    "init_sharded",
    "initialize_distributed",
    "make_mesh",
    "replicated",
    "run_once",
    "shard_batch",
]


def initialize_distributed(enabled: bool, **kwargs: Any) -> None:
    """Calls ``jax.distributed.initialize(**kwargs)`` when ``enabled`` (the ``--distributed`` flag).

    Must run before any other JAX call. Without arguments JAX detects the cluster (SLURM, Open MPI,
    Cloud TPU, or the JAX_COORDINATOR_ADDRESS / process id environment); pass ``coordinator_address``,
    ``num_processes`` and ``process_id`` to set them by hand. On CPU-only hosts, cross-process
    collectives additionally need ``jax.config.update("jax_cpu_collectives_implementation", "gloo")``.
    """
    if enabled:
        jax.distributed.initialize(**kwargs)


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh with axis "data" over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: leading axis split along "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch divides evenly over the devices of ``mesh``."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"the global batch size {global_batch_size} is not divisible by the {n} devices of the "
            f"'{DATA_AXIS}' mesh; use a batch size that is a multiple of {n} (or fewer devices)"
        )


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, *, allow_replicate: bool = False) -> dict:
    """Turns this process's slice of a global batch into global arrays sharded along "data".

    Args:
      batch: dict of host arrays with leading size ``global_batch / process_count`` (every process
        passes its own slice, in process order).
      mesh: the data mesh.
      allow_replicate: in a single process, place a batch that does not divide the device count on every
        device instead of raising (for the last, smaller evaluation batch).

    Returns:
      dict of ``jax.Array`` with the global leading size.

    Raises:
      ValueError: the arrays disagree on the batch size, or the global batch does not divide the device
        count (and cannot be replicated).
    """
    sizes = {k: np.shape(v)[0] for k, v in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch arrays must share their leading size; got {sizes}")
    global_size = next(iter(sizes.values())) * jax.process_count()
    if global_size % mesh.devices.size and allow_replicate and jax.process_count() == 1:
        return jax.device_put(dict(batch), replicated(mesh))
    check_batch_size(global_size, mesh)
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_size, *np.shape(v)[1:]))
        for k, v in batch.items()
    }


def init_sharded(init_fn: Callable[..., PyTree], mesh: Mesh, *args: Any) -> tuple[PyTree, PyTree]:
    """Runs ``init_fn(*args)`` compiled, its outputs replicated over ``mesh``.

    Shapes come from ``jax.eval_shape`` first, so no unsharded copy of the state is materialised.

    Returns:
      ``(state, state_sharding)``; ``state_sharding`` mirrors the state (for ``jax.jit`` and restores).
    """
    abstract = jax.eval_shape(init_fn, *args)
    sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
    return run_once(init_fn, sharding, *args), sharding


# Options for programs that run once. The CPU backend's LLVM optimisation of the threefry random-bit
# generators of a large initialiser takes most of its compile time (about 43 s of 50 s for a SegNet
# init); a program run once does not pay that back, so it is compiled without backend optimisation.
_RUN_ONCE_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def run_once(fn: Callable[..., PyTree], out_shardings: PyTree, *args: Any) -> PyTree:
    """``jax.jit(fn, out_shardings=out_shardings)(*args)`` for a function run once (an initialiser).

    Compiled with cheap backend options where they save time (CPU); the results equal the fully
    optimised program's up to float rounding (random integers bit for bit).
    """
    shardings = jax.tree.leaves(out_shardings)
    platform = next(iter(shardings[0].device_set)).platform if shardings else jax.default_backend()
    lowered = jax.jit(fn, out_shardings=out_shardings).lower(*args)
    return lowered.compile(compiler_options=_RUN_ONCE_OPTIONS.get(platform, {}))(*args)


def compile_train_step(train_step: Callable, mesh: Mesh, state_sharding: PyTree) -> Callable:
    """``jax.jit`` of ``train_step(state, batch) -> (state, metrics)``: state replicated and donated,
    batch sharded along "data", metrics replicated."""
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
