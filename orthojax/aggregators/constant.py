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

import jax.numpy as jnp
import numpy as np

from orthojax.aggregators._checks import _check_vector
from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info, num_tasks_of
from orthojax.aggregators.gramian import combine

__all__ = ["constant", "mean_aggregator", "sum_aggregator"]

PyTree = Any


def _fixed_weights(make_weights: Callable[[int], np.ndarray], name: str) -> Aggregator:
    def fn(jacobian: PyTree, state: None, key: Any) -> Aggregation:
        del key  # deterministic
        _check_stateless(state, name)
        num_tasks, dtype = num_tasks_of(jacobian, name)
        w = jnp.asarray(make_weights(num_tasks), dtype)
        return Aggregation(combine(w, jacobian), None, jacobian_info(jacobian, w))

    return Aggregator(name=name, fn=fn)


def constant(weights: Any) -> Aggregator:
    """Aggregator d = sum_t w_t g_t with fixed, user-given weights (TorchJD's ``Constant``).

    Args:
      weights: (T,) finite real weights (a sequence or array; any sign).

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, None)``: ``jacobian`` is a (T, P) array or a pytree of (T, ...) floating-point leaves;
      ``direction`` has one task's structure and dtype (the weights are cast to it). ``key`` is ignored.
      ``aggregate`` raises ValueError when the Jacobian's task axis is not T. Diagnostics
      (``with_info``): "task_weights", "grad_norms", "gramian".

    Raises:
      TypeError: ``weights`` is not numeric.
      ValueError: ``weights`` is not 1-D, is empty, or has a non-finite entry.

    Example:
      >>> d, _ = constant([0.5, 2.0])(jnp.array([[1.0, 0.0], [0.0, 1.0]]))  # [0.5, 2.0]
    """
    w = _check_vector(weights, "weights", "constant")

    def make(num_tasks: int) -> np.ndarray:
        if num_tasks != w.size:
            raise ValueError(f"constant: the Jacobian has T={num_tasks} tasks but {w.size} weights were given")
        return w

    return _fixed_weights(make, "constant")


def sum_aggregator() -> Aggregator:
    """Aggregator d = sum_t g_t, the gradient of the total loss (TorchJD's ``Sum``).

    Named ``sum_aggregator`` (registry name "sum") so that ``from orthojax.aggregators import *`` cannot
    shadow Python's ``sum``; :func:`mean_aggregator` is named alike.

    Returns:
      An :class:`~orthojax.aggregators.Aggregator` as for :func:`constant`, with weights 1.
    """
    return _fixed_weights(lambda num_tasks: np.ones((num_tasks,)), "sum")


def mean_aggregator() -> Aggregator:
    """Aggregator d = (1/T) sum_t g_t, the gradient of the mean loss (TorchJD's ``Mean``; registry name "mean").

    Returns:
      An :class:`~orthojax.aggregators.Aggregator` as for :func:`constant`, with weights 1/T.
    """
    return _fixed_weights(lambda num_tasks: np.full((num_tasks,), 1.0 / num_tasks), "mean")
