"""Gradient aggregation from the Gramian: task weights as functions of G = J J^T alone.

Let J be the T x P matrix whose row t is the gradient of task t's loss with respect to the shared
parameters. Most conflict-aware aggregators (MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad)
return an update direction of the form

    d = w @ J = sum_t w_t g_t,

with weights w in R^T that depend on J only through the T x T Gramian G = J J^T (G_ij = <g_i, g_j>).
This module keeps the two parts apart: :func:`gramian` builds G from the Jacobian leaves, each
``*_weights`` function maps G to w, and :func:`combine` forms d = w @ J leaf by leaf. All functions are pure,
jittable and free of Python branching on traced values; iterative solvers run a fixed number of steps.

Scale conventions (those of the reference implementations): MGDA, IMTL-G, DualProj and CAGrad weights sum
to 1 or near it, and the default preference vector of Aligned-MTL and UPGrad is the mean (1/T each), so
their directions are on the scale of the *mean* task gradient; PCGrad adds the T projected gradients, the
scale of the *sum*. Every solver works on G / trace(G), so the weights are invariant to a global rescaling
of J (d scales with J), and a zero Jacobian gives finite weights.

References:
  Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization", 2012;
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018;
  Yu et al., "Gradient Surgery for Multi-Task Learning" (PCGrad), NeurIPS 2020;
  Liu et al., "Towards Impartial Multi-task Learning" (IMTL), ICLR 2021;
  Senushkin et al., "Independent Component Alignment for Multi-Task Learning" (Aligned-MTL), CVPR 2023;
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (UPGrad, DualProj; TorchJD), 2024;
  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning" (CAGrad), NeurIPS 2021;
  Lacoste-Julien & Jaggi, "On the Global Linear Convergence of Frank-Wolfe Optimization Variants", 2015.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "aligned_mtl_weights",
    "cagrad_weights",
    "combine",
    "dualproj_weights",
    "gramian",
    "imtl_g_weights",
    "mgda_weights",
    "pcgrad_order",
    "pcgrad_weights",
    "upgrad_weights",
]

# Exact enumeration of active sets is used for the non-negative QPs of UPGrad / DualProj up to this many
# tasks (2^T linear solves of size T); beyond it, accelerated projected gradient.
_MAX_EXACT_TASKS = 10


# --------------------------------------------------------------------------------------------------------------
# Gramian and combination
# --------------------------------------------------------------------------------------------------------------


def gramian(jacobian: PyTree) -> jax.Array:
    """The T x T Gramian G = J J^T of a Jacobian given as leaves with a leading task axis.

    G_ij = sum over leaves of <J_leaf[i], J_leaf[j]>, i.e. the inner products of the flattened task
    gradients.

    Args:
      jacobian: one array or a pytree of arrays (e.g. the list that :func:`orthojax.task_jacobian`
        returns), each of shape (T, ...).

    Returns:
      The (T, T) Gramian, symmetric positive semi-definite.
    """
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError("gramian: the Jacobian has no leaves")
    num_tasks = leaves[0].shape[0]
    G = None
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] != num_tasks:
            raise ValueError(f"gramian: every leaf needs the leading task axis {num_tasks}; got {leaf.shape}")
        m = jnp.reshape(leaf, (num_tasks, -1))
        g = m @ m.T
        G = g if G is None else G + g
    return G


def combine(weights: jax.Array, jacobian: PyTree) -> PyTree:
    """The update direction d = w @ J, leaf by leaf: d_leaf = sum_t w_t J_leaf[t].

    Args:
      weights: (T,) task weights.
      jacobian: a pytree of (T, ...) arrays.

    Returns:
      A pytree with the structure of ``jacobian`` and the task axis removed.
    """
    return jax.tree.map(lambda leaf: jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1), jacobian)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _check_gramian(G: jax.Array, name: str) -> int:
    if jnp.ndim(G) != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1:
        raise ValueError(f"{name}: expected a square (T, T) Gramian with T >= 1; got shape {jnp.shape(G)}")
    return G.shape[0]


def _check_positive_int(value: Any, what: str, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: {what} must be a positive integer; got {value!r}")


def _check_nonneg_float(value: Any, what: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: {what} must be a non-negative number; got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {what} must be a finite non-negative number; got {value!r}")


def _normalize(G: jax.Array) -> jax.Array:
    """G / trace(G), symmetrised; the zero matrix stays zero (trace(G) = ||J||_F^2)."""
    G = jnp.asarray(G)
    if not jnp.issubdtype(G.dtype, jnp.floating):
        G = G.astype(jnp.float32)
    G = 0.5 * (G + G.T)
    trace = jnp.trace(G)
    ok = (trace > 0) & jnp.isfinite(trace)
    return jnp.where(ok, G / jnp.where(ok, trace, 1), jnp.zeros_like(G))


def _preference(pref: Optional[Any], num_tasks: int, dtype, name: str) -> jax.Array:
    if pref is None:
        return jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    pref = jnp.asarray(pref, dtype)
    if pref.shape != (num_tasks,):
        raise ValueError(f"{name}: pref must have shape ({num_tasks},); got {pref.shape}")
    return pref


def _solve_small(A: jax.Array, b: jax.Array) -> jax.Array:
    """x = A^{-1} b for a small square A: Gauss-Jordan elimination with partial pivoting.

    A singular A gives non-finite entries (the callers discard such candidates). Cheaper to compile than
    ``jnp.linalg.solve`` inside the vmapped enumerations below.
    """
    n = A.shape[0]
    M = jnp.concatenate([A, b[:, None]], axis=1)
    rows = jnp.arange(n)

    def body(k, M):
        col = jnp.abs(M[:, k])
        piv = jnp.argmax(jnp.where(rows >= k, col, -1.0))
        row_k, row_p = M[k], M[piv]
        M = M.at[piv].set(row_k).at[k].set(row_p)
        factors = M[:, k] / M[k, k]
        factors = factors.at[k].set(0.0)
        return M - factors[:, None] * M[k][None, :]

    M = jax.lax.fori_loop(0, n, body, M)
    return M[:, n] / jnp.diagonal(M[:, :n])


def _simplex_qp_exact(Q: jax.Array, p: jax.Array) -> jax.Array:
    """argmin_{w in simplex} w^T Q w + p^T w for T <= _MAX_EXACT_TASKS, by enumerating the supports.

    For each support S the KKT system [2 Q_SS, 1; 1^T, 0] [w_S; nu] = [-p_S; 1] gives the minimiser on the
    affine hull of the vertices in S. Supports whose vertices are affinely dependent give singular systems;
    some affinely independent support always holds a minimiser (Caratheodory). The candidate with the
    smallest KKT residual (w_S >= 0; partial derivatives equal to mu on S and >= mu off S, mu = <w, grad>)
    is returned, clipped and renormalised. A KKT residual rho bounds the objective gap by 2 rho.
    """
    T = Q.shape[0]
    masks = np.array(list(itertools.product((0.0, 1.0), repeat=T)))[1:]
    masks = jnp.asarray(masks, Q.dtype)
    eye = jnp.eye(T, dtype=Q.dtype)

    def candidate(m):
        A = jnp.zeros((T + 1, T + 1), Q.dtype)
        A = A.at[:T, :T].set(2.0 * Q * jnp.outer(m, m) + eye * (1.0 - m))
        A = A.at[:T, T].set(m).at[T, :T].set(m)
        rhs = jnp.concatenate([-p * m, jnp.ones((1,), Q.dtype)])
        w = _solve_small(A, rhs)[:T] * m
        grad = 2.0 * (Q @ w) + p
        mu = jnp.dot(w, grad)
        primal = jnp.max(jnp.where(m > 0, -w, -jnp.inf))
        stationary = jnp.max(jnp.where(m > 0, jnp.abs(grad - mu), -jnp.inf))
        dual = jnp.max(jnp.where(m > 0, -jnp.inf, mu - grad))
        residual = jnp.maximum(jnp.maximum(primal, stationary), jnp.maximum(dual, 0.0))
        residual = jnp.where(jnp.all(jnp.isfinite(w)) & jnp.isfinite(residual), residual, jnp.inf)
        return w, residual

    ws, residuals = jax.vmap(candidate)(masks)
    w = jnp.maximum(ws[jnp.argmin(residuals)], 0.0)
    return w / jnp.sum(w)


def _simplex_qp(Q: jax.Array, p: jax.Array, w0: jax.Array, num_iters: int) -> jax.Array:
    """min_{w in simplex} w^T Q w + p^T w: exact start (T <= 10) refined by pairwise Frank-Wolfe.

    For T <= _MAX_EXACT_TASKS the start is the exact minimiser (:func:`_simplex_qp_exact`), else ``w0``.
    Each Frank-Wolfe step moves mass gamma from the active vertex with the largest partial derivative (a)
    to the vertex with the smallest (s): w <- w + gamma (e_s - e_a), gamma in [0, w_a] minimising the
    quadratic exactly (pairwise variant: linear convergence on strongly convex problems, Lacoste-Julien &
    Jaggi, 2015; sublinear when Q is singular, which the exact start covers for small T).
    """
    if Q.shape[0] <= _MAX_EXACT_TASKS:
        w0 = _simplex_qp_exact(Q, p)

    def body(_, w):
        grad = 2.0 * (Q @ w) + p
        s = jnp.argmin(grad)
        a = jnp.argmax(jnp.where(w > 0, grad, -jnp.inf))
        num = grad[a] - grad[s]
        den = 2.0 * (Q[s, s] + Q[a, a] - 2.0 * Q[s, a])
        gamma = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.where(num > 0, jnp.inf, 0))
        gamma = jnp.clip(gamma, 0.0, w[a])
        gamma = jnp.where(s == a, 0.0, gamma)
        return w.at[s].add(gamma).at[a].add(-gamma)

    return jax.lax.fori_loop(0, num_iters, body, w0)


def _nonneg_qp_exact(Q: jax.Array, b: jax.Array) -> jax.Array:
    """argmin_{z >= 0} z^T Q z + 2 b^T z for Q positive definite, by enumerating the 2^T active sets.

    For each free set S: z_S = -Q_SS^{-1} b_S, z elsewhere 0. The KKT residual max(-z_S, -(Q z + b)_{not S})
    is zero exactly for the optimum's free set; the candidate with the smallest residual is returned
    (clipped at 0).
    """
    T = Q.shape[0]
    masks = jnp.asarray(np.array(list(itertools.product((0.0, 1.0), repeat=T))), Q.dtype)
    eye = jnp.eye(T, dtype=Q.dtype)

    def candidate(m):
        A = Q * jnp.outer(m, m) + eye * (1.0 - m)
        z = _solve_small(A, -b * m) * m
        grad = Q @ z + b
        primal = jnp.max(jnp.where(m > 0, -z, -jnp.inf))
        dual = jnp.max(jnp.where(m > 0, -jnp.inf, -grad))
        residual = jnp.maximum(jnp.maximum(primal, dual), 0.0)
        residual = jnp.where(jnp.all(jnp.isfinite(z)), residual, jnp.inf)
        return z, residual

    zs, residuals = jax.vmap(candidate)(masks)
    return jnp.maximum(zs[jnp.argmin(residuals)], 0.0)


def _nonneg_qp_iterative(Q: jax.Array, b: jax.Array, num_iters: int) -> jax.Array:
    """argmin_{z >= 0} z^T Q z + 2 b^T z by accelerated projected gradient (FISTA, gradient restart)."""
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(Q)[-1], jnp.finfo(Q.dtype).tiny)
    step = 1.0 / lipschitz
    z0 = jnp.zeros_like(b)

    def body(_, carry):
        z, y, t = carry
        z_new = jnp.maximum(y - step * (Q @ y + b), 0.0)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = jnp.dot(Q @ y + b, z_new - z) > 0
        y_new = jnp.where(restart, z_new, z_new + ((t - 1.0) / t_new) * (z_new - z))
        t_new = jnp.where(restart, 1.0, t_new)
        return z_new, y_new, t_new

    z, _, _ = jax.lax.fori_loop(0, num_iters, body, (z0, z0, jnp.ones((), Q.dtype)))
    return z


def _min_quadratic_above(Q: jax.Array, u: jax.Array, num_iters: int) -> jax.Array:
    """argmin_{v >= u} v^T Q v (elementwise constraint), via z = v - u >= 0."""
    b = Q @ u
    if Q.shape[0] <= _MAX_EXACT_TASKS:
        z = _nonneg_qp_exact(Q, b)
    else:
        z = _nonneg_qp_iterative(Q, b, num_iters)
    return u + z


# --------------------------------------------------------------------------------------------------------------
# Weightings
# --------------------------------------------------------------------------------------------------------------


def mgda_weights(G: jax.Array, *, num_iters: int = 100) -> jax.Array:
    """MGDA: the weights of the minimum-norm point of the convex hull of the task gradients.

    w = argmin_{w >= 0, sum w = 1} w^T G w, so d = w @ J is the min-norm element of conv{g_1..g_T} and
    <g_t, d> >= ||d||^2 >= 0 for every t (d never conflicts with a task). Solved on G / trace(G): for
    T <= 10 exactly, by enumerating the supports (2^T - 1 linear solves of size T + 1), then refined by
    ``num_iters`` steps of pairwise Frank-Wolfe with exact line search (from the uniform weights for
    T > 10).

    Args:
      G: (T, T) Gramian.
      num_iters: Frank-Wolfe steps (fixed; each costs O(T^2)); the whole solve for T > 10.

    Returns:
      (T,) weights on the simplex. When the hull contains several minimisers (rank-deficient J) the
      direction d is unique, the weights need not be.

    References:
      Desideri 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
    """
    T = _check_gramian(G, "mgda_weights")
    if not isinstance(num_iters, (int, np.integer)) or isinstance(num_iters, bool) or num_iters < 0:
        raise ValueError(f"mgda_weights: num_iters must be a non-negative integer; got {num_iters!r}")
    Q = _normalize(G)
    w0 = jnp.full((T,), 1.0 / T, Q.dtype)
    return _simplex_qp(Q, jnp.zeros((T,), Q.dtype), w0, num_iters)


def pcgrad_order(rng: jax.Array, num_tasks: int) -> jax.Array:
    """(T, T) int array: row i is an independent random permutation of the tasks (task i's projection order)."""
    keys = jax.random.split(rng, num_tasks)
    return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)


