"""MGDA: the minimum-norm point of the convex hull of the task gradients.

d = w @ J with w = argmin_{w in simplex} w^T G w, so <g_t, d> >= ||d||^2 for every task (d conflicts with
none). Scale: d is the min-norm point itself (weights on the simplex), as TorchJD's ``MGDA`` returns;
LibMTL's ``MGDA`` (default ``mgda_gn="none"``) uses the same weights and so the same direction.

References:
  Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization", 2012;
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018;
  TorchJD, ``torchjd/aggregation/_mgda.py``.
"""

from __future__ import annotations

from typing import Optional

import jax

from orthojax.aggregators._checks import _check_cap
from orthojax.aggregators._solvers import _active_set_cap, _min_norm, _ratios_to_min
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _nan_in_nan_out

__all__ = ["mgda", "mgda_solution", "mgda_weights"]


@_nan_in_nan_out
def mgda_solution(G: GramianLike, *, num_iters: Optional[int] = None) -> Solution:
    """MGDA: the weights of the minimum-norm point of the convex hull of the task gradients.

    w = argmin_{w >= 0, sum w = 1} w^T G w, so d = w @ J is the min-norm element of conv{g_1..g_T} and
    <g_t, d> >= ||d||^2 >= 0 for every t (d never conflicts with a task).

    Solver: exact active-set NNLS (Lawson-Hanson, :func:`_nnls`) on the least-distance form of the problem in
    the coordinates ahat_t = w_t ||g_t|| / n_min, n_min = min_s ||g_s|| (see :func:`_min_norm`), so that tasks
    whose norms differ by any factor are handled at their own scale. In exact arithmetic it ends after
    finitely many active-set changes at the exact minimiser, singular Gramians included; it stops when every
    KKT inequality holds to tol = 4 eps (1 + 2 max_t ahat_t) (eps of G's dtype: ~1.4e-6 in float32,
    ~2.7e-15 in float64 for O(1) weights), whatever T. ``Solution.residual`` is the KKT residual reached,
    max_t |min(ahat_t, (C ahat)_t - ||d||^2 / (||g_t|| n_min))| (C the cosines): about 2 tol plus the rounding
    of the linear solves, below 1e-4 in float32 and 1e-10 in float64 for T <= 40 in the tests, singular
    Gramians included. It bounds the violation of the no-conflict guarantee in the solver's coordinates:
    <g_t, d> >= ||d||^2 - residual * ||g_t|| n_min for every t; forming d = w @ J and the products in the
    working dtype adds rounding of order eps * ||g_t|| * sum_s w_s ||g_s|| (measured up to 3x the
    residual term in float32 on rank-deficient 20 x 30 Jacobians), so check the guarantee with that slack.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      num_iters: cap on the active-set iterations; None (default): 10 T + 50 (formerly the number of
        Frank-Wolfe steps). A cap too small to reach the tolerance shows in ``residual``.

    Returns:
      :class:`Solution`: weights on the simplex (a zero gradient gets all the weight: 0 is the min-norm
      point), the coefficients of d on the unit gradients, the KKT residual. When the hull contains several
      minimisers (rank-deficient J) the direction d is unique, the weights need not be.

    References:
      Desideri 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
    """
    T, n, C = _as_factored(G, "mgda_weights")
    _check_cap(num_iters, "num_iters", "mgda_weights", minimum=0)
    rho, has_zero, n_min = _ratios_to_min(n)
    w, ahat, residual = _min_norm(rho, has_zero, C, max(_active_set_cap(num_iters, T), 1))
    return Solution(w, n_min * ahat, residual)


def mgda_weights(G: GramianLike, *, num_iters: Optional[int] = None) -> jax.Array:
    """MGDA weights (:func:`mgda_solution`): (T,) on the simplex."""
    return mgda_solution(G, num_iters=num_iters).weights




def mgda(num_iters: Optional[int] = None) -> Aggregator:
    """MGDA aggregator: d = the min-norm element of conv{g_1, ..., g_T} (:func:`mgda_solution`).

    Stateless and deterministic (``key`` is ignored). ``with_info`` reports "task_weights", "grad_norms",
    "gramian" and "solver_residual" (the KKT residual of :func:`mgda_solution`).

    Args:
      num_iters: cap on the solver's active-set iterations; None (default): 10 T + 50.

    Raises:
      ValueError: ``num_iters`` not None or an integer >= 0.
    """
    _check_cap(num_iters, "num_iters", "mgda", minimum=0)
    return gramian_aggregator("mgda", lambda S, key: mgda_solution(S, num_iters=num_iters), reports_residual=True)
