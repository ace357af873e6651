"""Exact active-set solvers for the small QPs of the Gramian weightings (private).

:func:`_nnls` is Lawson & Hanson's non-negative least squares on the normal equations; :func:`_min_norm`
finds the min-norm point of a convex hull with it (least-distance programming, MGDA and CAGrad's inner
problem) and :func:`_project_above` the projection min_{v >= u} v^T H v (UPGrad, DualProj). All are
``jax.lax.while_loop`` s that stop at a stated tolerance or an iteration cap; the KKT residual they reach
is returned so that callers can report it.

References:
  Lawson & Hanson, "Solving Least Squares Problems", 1974, ch. 23 (NNLS; least-distance programming).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import jax.scipy.linalg


def _active_set_cap(num_iters: Optional[int], T: int) -> int:
    """Iteration cap of :func:`_nnls`: ``num_iters`` or, by default, 10 T + 50 (an active-set change per
    iteration; Lawson-Hanson typically needs fewer than 3 T)."""
    return 10 * T + 50 if num_iters is None else int(num_iters)



def _nnls(H: jax.Array, q: jax.Array, max_iter: int) -> jax.Array:
    """argmin_{x >= 0} x^T H x / 2 + q^T x for H positive semi-definite and q in the range of H.

    Lawson & Hanson's active-set NNLS on the normal equations (H = A^T A, q = -A^T b): the passive set P
    starts empty; while some -(H x + q)_j > tol off P, the largest joins P and x_P solves H_PP x_P = -q_P,
    stepping back to the last feasible point (and dropping the indices that reach 0) when a component turns
    non-positive. In exact arithmetic H_PP stays positive definite even for a singular H (the entering
    column is never in the span of P) and the loop ends after finitely many steps at the exact minimiser.
    Stops when the largest off-P component of -(H x + q) is <= tol = 4 eps (max|q| + max|H| max|x|) (eps of
    the dtype; about the rounding error of one entry of H x + q) or after ``max_iter`` steps (one linear
    solve with one step of iterative refinement each). An index whose entry breaks down numerically
    (non-finite or immediately non-positive solve) is set aside until the iterate moves.
    """
    T = q.shape[0]
    dtype = q.dtype
    eps = jnp.finfo(dtype).eps
    eye = jnp.eye(T, dtype=dtype)
    H = 0.5 * (H + H.T)
    qmax = jnp.max(jnp.abs(q))
    hmax = jnp.max(jnp.abs(H))

    def solve(P):
        m = P.astype(dtype)
        A = H * m[:, None] * m[None, :] + eye * (1.0 - m)
        rhs = -q * m
        lu = jax.scipy.linalg.lu_factor(A)
        s = jax.scipy.linalg.lu_solve(lu, rhs)
        s = s + jax.scipy.linalg.lu_solve(lu, rhs - A @ s)
        return s * m

    def cond(state):
        _, _, _, _, it, done = state
        return (~done) & (it < max_iter)

    def body(state):
        x, P, blocked, last, it, done = state
        s = solve(P)
        finite = jnp.all(jnp.isfinite(s))
        feasible = finite & jnp.all(jnp.where(P, s > 0, True))
        # feasible: move to s, then add the most violated index (or stop)
        neg_grad = -(H @ s + q)
        cand = jnp.where(P | blocked, -jnp.inf, neg_grad)
        j = jnp.argmax(cand)
        add = cand[j] > 4 * eps * (qmax + hmax * jnp.max(jnp.abs(s)))
        x_a, P_a, last_a, done_a = s, P.at[j].set(P[j] | add), jnp.where(add, j, last).astype(jnp.int32), ~add
        # infeasible: step towards s until a passive component reaches 0 and drop it
        bad = P & (s <= 0)
        den = x - s
        ratio = jnp.where(bad, jnp.where(den > 0, x / jnp.where(den > 0, den, 1), 0.0), jnp.inf)
        k = jnp.argmin(ratio)
        alpha = jnp.clip(ratio[k], 0.0, 1.0)
        x_b = (x + alpha * (s - x)).at[k].set(0.0)
        P_b = P & (x_b > 0)
        x_b = jnp.where(P_b, x_b, 0.0)
        moved = alpha > 0
        blocked_b = jnp.where(moved, jnp.zeros_like(blocked), blocked.at[k].set(True))
        # breakdown (singular or non-finite solve): undo the last entry and set it aside
        P_c = P.at[last].set(False)
        blocked_c = blocked.at[last].set(True)
        x = jnp.where(feasible, x_a, jnp.where(finite, x_b, x))
        P = jnp.where(feasible, P_a, jnp.where(finite, P_b, P_c))
        blocked = jnp.where(feasible, blocked, jnp.where(finite, blocked_b, blocked_c))
        last = jnp.where(feasible, last_a, last)
        done = jnp.where(feasible, done_a, False)
        return x, P, blocked, last, it + 1, done

    init = (jnp.zeros((T,), dtype), jnp.zeros((T,), bool), jnp.zeros((T,), bool), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    x, *_ = jax.lax.while_loop(cond, body, init)
    return x



def _natural_residual(x: jax.Array, grad: jax.Array) -> jax.Array:
    """max_t |min(x_t, grad_t)|: zero exactly at a KKT point of min f(x) s.t. x >= 0 (grad = gradient of f)."""
    return jnp.max(jnp.abs(jnp.minimum(x, grad)))



def _min_norm(rho: jax.Array, has_zero: jax.Array, C: jax.Array, max_iter: int):
    """The min-norm point of conv{g_t} from the norm ratios rho_t = n_min / n_t and the cosines: (w, ahat, residual).

    n_min is the smallest norm; the point is sum_t w_t g_t = n_min sum_t ahat_t u_t and w_t = rho_t ahat_t,
    where ahat minimises ahat^T C ahat over {ahat >= 0, rho^T ahat = 1}. That problem is solved exactly by
    NNLS on min_{x >= 0} ||U^T x||^2 + (rho^T x - 1)^2 (H = C + rho rho^T, q = -rho), whose solution is
    x = theta ahat with theta = 1 / (1 + ||U^T ahat||^2) (least-distance programming, Lawson & Hanson
    ch. 23). Every quantity is O(1) whatever the norms: a huge task gets rho_t ~ 0 (its weight is negligible
    but its unit direction still counts) and the smallest task has rho = 1. With a zero gradient
    (``has_zero``; rho is then ignored) 0 is the min-norm point: w spreads evenly over the zero tasks, which
    must be marked by rho_t = -1.

    residual = max_t |min(ahat_t, (C ahat)_t - f rho_t)|, f = ahat^T C ahat: the KKT residual; the
    no-conflict property <g_t, d> >= ||d||^2 holds up to residual * n_t * n_min.
    """
    T = rho.shape[0]
    dtype = C.dtype
    zero_tasks = rho < 0
    rho = jnp.where(has_zero, 0.0, jnp.maximum(rho, 0.0)).astype(dtype)
    x = _nnls(C + jnp.outer(rho, rho), -rho, max_iter)
    theta = rho @ x
    ahat = jnp.where(theta > 0, x / jnp.where(theta > 0, theta, 1), jax.nn.one_hot(jnp.argmax(rho), T, dtype=dtype))
    w = rho * ahat
    w = w / jnp.where(jnp.sum(w) > 0, jnp.sum(w), 1)
    zero_w = zero_tasks.astype(dtype) / jnp.maximum(jnp.sum(zero_tasks), 1)
    f = ahat @ (C @ ahat)
    residual = _natural_residual(ahat, C @ ahat - f * rho)
    w = jnp.where(has_zero, zero_w, w)
    ahat = jnp.where(has_zero, 0.0, ahat)
    residual = jnp.where(has_zero, 0.0, residual)
    return w, ahat, residual


def _ratios_to_min(n: jax.Array):
    """(rho, has_zero, n_min) for :func:`_min_norm` from norms: rho_t = n_min / n_t, -1 for a zero norm."""
    pos = n > 0
    has_zero = ~jnp.all(pos)
    n_min = jnp.where(has_zero, 0.0, jnp.min(jnp.where(pos, n, jnp.inf))).astype(n.dtype)
    rho = jnp.where(pos, n_min / jnp.where(pos, n, 1), -1.0)
    return rho, has_zero, n_min


def _log_ratios_to_min(logn: jax.Array):
    """(rho, has_zero, log n_min) for :func:`_min_norm` from log-norms (-inf for a zero norm)."""
    pos = logn > -jnp.inf
    has_zero = ~jnp.all(pos)
    log_nmin = jnp.where(has_zero, -jnp.inf, jnp.min(logn))
    rho = jnp.where(pos, jnp.exp(jnp.where(pos & ~has_zero, log_nmin - logn, 0.0)), -1.0)
    return rho, has_zero, log_nmin



def _project_above(H: jax.Array, u: jax.Array, max_iter: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(v, z, residual): v = argmin_{v >= u} v^T H v via z = v - u = NNLS(H, H u);
    residual = max_t |min(z_t, (H v)_t)|."""
    z = _nnls(H, H @ u, max_iter)
    v = u + z
    return v, z, _natural_residual(z, H @ v)