def pcgrad_weights(G: jax.Array, rng: Optional[jax.Array] = None, *, order: Optional[jax.Array] = None) -> jax.Array:
    """PCGrad ("gradient surgery") computed exactly from the Gramian.

    For each task i, start from g_i^PC = g_i and visit the other tasks j in the order ``order[i]``; when
    <g_i^PC, g_j> < 0, project the conflict away: g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j. The update
    is d = sum_i g_i^PC. Every g_i^PC stays in the row space, g_i^PC = c_i @ J, and <g_i^PC, g_j> = (G c_i)_j,
    so the coefficients c_i follow from G alone: c_i <- c_i - ((G c_i)_j / G_jj) e_j. Then w = sum_i c_i.
    A task j with g_j = 0 is skipped (nothing to project on); j = i is skipped (as in TorchJD).

    Task order: ``order`` (T, T) ints, row i a permutation of 0..T-1, is used as given; else ``rng`` draws an
    independent random permutation per task (:func:`pcgrad_order`, as in the paper's code); with neither,
    the deterministic order 0, 1, ..., T-1 for every task. The result depends on the order when T >= 3.

    Args:
      G: (T, T) Gramian.
      rng: optional PRNG key for a random order.
      order: optional (T, T) integer array of per-task orders (takes precedence over ``rng``).

    Returns:
      (T,) weights; d = w @ J is on the scale of the sum of the task gradients (w = 1 without conflicts).

    References:
      Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """
    T = _check_gramian(G, "pcgrad_weights")
    G = jnp.asarray(G)
    if not jnp.issubdtype(G.dtype, jnp.floating):
        G = G.astype(jnp.float32)
    G = 0.5 * (G + G.T)
    if order is None:
        order = pcgrad_order(rng, T) if rng is not None else jnp.tile(jnp.arange(T), (T, 1))
    order = jnp.asarray(order, jnp.int32)
    if order.shape != (T, T):
        raise ValueError(f"pcgrad_weights: order must have shape ({T}, {T}); got {order.shape}")
    diag = jnp.diagonal(G)

    def one_task(i, row):
        def body(k, c):
            j = row[k]
            inner = G[j] @ c
            ok = (inner < 0) & (j != i) & (diag[j] > 0)
            coef = jnp.where(ok, inner / jnp.where(ok, diag[j], 1), 0.0)
            return c.at[j].add(-coef)

        c0 = jax.nn.one_hot(i, T, dtype=G.dtype)
        return jax.lax.fori_loop(0, T, body, c0)

    return jnp.sum(jax.vmap(one_task)(jnp.arange(T), order), axis=0)


