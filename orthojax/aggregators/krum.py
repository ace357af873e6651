"""Krum and Multi-Krum: select the task gradients closest to their neighbours (Byzantine-robust averaging).

For T gradients g_1..g_T of which at most f (``n_byzantine``) may be adversarial, Krum scores each gradient
by the sum of its distances to its T - f - 2 nearest other gradients,

    s(i) = sum_{j in N_i} ||g_i - g_j||,    N_i = the T - f - 2 indices j != i closest to g_i,

and Multi-Krum averages the m (``n_selected``) gradients of smallest score: w_i = 1/m for the selected rows
and 0 otherwise, d = combine(w, J). The distances come from the Gramian alone,
||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij, so :func:`krum_weights` is a function of G. Ties in the scores are
broken towards the lower task index.

Blanchard et al. score with squared distances; TorchJD 0.18's ``Krum`` (the default here) with distances.
``squared=True`` gives the paper's score.

References:
  Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS 2017 (Krum, Multi-Krum);
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_krum.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from orthojax.aggregators._numerics import _pow2_normalised
from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info
from orthojax.aggregators.gramian import combine, gramian

__all__ = ["krum", "krum_weights"]

PyTree = Any


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"krum: {what} must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"krum: {what} must be >= {minimum}; got {value}")
    return value


def _check_sizes(num_tasks: int, n_byzantine: int, n_selected: int) -> None:
    if num_tasks < n_byzantine + 3:
        raise ValueError(f"krum: needs T >= n_byzantine + 3 = {n_byzantine + 3} tasks; got T={num_tasks}")
    if num_tasks < n_selected:
        raise ValueError(f"krum: needs T >= n_selected = {n_selected} tasks; got T={num_tasks}")


def krum_weights(G: jax.Array, n_byzantine: int, n_selected: int = 1, *, squared: bool = False) -> jax.Array:
    """Multi-Krum weights from the Gramian: 1/n_selected on the selected tasks, 0 elsewhere.

    Args:
      G: (T, T) Gramian J J^T (symmetric positive semi-definite), floating point.
      n_byzantine: f >= 0, the number of gradients that may be adversarial; T >= f + 3.
      n_selected: m >= 1, the number of gradients averaged (1: Krum); T >= m.
      squared: score with squared distances (Blanchard et al.) instead of distances (TorchJD).

    Returns:
      (T,) weights of G's dtype; the direction is ``combine(weights, J)``. Invariant to G -> c G, c > 0.

    Raises:
      TypeError / ValueError: bad hyper-parameters, or G not square with enough rows.
    """
    n_byzantine = _check_int(n_byzantine, "n_byzantine", 0)
    n_selected = _check_int(n_selected, "n_selected", 1)
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"krum_weights: G must be a square (T, T) matrix; got shape {G.shape}")
    num_tasks = G.shape[0]
    _check_sizes(num_tasks, n_byzantine, n_selected)
    # Normalise by the largest squared norm: the selection is scale invariant and this keeps G's range.
    diag = jnp.diagonal(G)
    top = jnp.max(diag)
    G = G / jnp.where(top > 0, top, 1)
    diag = jnp.diagonal(G)
    sq = jnp.maximum(diag[:, None] + diag[None, :] - 2 * G, 0.0)
    dist = sq if squared else jnp.sqrt(sq)
    n_closest = num_tasks - n_byzantine - 2
    # Row i sorted ascending; its first entry is the distance to itself (0), the next n_closest the neighbours.
    scores = jnp.sum(jnp.sort(dist, axis=1)[:, 1 : n_closest + 1], axis=1)
    selected = jnp.argsort(scores, stable=True)[:n_selected]
    return jnp.zeros((num_tasks,), G.dtype).at[selected].set(1.0 / n_selected)


def krum(n_byzantine: int, n_selected: int = 1, *, squared: bool = False) -> Aggregator:
    """Krum / Multi-Krum aggregator (TorchJD's ``Krum(n_byzantine, n_selected)``).

    Args:
      n_byzantine: f >= 0, the number of task gradients that may be adversarial.
      n_selected: m >= 1, the number of selected gradients that are averaged (1: Krum).
      squared: score with squared distances (Blanchard et al.) instead of distances (TorchJD, default).

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, None)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) leaves with
      T >= max(f + 3, m); ``direction`` the mean of the m selected task gradients, with one task's structure
      and dtype. ``key`` is ignored. The selection is made on J rescaled by a power of two, so it is the same
      for any scale of J. Diagnostics (``with_info``): "task_weights", "grad_norms", "gramian".

    Raises:
      TypeError: a hyper-parameter is not an int (``squared`` not a bool).
      ValueError: n_byzantine < 0 or n_selected < 1 (at once); too few tasks (when called).

    Example:
      >>> J = jnp.array([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1], [-50.0, 80.0]])  # an outlier: row 3
      >>> d, _ = krum(n_byzantine=1, n_selected=2)(J)  # T >= max(n_byzantine + 3, n_selected)
      >>> bool(jnp.all(jnp.abs(d) < 2.0))
      True
    """
    _check_int(n_byzantine, "n_byzantine", 0)
    _check_int(n_selected, "n_selected", 1)
    if not isinstance(squared, bool):
        raise TypeError(f"krum: squared must be a bool; got {squared!r}")

    def fn(jacobian: PyTree, state: None, key: Any) -> Aggregation:
        del key  # deterministic
        _check_stateless(state, "krum")
        G = gramian(_pow2_normalised(jacobian)[1])
        w = krum_weights(G, n_byzantine, n_selected, squared=squared)
        return Aggregation(combine(w, jacobian), None, jacobian_info(jacobian, w))

    return Aggregator(name="krum", fn=fn)
