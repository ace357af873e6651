"""Argument checks shared by the metric modules (not part of the public surface)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AGGREGATIONS = ("pooled", "batch")


def check_aggregation(aggregation: str) -> None:
    """Raises ValueError unless ``aggregation`` is one of :data:`AGGREGATIONS`."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def check_positive_int(name: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is a positive Python or NumPy integer (bool excluded)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    """Raises ValueError naming both arguments unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def broadcast_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> jax.Array:
    """Broadcast an optional boolean mask to ``shape`` (all True when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise ValueError(f"{name} must be boolean, got dtype {m.dtype}")
    try:
        return jnp.broadcast_to(m, shape)
    except ValueError as e:
        raise ValueError(f"{name} of shape {m.shape} does not broadcast to {shape}") from e


def labels_from_scores(pred: Any, target_shape: tuple[int, ...], num_classes: int | None,
                       name: str) -> jax.Array:
    """Integer labels from labels (same shape as the target) or scores (target shape + (K,))."""
    p = jnp.asarray(pred)
    if p.shape == target_shape:
        if not jnp.issubdtype(p.dtype, jnp.integer):
            raise ValueError(f"{name} with the target's shape must hold integer labels, got {p.dtype}")
        return p
    if p.shape[:-1] == target_shape and (num_classes is None or p.shape[-1] == num_classes):
        return jnp.argmax(p, axis=-1)
    want = "" if num_classes is None else f" with K={num_classes}"
    raise ValueError(
        f"{name} must be labels of shape {target_shape} or scores of shape {target_shape} + (K,)"
        f"{want}, got {p.shape}"
    )