def imtl_g_weights(G: jax.Array, *, eps: Optional[float] = None) -> jax.Array:
    """IMTL-G: weights whose direction has equal projections on every task's unit gradient.

    With n_t = ||g_t|| = sqrt(G_tt), v = pinv(G) n and w = v / sum(v). When n is in the range of G (e.g. J
    of full row rank) G w = n / sum(v), i.e. <d, g_t / ||g_t||> = 1 / sum(v) for every t. Computed on
    G / trace(G) (w is invariant to the scale). If |sum(v)| <= eps (e.g. two exactly opposing gradients,
    where no such direction exists) the weights are 0.

    Args:
      G: (T, T) Gramian.
      eps: threshold on |sum(v)|; default 100 * machine epsilon of G's dtype.

    Returns:
      (T,) weights summing to 1 (or all zero).

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (closed form as in TorchJD's IMTLG).
    """
    _check_gramian(G, "imtl_g_weights")
    if eps is not None:
        _check_nonneg_float(eps, "eps", "imtl_g_weights")
    Q = _normalize(G)
    threshold = 100.0 * jnp.finfo(Q.dtype).eps if eps is None else eps
    n = jnp.sqrt(jnp.maximum(jnp.diagonal(Q), 0.0))
    v = jnp.linalg.pinv(Q, hermitian=True) @ n
    total = jnp.sum(v)
    ok = jnp.abs(total) > threshold
    return jnp.where(ok, v / jnp.where(ok, total, 1), jnp.zeros_like(v))


