"""Several independent seeds in one compiled program (``jax.vmap`` over a leading seed axis).

For small models, S runs that differ only in their initialisation / dropout keys fit in one program:
the train state gets a leading axis of size S and every seed sees the same batch. Seed ``seed + i`` of
the vmapped program is the run that a single-seed run with ``seed + i`` would make.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["run_keys", "vmap_eval_step", "vmap_init", "vmap_train_step"]


def run_keys(seed: int, num_seeds: int) -> jax.Array:
    """Typed keys ``key(seed + i)`` for i < ``num_seeds``: shape (num_seeds,), or a scalar key for 1."""
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1; got {num_seeds}")
    if num_seeds == 1:
        return jax.random.key(seed)
    return jax.vmap(jax.random.key)(seed + jnp.arange(num_seeds))


def vmap_init(init_fn: Callable[[jax.Array], PyTree], num_seeds: int) -> Callable[[jax.Array], PyTree]:
    """``init_fn(key)`` mapped over a (num_seeds,) key array (unchanged for one seed)."""
    return init_fn if num_seeds == 1 else jax.vmap(init_fn)


def vmap_train_step(train_step: Callable, num_seeds: int) -> Callable:
    """``train_step(state, batch)`` mapped over the seed axis of the state (same batch for all)."""
    return train_step if num_seeds == 1 else jax.vmap(train_step, in_axes=(0, None))


def vmap_eval_step(eval_step: Callable, num_seeds: int) -> Callable:
    """``eval_step(state, acc, batch)`` mapped over the seed axis of state and accumulator."""
    return eval_step if num_seeds == 1 else jax.vmap(eval_step, in_axes=(0, 0, None))
