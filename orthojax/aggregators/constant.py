"""Fixed-weight aggregators: Constant(weights), Sum and Mean.

The direction is a fixed linear combination of the task gradients,

    d = combine(w, J) = sum_t w_t g_t,

with w given (Constant), w = 1 (Sum, linear scalarisation with unit weights) or w = 1/T (Mean). They are
the baselines every conflict-aware aggregator is compared with, and equal the gradient of the weighted
total loss sum_t w_t L_t.

References:
  TorchJD 0.18 (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024),
  https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_constant.py``, ``_sum.py``, ``_mean.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.aggregators.gramian import combine

__all__ = ["constant", "mean", "sum_"]

PyTree = Any
Aggregate = Callable[..., tuple[PyTree, None]]


def _num_tasks(jacobian: PyTree, name: str) -> int:
    """T, the common leading axis of the Jacobian's leaves (floating point, at least 1-D)."""
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError(f"{name}: the Jacobian has no leaves")
    shapes = [jnp.shape(leaf) for leaf in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{name}: every Jacobian leaf needs the same leading task axis T; got shapes {shapes}")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"{name}: the Jacobian must be floating point; got dtype {jnp.result_type(leaf)}")
    return shapes[0][0]


def _fixed_weights(make_weights: Callable[[int], np.ndarray], name: str) -> Aggregate:
    def aggregate(jacobian: PyTree, state: None = None, *, key: Any = None) -> tuple[PyTree, None]:
        del key  # deterministic
        if state is not None:
            raise ValueError(f"{name}: the aggregator is stateless; pass state=None, got {type(state).__name__}")
        w = make_weights(_num_tasks(jacobian, name))
        return combine(jnp.asarray(w), jacobian), None

    aggregate.__name__ = name
    return aggregate


def constant(weights: Any) -> Aggregate:
    """Aggregator d = sum_t w_t g_t with fixed, user-given weights (TorchJD's ``Constant``).

    Args:
      weights: (T,) finite real weights (a sequence or array; any sign).

    Returns:
      ``aggregate(jacobian, state=None, *, key=None) -> (direction, None)``: ``jacobian`` is a (T, P) array
      or a pytree of (T, ...) floating-point leaves; ``direction`` has one task's structure and dtype
      (the weights are cast to it). ``key`` is ignored. ``aggregate`` raises ValueError when the Jacobian's
      task axis is not T.

    Raises:
      TypeError: ``weights`` is not numeric.
      ValueError: ``weights`` is not 1-D, is empty, or has a non-finite entry.

    Example:
      >>> d, _ = constant([0.5, 2.0])(jnp.array([[1.0, 0.0], [0.0, 1.0]]))  # [0.5, 2.0]
    """
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"constant: weights must be a sequence of numbers; got {weights!r}") from err
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"constant: weights must be a non-empty 1-D sequence; got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"constant: weights must be finite; got {w.tolist()}")

    def make(num_tasks: int) -> np.ndarray:
        if num_tasks != w.size:
            raise ValueError(f"constant: the Jacobian has T={num_tasks} tasks but {w.size} weights were given")
        return w

    return _fixed_weights(make, "constant")


def sum_() -> Aggregate:
    """Aggregator d = sum_t g_t, the gradient of the total loss (TorchJD's ``Sum``).

    Named with a trailing underscore so as not to shadow Python's ``sum``.

    Returns:
      ``aggregate(jacobian, state=None, *, key=None) -> (direction, None)`` as for :func:`constant`.
    """
    return _fixed_weights(lambda num_tasks: np.ones((num_tasks,)), "sum")


def mean() -> Aggregate:
    """Aggregator d = (1/T) sum_t g_t, the gradient of the mean loss (TorchJD's ``Mean``).

    Returns:
      ``aggregate(jacobian, state=None, *, key=None) -> (direction, None)`` as for :func:`constant`.
    """
    return _fixed_weights(lambda num_tasks: np.full((num_tasks,), 1.0 / num_tasks), "mean")