def aligned_mtl_weights(G: jax.Array, pref: Optional[Any] = None) -> jax.Array:
    """Aligned-MTL: align the task gradients into orthogonal directions of equal norm, then weight them.

    With the eigendecomposition G = V diag(lambda) V^T restricted to its rank r (lambda_1 >= ... >= lambda_r
    > tol), B = sqrt(lambda_r) V diag(lambda^{-1/2}) V^T and w = B @ pref. The rows of B J are orthogonal with
    the common norm sqrt(lambda_r) (the smallest singular value of J): J = U S W^T gives B J =
    s_r U W^T. A zero Gramian gives B = I. tol = max(lambda) * T * machine epsilon.

    Args:
      G: (T, T) Gramian.
      pref: (T,) preference weights on the aligned gradients; default 1/T each (TorchJD's default).

    Returns:
      (T,) weights (invariant to a global scale of J).

    References:
      Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    """
    T = _check_gramian(G, "aligned_mtl_weights")
    Q = _normalize(G)
    pref = _preference(pref, T, Q.dtype, "aligned_mtl_weights")
    lam, V = jnp.linalg.eigh(Q)
    tol = jnp.max(lam) * T * jnp.finfo(Q.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    lam_r = jnp.min(jnp.where(keep, lam, jnp.inf))
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1)), 0.0)
    B = jnp.sqrt(jnp.where(rank > 0, lam_r, 1.0)) * (V * inv_sqrt) @ V.T
    B = jnp.where(rank > 0, B, jnp.eye(T, dtype=Q.dtype))
    return B @ pref


