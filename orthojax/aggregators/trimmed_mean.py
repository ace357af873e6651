"""Coordinate-wise trimmed mean of the task gradients (Byzantine-robust averaging).

For each coordinate p, sort the T values J[:, p], drop the k (``trim_number``) largest and the k smallest,
and average the T - 2k that remain:

    d_p = 1/(T - 2k) sum_{r=k+1}^{T-k} J_(r), p,   J_(1), p <= ... <= J_(T), p the sorted column.

Not a weighting of the task gradients (each coordinate keeps different tasks), so no Gramian form. k = 0
is the mean. Equivariant to permutations of the tasks and positively homogeneous (J -> cJ, c > 0).

References:
  Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
  Rates", ICML 2018 (coordinate-wise trimmed mean);
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_trimmed_mean.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info

__all__ = ["trimmed_mean"]

PyTree = Any


def trimmed_mean(trim_number: int) -> Aggregator:
    """Trimmed-mean aggregator (TorchJD's ``TrimmedMean(trim_number)``).

    Args:
      trim_number: k >= 0, the number of largest and of smallest values dropped in every coordinate.

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, None)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) leaves with T >= 2k + 1;
      ``direction`` the per-coordinate trimmed mean, with one task's structure and dtype. ``key`` is
      ignored. Diagnostics (``with_info``): "grad_norms", "gramian" (no task weights: not a weighting).

    Raises:
      TypeError: ``trim_number`` is not an int.
      ValueError: ``trim_number`` < 0 (at once); T < 2k + 1 (when called).

    Example:
      >>> d, _ = trimmed_mean(1)(jnp.array([[0.0], [1.0], [2.0], [100.0]]))  # [1.5]
    """
    if isinstance(trim_number, bool) or not isinstance(trim_number, int):
        raise TypeError(f"trimmed_mean: trim_number must be an int; got {trim_number!r}")
    if trim_number < 0:
        raise ValueError(f"trimmed_mean: trim_number must be >= 0; got {trim_number}")
    k = trim_number

    def one(leaf: jax.Array) -> jax.Array:
        if jnp.ndim(leaf) == 0:
            raise ValueError("trimmed_mean: every Jacobian leaf needs a leading task axis T; got a scalar")
        num_tasks = leaf.shape[0]
        if num_tasks < 2 * k + 1:
            raise ValueError(
                f"trimmed_mean: needs T >= 2 * trim_number + 1 = {2 * k + 1} tasks; got T={num_tasks}"
            )
        kept = jnp.sort(leaf, axis=0)[k : num_tasks - k]
        return jnp.mean(kept, axis=0)

    def fn(jacobian: PyTree, state: None, key: Any) -> Aggregation:
        del key  # deterministic
        _check_stateless(state, "trimmed_mean")
        return Aggregation(jax.tree.map(one, jacobian), None, jacobian_info(jacobian))

    return Aggregator(name="trimmed_mean", fn=fn)
