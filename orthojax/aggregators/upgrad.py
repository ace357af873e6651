"""UPGrad and DualProj: projections onto the dual cone {x : J x >= 0} of the Jacobian.

Both return directions that conflict with no task (J d >= 0). Scale: with the default preference 1/T,
UPGrad's d is the *mean* of the projections of the task gradients and DualProj's the projection of the
*mean* gradient, as TorchJD's ``UPGrad`` / ``DualProj`` return.

References:
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
  TorchJD, ``torchjd/aggregation/_upgrad.py``, ``_dualproj.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from orthojax.aggregators._checks import _check_cap, _check_nonneg_float, _check_pref, _preference
from orthojax.aggregators._numerics import _ratio, _saturate, _times_ratio
from orthojax.aggregators._solvers import _active_set_cap, _project_above
from orthojax.aggregators.base import Aggregator, gramian_aggregator
from orthojax.aggregators.gramian import GramianLike, Solution, _as_factored, _nan_in_nan_out, _normalised_gramian

__all__ = ["dualproj", "dualproj_solution", "dualproj_weights", "upgrad", "upgrad_solution", "upgrad_weights"]


_TORCHJD_DUAL_CONE_NOTE = """
    Relation to TorchJD (``UPGradWeighting`` / ``DualProjWeighting``: ``normalize(G, norm_eps=1e-4)``,
    ``regularize(G, reg_eps)``, then quadprog in float64 on the host): the same normalised, regularised
    QPs, solved to the tolerance above, with two differences. (1) TorchJD replaces G by the zero matrix when
    trace(G) = ||J||_F^2 < norm_eps = 1e-4, so for small gradients (e.g. all norms below ~1e-2) its QPs see
    reg_eps I only and return v = max(u, 0): no projection at all, whatever the conflicts. Here every nonzero
    Gramian is normalised (the weights are invariant to the scale of J), so the projection happens at every
    scale. (2) With ``reg_eps=0`` and a singular Gramian (rank-deficient J, e.g. when 0 lies in the convex
    hull of the gradients, such as two opposing tasks), quadprog rejects the matrix (not positive definite)
    and TorchJD raises; here the solver returns a minimiser (the direction d is unique, the weights need not
    be). With reg_eps > 0 the QP is strictly convex and both return its unique solution (TorchJD in float64,
    here in G's dtype)."""



def _dual_cone_setup(G, pref, reg_eps, num_iters, name):
    T, n, C = _as_factored(G, name)
    _check_nonneg_float(reg_eps, "reg_eps", name)
    _check_cap(num_iters, "num_iters", name)
    return T, n, C, _preference(pref, T, C.dtype, name), _active_set_cap(num_iters, T)


@_nan_in_nan_out
def upgrad_solution(
    G: GramianLike, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: Optional[int] = None
) -> Solution:
    """UPGrad: the average of the projections of the (weighted) task gradients onto the dual cone of J.

    The dual cone is {x : J x >= 0} (directions that conflict with no task). The projection of u^T J onto it
    is v^T J with v = argmin_{v >= u} v^T G v (Quinton & Rey, Proposition 1). UPGrad projects each
    pref_i e_i^T J and adds: w = sum_i argmin_{v >= pref_i e_i} v^T G v, so J d = G w >= 0.

    ``reg_eps > 0``: the QPs are solved on G / trace(G) + reg_eps I (TorchJD's normalisation and
    regularisation; strictly convex; the guarantee relaxes to G w >= -reg_eps trace(G) w, so a task with
    ||g_t||^2 below ~reg_eps ||J||_F^2 is effectively unconstrained). ``reg_eps = 0``: exact, solved on the
    cosines: the projection of g_i is ||g_i|| sum_t a_t u_t with a = argmin_{a >= pref_i e_i} a^T C a, so
    each task's term is invariant to the other tasks' scales and scales with its own.

    Solver: exact active-set NNLS (Lawson-Hanson, finite in exact arithmetic, singular Gramians included) on
    z = v - u >= 0 for each QP, stopping when every KKT inequality holds to 4 eps (max|H u| + max|H| max|z|)
    (eps of G's dtype), whatever T. ``Solution.residual`` is the largest KKT residual
    max_t |min(v_t - u_t, (H v)_t)| over the T QPs, with H the normalised Gramian plus reg_eps I or, for
    reg_eps = 0, the cosine matrix (below 1e-5 in float32 and 1e-12 in float64 for T <= 40 in the tests). In
    float32 the weights then agree with a float64 solution of the same QP to about cond(H) * 1e-7.
    {note}

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      pref: (T,) preference weights; default 1/T each (the mean).
      reg_eps: Tikhonov regularisation of the normalised Gramian, >= 0.
      num_iters: cap on the active-set iterations per QP; None (default): 10 T + 50.

    Returns:
      :class:`Solution`: weights, each w_i >= pref_i (for pref >= 0).

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (TorchJD).
    """
    T, n, C, pref, cap = _dual_cone_setup(G, pref, reg_eps, num_iters, "upgrad_weights")
    U = jnp.diag(pref)
    if reg_eps > 0:
        Q, _ = _normalised_gramian(n, C)
        H = Q + reg_eps * jnp.eye(T, dtype=Q.dtype)
        V, _, res = jax.vmap(lambda u: _project_above(H, u, cap))(U)
        w = jnp.sum(V, axis=0)
        return Solution(w, w * n, jnp.max(res))
    A, Z, res = jax.vmap(lambda u: _project_above(C, u, cap))(U)  # row i: task i's projection on the unit basis
    coefficients = jnp.sum(n[:, None] * A, axis=0)
    w = pref + jnp.sum(_times_ratio(Z, n[:, None], jnp.broadcast_to(n[None, :], (T, T))), axis=0)  # (n_i / n_t) z_it
    return Solution(_saturate(w), coefficients, jnp.max(res))


def upgrad_weights(
    G: GramianLike, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: Optional[int] = None
) -> jax.Array:
    """UPGrad weights (:func:`upgrad_solution`): (T,)."""
    return upgrad_solution(G, pref, reg_eps=reg_eps, num_iters=num_iters).weights


@_nan_in_nan_out
def dualproj_solution(
    G: GramianLike, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: Optional[int] = None
) -> Solution:
    """DualProj: the projection of the (weighted) mean gradient onto the dual cone of J.

    w = argmin_{v >= pref} v^T G v, so d = w @ J is the projection of pref @ J onto {x : J x >= 0} and
    J d = G w >= 0. ``reg_eps > 0``: solved on G / trace(G) + reg_eps I, like :func:`upgrad_solution`.
    ``reg_eps = 0``: exact, solved on the cosines with b_t = pref_t ||g_t|| / max_s ||g_s||:
    a = argmin_{a >= b} a^T C a, w_t = pref_t + (a_t - b_t) max_s ||g_s|| / ||g_t||, so a task with a tiny
    gradient still constrains d (<d, g_t> >= 0 whatever ||g_t||).

    Solver and ``Solution.residual``: as :func:`upgrad_solution` (one QP).
    {note}

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      pref: (T,) preference weights; default 1/T each (the mean gradient).
      reg_eps: Tikhonov regularisation of the normalised Gramian, >= 0.
      num_iters: cap on the active-set iterations; None (default): 10 T + 50.

    Returns:
      :class:`Solution`: weights, w >= pref.

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (TorchJD).
    """
    T, n, C, pref, cap = _dual_cone_setup(G, pref, reg_eps, num_iters, "dualproj_weights")
    if reg_eps > 0:
        Q, _ = _normalised_gramian(n, C)
        w, _, res = _project_above(Q + reg_eps * jnp.eye(T, dtype=Q.dtype), pref, cap)
        return Solution(w, w * n, res)
    nmax = jnp.max(n)
    nt = _ratio(n, jnp.full_like(n, nmax))
    b = pref * nt
    a, z, res = _project_above(C, b, cap)
    w = pref + _times_ratio(z, jnp.full_like(n, nmax), n)  # pref_t + z_t max_s ||g_s|| / ||g_t||
    return Solution(_saturate(w), a * nmax, res)


def dualproj_weights(
    G: GramianLike, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: Optional[int] = None
) -> jax.Array:
    """DualProj weights (:func:`dualproj_solution`): (T,)."""
    return dualproj_solution(G, pref, reg_eps=reg_eps, num_iters=num_iters).weights


upgrad_solution.__doc__ = upgrad_solution.__doc__.replace("{note}", _TORCHJD_DUAL_CONE_NOTE)
dualproj_solution.__doc__ = dualproj_solution.__doc__.replace("{note}", _TORCHJD_DUAL_CONE_NOTE)




def _dual_cone_aggregator(name: str, solution: Callable[..., Solution], pref: Any, reg_eps: float,
                          num_iters: Optional[int]) -> Aggregator:
    """UPGrad's or DualProj's aggregator: the hyper-parameters checked at once, ``solution`` per step."""
    pref = _check_pref(pref, name)
    _check_nonneg_float(reg_eps, "reg_eps", name)
    _check_cap(num_iters, "num_iters", name)

    def solve(S, key):
        del key  # deterministic
        return solution(S, pref, reg_eps=reg_eps, num_iters=num_iters)

    return gramian_aggregator(name, solve, reports_residual=True)


def upgrad(pref: Optional[tuple] = None, reg_eps: float = 1e-4, num_iters: Optional[int] = None) -> Aggregator:
    """UPGrad aggregator: the (preference-weighted) mean of the task gradients' projections onto the dual
    cone (:func:`upgrad_solution`).

    Stateless and deterministic. ``with_info`` reports "task_weights", "grad_norms", "gramian" and
    "solver_residual".

    Args:
      pref: optional (T,) preference weights (default 1/T each).
      reg_eps: regularisation of the normalised Gramian (0: exact, per-task scale invariant).
      num_iters: cap on the solver's active-set iterations per QP; None (default): 10 T + 50.

    Raises:
      ValueError: a malformed ``pref``, a negative or non-finite ``reg_eps``, a ``num_iters`` below 1.
    """
    return _dual_cone_aggregator("upgrad", upgrad_solution, pref, reg_eps, num_iters)


def dualproj(pref: Optional[tuple] = None, reg_eps: float = 1e-4, num_iters: Optional[int] = None) -> Aggregator:
    """DualProj aggregator: the projection of the (preference-weighted) mean gradient onto the dual cone
    (:func:`dualproj_solution`).

    Stateless and deterministic. ``with_info`` reports "task_weights", "grad_norms", "gramian" and
    "solver_residual".

    Args:
      pref: optional (T,) preference weights (default 1/T each).
      reg_eps: regularisation of the normalised Gramian (0: exact).
      num_iters: cap on the solver's active-set iterations; None (default): 10 T + 50.

    Raises:
      ValueError: a malformed ``pref``, a negative or non-finite ``reg_eps``, a ``num_iters`` below 1.
    """
    return _dual_cone_aggregator("dualproj", dualproj_solution, pref, reg_eps, num_iters)