def _dual_cone_setup(G, pref, reg_eps, num_iters, name):
    T = _check_gramian(G, name)
    _check_nonneg_float(reg_eps, "reg_eps", name)
    _check_positive_int(num_iters, "num_iters", name)
    Q = _normalize(G)
    Q = Q + reg_eps * jnp.eye(T, dtype=Q.dtype)
    return T, Q, _preference(pref, T, Q.dtype, name)


def upgrad_weights(
    G: jax.Array, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: int = 2000
) -> jax.Array:
    """UPGrad: the average of the projections of the (weighted) task gradients onto the dual cone of J.

    The dual cone is {x : J x >= 0} (directions that conflict with no task). The projection of u^T J onto it
    is v^T J with v = argmin_{v >= u} v^T G v (Quinton & Rey, Proposition). UPGrad projects each
    pref_i e_i^T J and adds: w = sum_i argmin_{v >= pref_i e_i} v^T G v, so J d = G w >= 0.

    The QPs are solved on G / trace(G) + reg_eps I (TorchJD's normalisation and regularisation; reg_eps > 0
    makes them strictly convex and relaxes the guarantee to G w >= -reg_eps trace(G) w). For T <= 10 exactly,
    by enumerating the active sets; for larger T by accelerated projected gradient with ``num_iters`` steps.

    Args:
      G: (T, T) Gramian.
      pref: (T,) preference weights; default 1/T each (the mean).
      reg_eps: Tikhonov regularisation of the normalised Gramian, >= 0 (0 needs G of full rank).
      num_iters: iterations of the iterative solver (T > 10 only).

    Returns:
      (T,) weights, each w_i >= pref_i.

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (TorchJD).
    """
    T, Q, pref = _dual_cone_setup(G, pref, reg_eps, num_iters, "upgrad_weights")
    V = jax.vmap(lambda u: _min_quadratic_above(Q, u, num_iters))(jnp.diag(pref))
    return jnp.sum(V, axis=0)


