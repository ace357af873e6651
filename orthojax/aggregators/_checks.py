"""Eager validation of hyper-parameters (private): a bad value raises a ValueError naming the function, the
argument, the value and what was expected."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def _check_cap(value: Any, what: str, name: str, minimum: int = 1) -> None:
    """An optional iteration cap: None (automatic) or an integer >= minimum."""
    if value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {what} must be None or an integer >= {minimum}; got {value!r}")



def _check_nonneg_float(value: Any, what: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: {what} must be a non-negative number; got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {what} must be a finite non-negative number; got {value!r}")



def _preference(pref: Optional[Any], num_tasks: int, dtype, name: str) -> jax.Array:
    if pref is None:
        return jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    pref = jnp.asarray(pref, dtype)
    if pref.shape != (num_tasks,):
        raise ValueError(f"{name}: pref must have shape ({num_tasks},); got {pref.shape}")
    return pref




def _check_pref(pref: Any, name: str) -> Optional[tuple]:
    """An optional preference vector given to a factory: None or a non-empty sequence of finite numbers,
    returned as a tuple of floats (hashable, so the aggregator stays a static object under ``jax.jit``)."""
    if pref is None:
        return None
    try:
        values = tuple(float(p) for p in pref)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: pref must be a non-empty sequence of finite numbers; got {pref!r}") from None
    if not values or not all(np.isfinite(v) for v in values):
        raise ValueError(f"{name}: pref must be a non-empty sequence of finite numbers; got {pref!r}")
    return values


def _check_vector(value: Any, what: str, name: str) -> np.ndarray:
    """A per-task vector given to a factory, as a float64 NumPy array.

    Raises:
      TypeError: ``value`` is not a sequence of numbers.
      ValueError: ``value`` is not 1-D, is empty, or has a non-finite entry.
    """
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: {what} must be a sequence of numbers; got {value!r}") from err
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{name}: {what} must be a non-empty 1-D sequence; got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name}: {what} must be finite; got {vector.tolist()}")
    return vector


def _check_bool(value: Any, what: str, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {what} must be a bool; got {value!r}")
