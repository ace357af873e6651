"""The train state: everything a run needs to continue, as one pytree."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from orthojax.methods.base import Method

PyTree = Any
Batch = Mapping[str, Any]

__all__ = ["TrainState", "distinct_buffers", "init_train_state", "model_variables", "num_model_tasks", "step_key"]


@struct.dataclass
class TrainState:
    """Explicit training state (a pytree; checkpointed as a whole).

    Attributes:
      step: int32 scalar, the number of steps taken (finite or not); with the steps per epoch it is
        the data position.
      params: model parameters.
      batch_stats: BatchNorm statistics ({} for a model without BatchNorm).
      opt_state: optimiser state.
      method_state: the multi-task method's state.
      rng: raw uint32 key data of the run's base key; the key of step s is ``fold_in(base, s)``.
      nonfinite_total: int32, number of steps skipped because the loss or gradients were not finite.
      nonfinite_streak: int32, number of consecutive skipped steps ending at the last step.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    method_state: PyTree
    rng: jax.Array
    nonfinite_total: jax.Array
    nonfinite_streak: jax.Array


def model_variables(params: PyTree, batch_stats: PyTree) -> dict:
    """The Flax variable dict for ``params`` and (if any) ``batch_stats``."""
    variables = {"params": params}
    if jax.tree.leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    return variables


def step_key(state: TrainState) -> jax.Array:
    """The key of the current step: ``fold_in(base key, step)`` (so a resumed run draws the same keys)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def num_model_tasks(model: nn.Module, variables: dict, inputs: Any) -> int:
    """The number of tasks T: the length of the tuple the model returns (computed on shapes only)."""
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, inputs)
    if not isinstance(outputs, (tuple, list)):
        raise ValueError(f"the model must return a tuple of T task outputs; got {type(outputs).__name__}")
    return len(outputs)


def init_train_state(
    key: jax.Array,
    model: nn.Module,
    method: Method,
    optimizer: optax.GradientTransformation,
    sample_inputs: Any,
) -> TrainState:
    """Initialises a train state (pure; run it under ``jax.jit`` / ``jax.eval_shape`` / ``jax.vmap``).

    Args:
      key: a typed key (``jax.random.key(seed)``); split into the init key and the run's base key.
      model: a Flax Linen module with ``__call__(x, train)`` returning a tuple of T outputs.
      method: the multi-task method (``method.init(params, T)``).
      optimizer: the optax optimiser.
      sample_inputs: model inputs with the right shapes and dtypes (e.g. one small batch).

    Returns:
      A :class:`TrainState` at step 0. Outside ``jit`` no two leaves share a buffer (see
      :func:`distinct_buffers`), so the state can be donated to the compiled step however the method's
      ``init`` and the optimiser's ``init`` built their arrays.
    """
    init_key, dropout_key, base_key = jax.random.split(key, 3)
    variables = model.init({"params": init_key, "dropout": dropout_key}, sample_inputs, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    num_tasks = num_model_tasks(model, variables, sample_inputs)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.init(params),
        method_state=method.init(params, num_tasks),
        rng=jax.random.key_data(base_key),
        nonfinite_total=jnp.zeros((), jnp.int32),
        nonfinite_streak=jnp.zeros((), jnp.int32),
    )
    return distinct_buffers(state)


def _buffer_keys(x: Any) -> Optional[tuple]:
    """(device id, buffer address) of each shard of a concrete array; None for a tracer or a non-array."""
    if not isinstance(x, jax.Array):
        return None
    try:
        return tuple((s.device.id, s.data.unsafe_buffer_pointer()) for s in x.addressable_shards)
    except Exception:  # a tracer (under jit / vmap / eval_shape), a deleted array, a backend without pointers
        return None


def distinct_buffers(tree: PyTree) -> PyTree:
    """``tree`` with every concrete array leaf that shares a buffer with an earlier leaf replaced by a copy.

    A state whose leaves alias one buffer (e.g. a method's ``init`` returning one zeros array in several
    fields, or an optimiser state holding the parameters themselves) cannot be donated: the donated
    compiled step (``jax.jit(..., donate_argnums=0)``) fails with "Attempt to donate the same buffer twice".
    Leaves are copied with their sharding; tracers (inside ``jit``, ``vmap``, ``eval_shape``, whose outputs
    are distinct buffers anyway) and non-array leaves are returned unchanged.
    """
    seen: set = set()

    def fix(x):
        keys = _buffer_keys(x)
        if keys is None:
            return x
        if seen.intersection(keys):
            x = jax.device_put(x, x.sharding, may_alias=False)
            keys = _buffer_keys(x) or ()
        seen.update(keys)
        return x

    return jax.tree.map(fix, tree)