def dualproj_weights(
    G: jax.Array, pref: Optional[Any] = None, *, reg_eps: float = 1e-4, num_iters: int = 2000
) -> jax.Array:
    """DualProj: the projection of the (weighted) mean gradient onto the dual cone of J.

    w = argmin_{v >= pref} v^T G v, so d = w @ J is the projection of pref @ J onto {x : J x >= 0} and
    J d = G w >= 0. Solved like :func:`upgrad_weights` (same normalisation, regularisation and solvers).

    Args:
      G: (T, T) Gramian.
      pref: (T,) preference weights; default 1/T each (the mean gradient).
      reg_eps: Tikhonov regularisation of the normalised Gramian, >= 0.
      num_iters: iterations of the iterative solver (T > 10 only).

    Returns:
      (T,) weights, w >= pref.

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (TorchJD).
    """
    T, Q, pref = _dual_cone_setup(G, pref, reg_eps, num_iters, "dualproj_weights")
    return _min_quadratic_above(Q, pref, num_iters)


def cagrad_weights(
    G: jax.Array, c: float = 0.4, *, rescale: int = 1, num_outer: int = 30, num_inner: int = 30
) -> jax.Array:
    """CAGrad: maximise the worst task improvement within a ball around the mean gradient.

    With g0 = mean_t g_t and r = c ||g0||, CAGrad solves max_{||d - g0|| <= r} min_t <g_t, d>. Its dual is
    min_{w in simplex} F(w) = <g_w, g0> + r ||g_w||, g_w = w @ J, and the primal solution is the closed form
    d = g0 + (r / ||g_w*||) g_w*; min_t <g_t, d> = F(w*). In weights: 1/T + (r / ||g_w*||) w*, divided by
    1 + c^2 (``rescale=1``, the paper's code default), 1 + c (``rescale=2``) or 1 (``rescale=0``).

    F is minimised on G / trace(G) through its variational form r ||x|| = min_{s > 0} r (||x||^2 / s + s) / 2:
    alternately s = ||g_w|| and w = argmin_simplex r w^T G w / (2 s) + <g_w, g0> (the simplex QP solver of
    :func:`mgda_weights`, ``num_inner`` Frank-Wolfe steps), ``num_outer`` alternations. If ||g_w*|| <= 10 sqrt(machine epsilon) on the normalised scale (0 is in the
    hull of the gradients, e.g. two opposing tasks, and the maximiser is not unique) the direction is g0
    (weights 1/T before rescaling), as in TorchJD.

    Args:
      G: (T, T) Gramian.
      c: radius of the ball relative to ||g0||, >= 0 (0.4 here; the paper uses 0.4-0.5). c = 0 gives g0.
      rescale: 0, 1 or 2 (see above).
      num_outer: alternation steps.
      num_inner: Frank-Wolfe steps per alternation (after the exact solve when T <= 10).

    Returns:
      (T,) weights.

    References:
      Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    """
    T = _check_gramian(G, "cagrad_weights")
    _check_nonneg_float(c, "c", "cagrad_weights")
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad_weights: rescale must be 0, 1 or 2; got {rescale!r}")
    _check_positive_int(num_outer, "num_outer", "cagrad_weights")
    _check_positive_int(num_inner, "num_inner", "cagrad_weights")
    Q = _normalize(G)
    mean = jnp.full((T,), 1.0 / T, Q.dtype)
    a = Q @ mean
    r = c * jnp.sqrt(jnp.maximum(mean @ a, 0.0))
    floor = jnp.sqrt(jnp.finfo(Q.dtype).eps)

    def outer(_, w):
        s = jnp.maximum(jnp.sqrt(jnp.maximum(w @ Q @ w, 0.0)), floor)
        return _simplex_qp(Q, (2.0 * s / jnp.maximum(r, jnp.finfo(Q.dtype).tiny)) * a, w, num_inner)

    w = jax.lax.fori_loop(0, num_outer, outer, mean)
    gw_norm = jnp.sqrt(jnp.maximum(w @ Q @ w, 0.0))
    ok = (gw_norm > 10.0 * floor) & (r > 0)
    lam = jnp.where(ok, r / jnp.where(ok, gw_norm, 1), 0.0)
    weights = mean + lam * w
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return weights / divisor
