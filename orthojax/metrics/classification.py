"""Classification: accuracy per task and the harmonic mean of the task accuracies.

The MultiDigitMNIST score is the harmonic mean T / sum_t (1 / a_t) of the T task accuracies.

Accumulator: ``init_classification(T) -> state``, ``update_classification(state, pred, labels)``
(jitted) and ``finalize_classification(state) -> dict`` (host side).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.metrics._checks import check_positive_int, labels_from_scores

__all__ = [
    "ClassificationState",
    "accuracy",
    "finalize_classification",
    "harmonic_mean",
    "init_classification",
    "update_classification",
]


@jax.jit
def accuracy(pred: Any, labels: Any) -> jax.Array:
    """Fraction of correct predictions; jittable.

    Args:
      pred: integer labels of ``labels``' shape, or scores of shape labels.shape + (K,).
      labels: integer targets.
    """
    y = jnp.asarray(labels)
    p = labels_from_scores(pred, y.shape, None, "pred")
    if y.size == 0:
        raise ValueError("labels is empty")
    return jnp.mean(p == y)


def harmonic_mean(values: Any) -> float:
    """Harmonic mean T / sum_t (1 / a_t) of non-negative values (0 if any value is 0).

    The MultiDigitMNIST score is the harmonic mean of the task accuracies.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0 or np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be a non-empty sequence of finite non-negative numbers, got {values!r}")
    if np.any(v == 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


class ClassificationState(NamedTuple):
    """Correct predictions per task and examples seen (same for every task)."""

    correct: jax.Array  # (T,) int32
    count: jax.Array  # int32


def init_classification(num_tasks: int) -> ClassificationState:
    """Empty accumulator for ``num_tasks`` classification tasks."""
    check_positive_int("num_tasks", num_tasks)
    return ClassificationState(jnp.zeros(num_tasks, jnp.int32), jnp.zeros((), jnp.int32))


@jax.jit
def update_classification(state: ClassificationState, pred: Any, labels: Any) -> ClassificationState:
    """Add one batch; jittable.

    Args:
      state: accumulator for T tasks.
      pred: (T, B) integer labels or (T, B, K) scores.
      labels: (T, B) integer targets.
    """
    y = jnp.asarray(labels)
    t = state.correct.shape[0]
    if y.ndim != 2 or y.shape[0] != t:
        raise ValueError(f"labels must have shape (T={t}, B), got {y.shape}")
    p = labels_from_scores(pred, y.shape, None, "pred")
    return ClassificationState(state.correct + (p == y).sum(axis=1, dtype=jnp.int32),
                               state.count + y.shape[1])


def finalize_classification(state: ClassificationState) -> dict[str, Any]:
    """{"accuracy": list of T per-task accuracies, "harmonic_mean": float}."""
    n = int(state.count)
    if n == 0:
        raise ValueError("classification accumulator holds no example")
    acc = [float(c) / n for c in np.asarray(state.correct)]
    return {"accuracy": acc, "harmonic_mean": harmonic_mean(acc)}
