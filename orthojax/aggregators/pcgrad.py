"""PCGrad ("gradient surgery"): each task gradient loses its components that conflict with the others.

d = sum_i g_i^PC (see :func:`pcgrad_solution`). Scale: the *sum* of the projected gradients (w = 1 without
conflicts), as in the paper's code, LibMTL's ``PCGrad`` and TorchJD's ``PCGrad``. Order: all three visit the
other tasks in a random order per task from a global RNG (``random.shuffle``, ``torch.randperm``); here the
order comes from ``key`` (``random_order=True``), or is 0, ..., T-1 (``random_order=False``; TorchJD with an
identity ``randperm`` gives the same direction, as the golden-value tests check).

References:
  Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020;
  TorchJD, ``torchjd/aggregation/_pcgrad.py``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from orthojax.aggregators._checks import _check_bool
from orthojax.aggregators._numerics import _saturate, _times_ratio
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _nan_in_nan_out

__all__ = ["pcgrad", "pcgrad_order", "pcgrad_solution", "pcgrad_weights"]


def pcgrad_order(rng: jax.Array, num_tasks: int) -> jax.Array:
    """(T, T) int array: row i is an independent random permutation of the tasks (task i's projection order)."""
    keys = jax.random.split(rng, num_tasks)
    return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)


@_nan_in_nan_out
def pcgrad_solution(
    G: GramianLike, rng: Optional[jax.Array] = None, *, order: Optional[jax.Array] = None
) -> Solution:
    """PCGrad ("gradient surgery") computed exactly from the Gramian.

    For each task i, start from g_i^PC = g_i and visit the other tasks j in the order ``order[i]``; when
    <g_i^PC, g_j> < 0, project the conflict away: g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j. The update
    is d = sum_i g_i^PC. Every g_i^PC stays in the row space: g_i^PC = ||g_i|| sum_j c_ij u_j on the unit
    gradients u_j, with c_i <- c_i - (C c_i)_j e_j (C the cosines), which involves no norm at all; then
    d = sum_j a_j u_j with a_j = sum_i ||g_i|| c_ij, and w_j = sum_i (||g_i|| / ||g_j||) c_ij. A task j with
    g_j = 0 is skipped (nothing to project on); j = i is skipped (as in TorchJD's PCGrad).

    Task order: ``order`` (T, T) ints, row i a permutation of 0..T-1, is used as given; else ``rng`` draws an
    independent random permutation per task (:func:`pcgrad_order`, as in the paper's code); with neither,
    the deterministic order 0, 1, ..., T-1 for every task. The result depends on the order when T >= 3.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      rng: optional PRNG key for a random order.
      order: optional (T, T) integer array of per-task orders (takes precedence over ``rng``).

    Returns:
      :class:`Solution` (residual 0); d is on the scale of the sum of the task gradients (w = 1 without
      conflicts). A weight is a ratio of norms times a cosine: it saturates when two conflicting tasks'
      norms differ by more than the dtype's range (the coefficients do not).

    References:
      Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """
    T, n, C = _as_factored(G, "pcgrad_weights")
    if order is None:
        order = pcgrad_order(rng, T) if rng is not None else jnp.tile(jnp.arange(T), (T, 1))
    order = jnp.asarray(order, jnp.int32)
    if order.shape != (T, T):
        raise ValueError(f"pcgrad_weights: order must have shape ({T}, {T}); got {order.shape}")
    diag = jnp.diagonal(C)

    def one_task(i, row):
        def body(k, c):
            j = row[k]
            inner = C[j] @ c
            ok = (inner < 0) & (j != i) & (diag[j] > 0)
            coef = jnp.where(ok, inner / jnp.where(ok, diag[j], 1), 0.0)
            return c.at[j].add(-coef)

        return jax.lax.fori_loop(0, T, body, jax.nn.one_hot(i, T, dtype=C.dtype))

    Cf = jax.vmap(one_task)(jnp.arange(T), order)  # (i, j): c_ij
    coefficients = jnp.sum(n[:, None] * Cf, axis=0)
    eye = jnp.eye(T, dtype=bool)
    terms = jnp.where(eye, Cf, _times_ratio(Cf, n[:, None], jnp.broadcast_to(n[None, :], (T, T))))  # (n_i / n_j) c_ij
    weights = _saturate(jnp.sum(terms, axis=0))
    return Solution(weights, coefficients, jnp.zeros((), C.dtype))


def pcgrad_weights(G: GramianLike, rng: Optional[jax.Array] = None, *, order: Optional[jax.Array] = None) -> jax.Array:
    """PCGrad weights (:func:`pcgrad_solution`): (T,)."""
    return pcgrad_solution(G, rng, order=order).weights




def pcgrad(random_order: bool = True) -> Aggregator:
    """PCGrad aggregator: the sum of the de-conflicted task gradients (:func:`pcgrad_solution`).

    Stateless. With ``random_order=True`` (the paper's) each call draws every task's projection order from
    ``key`` (:func:`pcgrad_order`) and raises without one; with False the order is 0, ..., T-1 and ``key``
    is ignored. ``with_info`` reports "task_weights", "grad_norms" and "gramian".

    Args:
      random_order: draw the projection orders from ``key`` (True) or use the fixed order (False).

    Raises:
      ValueError: ``random_order`` not a bool.
    """
    _check_bool(random_order, "random_order", "pcgrad")
    if random_order:
        return gramian_aggregator("pcgrad", lambda S, key: pcgrad_solution(S, key), needs_key=True)
    return gramian_aggregator("pcgrad", lambda S, key: pcgrad_solution(S))
