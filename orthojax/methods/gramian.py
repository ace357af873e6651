"""Gradient aggregation from the Gramian: task weights as functions of G = J J^T alone.

Let J be the T x P matrix whose row t is the gradient g_t of task t's loss with respect to the shared
parameters. Most conflict-aware aggregators (MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad)
return an update direction of the form

    d = w @ J = sum_t w_t g_t,

with weights w in R^T that depend on J only through the T x T Gramian G = J J^T (G_ij = <g_i, g_j>).
This module keeps the parts apart: :func:`gramian` / :func:`scaled_gramian` build G from the Jacobian
leaves, each ``*_solution`` / ``*_weights`` function maps G to w, and :func:`combine` /
:func:`combine_unit` form d leaf by leaf. All functions are pure and jittable; the iterative solvers are
``jax.lax.while_loop`` s that stop at a stated tolerance (or at an iteration cap, with the reached
tolerance reported as ``Solution.residual``).

Scale safety. In float32, squared gradient norms overflow above ~1.8e19 and flush to zero below ~1e-19,
so a Gramian formed as J J^T silently turns tasks with such gradients into zeros or infinities. Here
every norm and inner product is computed from rows pre-scaled by a power of two (exact), and the solvers
work on the factored form G = diag(n) C diag(n) (:class:`ScaledGramian`: the task-gradient norms n_t and
the cosine matrix C, both representable whenever the gradients are), putting the scales back
analytically. Every weighting is invariant to a global rescaling of J by any positive factor (d scales
with J); where a method is invariant to rescaling single tasks (the direction of IMTL-G; the per-task
terms of PCGrad and of UPGrad with ``reg_eps=0``) so is the implementation, for any float32 factors; and a
task whose gradient is tiny next to the others keeps its exact influence in MGDA, PCGrad, IMTL-G, CAGrad
and, with ``reg_eps=0``, UPGrad and DualProj (with reg_eps > 0 those two, like Aligned-MTL's rank
tolerance, measure small tasks against ||J||_F by definition). The
direction is best formed from the unit-gradient coefficients a_t = w_t ||g_t|| (``Solution.coefficients``,
:func:`combine_unit`): they stay representable where a weight w_t alone would not (e.g. MGDA with task
norms 1e-30 and 1e30: w_t ~ 1e-60). Weights whose true value exceeds the dtype's range saturate at its
largest finite value.

Scale conventions (those of the reference implementations): MGDA, IMTL-G, DualProj and CAGrad weights sum
to 1 or near it, and the default preference vector of Aligned-MTL and UPGrad is the mean (1/T each), so
their directions are on the scale of the *mean* task gradient; PCGrad adds the T projected gradients, the
scale of the *sum*. A zero Jacobian gives finite weights.

References:
  Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization", 2012;
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018;
  Yu et al., "Gradient Surgery for Multi-Task Learning" (PCGrad), NeurIPS 2020;
  Liu et al., "Towards Impartial Multi-task Learning" (IMTL), ICLR 2021;
  Senushkin et al., "Independent Component Alignment for Multi-Task Learning" (Aligned-MTL), CVPR 2023;
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (UPGrad, DualProj; TorchJD), 2024;
  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning" (CAGrad), NeurIPS 2021;
  Lawson & Hanson, "Solving Least Squares Problems", 1974, ch. 23 (NNLS; least-distance programming).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

PyTree = Any

__all__ = [
    "ScaledGramian",
    "Solution",
    "aligned_mtl_solution",
    "aligned_mtl_weights",
    "as_scaled_gramian",
    "cagrad_solution",
    "cagrad_weights",
    "combine",
    "combine_unit",
    "dualproj_solution",
    "dualproj_weights",
    "gramian",
    "imtl_g_solution",
    "imtl_g_weights",
    "mgda_solution",
    "mgda_weights",
    "pcgrad_order",
    "pcgrad_solution",
    "pcgrad_weights",
    "scaled_gramian",
    "upgrad_solution",
    "upgrad_weights",
]


class ScaledGramian(NamedTuple):
    """The Gramian in factored form G = diag(norms) @ cosines @ diag(norms).

    norms: (T,) task-gradient norms ||g_t|| (0 for a zero gradient).
    cosines: (T, T) <g_i, g_j> / (||g_i|| ||g_j||), unit diagonal; zero row and column for a zero gradient.
    Both are representable whenever the gradients are, unlike G itself.
    """

    norms: jax.Array
    cosines: jax.Array


class Solution(NamedTuple):
    """What a weighting returns.

    weights: (T,) w, with d = sum_t w_t g_t (saturated at the dtype's largest finite value when the true
      weight is not representable).
    coefficients: (T,) a_t = w_t ||g_t||, the coefficients of d on the unit task gradients:
      d = sum_t a_t g_t / ||g_t|| (:func:`combine_unit`). Representable whenever d's terms are.
    residual: scalar, the solver's optimality residual on its normalised problem (0 for the closed-form
      methods); see each ``*_solution`` for its definition and tolerance.
    """

    weights: jax.Array
    coefficients: jax.Array
    residual: jax.Array


GramianLike = Union[jax.Array, ScaledGramian]


# --------------------------------------------------------------------------------------------------------------
# Gramian and combination
# --------------------------------------------------------------------------------------------------------------


def _float_dtype(dtype) -> Any:
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _pow2_exponent(maxabs: jax.Array) -> jax.Array:
    """e with maxabs = f 2^e, f in [0.5, 1) (0 for a zero or non-finite maxabs): x / 2^e is exact."""
    _, e = jnp.frexp(maxabs)
    return jnp.where((maxabs > 0) & jnp.isfinite(maxabs), e, 0).astype(jnp.int32)


def _scaled_parts(jacobian: PyTree) -> tuple[jax.Array, jax.Array]:
    """(e, Gh): row t of J is scaled by 2^-e_t (exact; its max-abs in [0.5, 1)) and Gh = Jh Jh^T, so that
    G = diag(2^e) Gh diag(2^e) with no intermediate overflow or underflow."""
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError("gramian: the Jacobian has no leaves")
    num_tasks = leaves[0].shape[0] if jnp.ndim(leaves[0]) else None
    dtype = _float_dtype(jnp.result_type(*leaves))
    mats = []
    for leaf in leaves:
        if jnp.ndim(leaf) == 0 or leaf.shape[0] != num_tasks:
            raise ValueError(f"gramian: every leaf needs the leading task axis {num_tasks}; got {jnp.shape(leaf)}")
        m = jnp.reshape(jnp.asarray(leaf), (num_tasks, -1)).astype(dtype)
        if m.shape[1]:
            mats.append(m)
    if not mats:
        return jnp.zeros((num_tasks,), jnp.int32), jnp.zeros((num_tasks, num_tasks), dtype)
    maxabs = jnp.max(jnp.stack([jnp.max(jnp.abs(m), axis=1) for m in mats]), axis=0)
    e = _pow2_exponent(maxabs)
    Gh = None
    for m in mats:
        x = jnp.ldexp(m, -e[:, None])
        g = x @ x.T
        Gh = g if Gh is None else Gh + g
    return e, 0.5 * (Gh + Gh.T)


def _gramian_from_parts(e: jax.Array, Gh: jax.Array) -> jax.Array:
    return jnp.ldexp(Gh, e[:, None] + e[None, :])


def _scaled_from_parts(e: jax.Array, Gh: jax.Array) -> ScaledGramian:
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(Gh), 0.0))
    norms = jnp.ldexp(d, e)
    return ScaledGramian(norms, _cosines(Gh, d))


def _cosines(Gh: jax.Array, d: jax.Array) -> jax.Array:
    """Gh_ij / (d_i d_j) with d = sqrt(diag Gh) (any positive scaling of the rows); zero rows stay zero."""
    pos = d > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, d, 1), 0.0)
    C = (Gh * inv[:, None]) * inv[None, :]
    C = jnp.clip(0.5 * (C + C.T), -1.0, 1.0)
    eye = jnp.eye(d.shape[0], dtype=bool)
    return jnp.where(eye, pos.astype(C.dtype), C)


def gramian(jacobian: PyTree) -> jax.Array:
    """The T x T Gramian G = J J^T of a Jacobian given as leaves with a leading task axis.

    G_ij = sum over leaves of <J_leaf[i], J_leaf[j]>, i.e. the inner products of the flattened task
    gradients. Formed from rows pre-scaled by powers of two, so an entry is exact to rounding whenever it
    is representable (no product of two tiny or two huge entries flushes to zero or overflows on the way);
    entries beyond the dtype's range are 0 or inf. The weightings take :func:`scaled_gramian` as well, which
    stays representable for any representable J.

    Args:
      jacobian: one array or a pytree of arrays (e.g. the list that :func:`orthojax.task_jacobian`
        returns), each of shape (T, ...).

    Returns:
      The (T, T) Gramian, symmetric positive semi-definite.
    """
    return _gramian_from_parts(*_scaled_parts(jacobian))


def scaled_gramian(jacobian: PyTree) -> ScaledGramian:
    """The Gramian of a Jacobian (leaves with a leading task axis) as norms and cosines (:class:`ScaledGramian`).

    The norms are ||g_t|| = 2^e_t ||g_t / 2^e_t|| (e_t the binary exponent of the row's max-abs entry) and
    the cosines come from the same pre-scaled rows, so both are exact to rounding for every representable
    J, whatever its scale.
    """
    return _scaled_from_parts(*_scaled_parts(jacobian))


def as_scaled_gramian(G: GramianLike) -> ScaledGramian:
    """A (T, T) Gramian (or a :class:`ScaledGramian`, returned as is) in factored form.

    n_t = sqrt(G_tt) and C_ij = (G_ij / n_i) / n_j, so no product of two norms is formed. A Gramian with a
    non-finite entry (e.g. one that overflowed) gives NaN norms and cosines, so that the weights are NaN
    rather than silently wrong.
    """
    if isinstance(G, ScaledGramian):
        n, C = jnp.asarray(G.norms), jnp.asarray(G.cosines)
        dtype = _float_dtype(jnp.result_type(n, C))
        return ScaledGramian(n.astype(dtype), C.astype(dtype))
    G = jnp.asarray(G)
    G = G.astype(_float_dtype(G.dtype))
    G = 0.5 * (G + G.T)
    finite = jnp.all(jnp.isfinite(G))
    n = jnp.sqrt(jnp.maximum(jnp.diagonal(G), 0.0))
    pos = n > 0
    inv = jnp.where(pos, 1.0 / jnp.where(pos, n, 1), 0.0)
    C = (G * inv[:, None]) * inv[None, :]
    C = jnp.clip(C, -1.0, 1.0)
    C = jnp.where(jnp.eye(n.shape[0], dtype=bool), pos.astype(C.dtype), C)
    nan = jnp.asarray(jnp.nan, G.dtype)
    return ScaledGramian(jnp.where(finite, n, nan), jnp.where(finite, C, nan))


def combine(weights: jax.Array, jacobian: PyTree) -> PyTree:
    """The update direction d = w @ J, leaf by leaf: d_leaf = sum_t w_t J_leaf[t].

    Args:
      weights: (T,) task weights.
      jacobian: a pytree of (T, ...) arrays.

    Returns:
      A pytree with the structure of ``jacobian`` and the task axis removed.
    """
    return jax.tree.map(lambda leaf: jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1), jacobian)


def combine_unit(coefficients: jax.Array, jacobian: PyTree, norms: jax.Array) -> PyTree:
    """The update direction d = sum_t a_t g_t / ||g_t||, leaf by leaf (a = ``Solution.coefficients``).

    Equal to ``combine(weights, jacobian)`` where the weights are representable; also right where they are
    not (tasks whose gradient norms differ by more than the dtype's range). A zero gradient contributes 0.

    Args:
      coefficients: (T,) coefficients on the unit task gradients.
      jacobian: a pytree of (T, ...) arrays.
      norms: (T,) the task-gradient norms (``ScaledGramian.norms``).
    """
    pos = norms > 0
    safe = jnp.where(pos, norms, 1)
    a = jnp.where(pos, coefficients, 0)

    def one(leaf):
        unit = leaf / safe.astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.tensordot(a.astype(leaf.dtype), unit, axes=1)

    return jax.tree.map(one, jacobian)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _check_gramian(G: GramianLike, name: str) -> int:
    shape = jnp.shape(G.cosines) if isinstance(G, ScaledGramian) else jnp.shape(G)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"{name}: expected a square (T, T) Gramian with T >= 1; got shape {shape}")
    if isinstance(G, ScaledGramian) and jnp.shape(G.norms) != (shape[0],):
        raise ValueError(f"{name}: ScaledGramian norms must have shape ({shape[0]},); got {jnp.shape(G.norms)}")
    return shape[0]


def _check_cap(value: Any, what: str, name: str, minimum: int = 1) -> None:
    """An optional iteration cap: None (automatic) or an integer >= minimum."""
    if value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {what} must be None or an integer >= {minimum}; got {value!r}")


def _check_nonneg_float(value: Any, what: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: {what} must be a non-negative number; got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {what} must be a finite non-negative number; got {value!r}")


def _active_set_cap(num_iters: Optional[int], T: int) -> int:
    """Iteration cap of :func:`_nnls`: ``num_iters`` or, by default, 10 T + 50 (an active-set change per
    iteration; Lawson-Hanson typically needs fewer than 3 T)."""
    return 10 * T + 50 if num_iters is None else int(num_iters)


def _preference(pref: Optional[Any], num_tasks: int, dtype, name: str) -> jax.Array:
    if pref is None:
        return jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    pref = jnp.asarray(pref, dtype)
    if pref.shape != (num_tasks,):
        raise ValueError(f"{name}: pref must have shape ({num_tasks},); got {pref.shape}")
    return pref


def _saturate(x: jax.Array) -> jax.Array:
    big = jnp.finfo(x.dtype).max
    return jnp.clip(x, -big, big)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den elementwise, 0 where den == 0, saturated instead of inf."""
    pos = den > 0
    return jnp.where(pos, _saturate(num / jnp.where(pos, den, 1)), 0.0)


def _times_ratio(x: jax.Array, num: jax.Array, den: jax.Array) -> jax.Array:
    """x * num / den for num, den > 0: direct where representable, else through logarithms (saturated at the
    dtype's largest finite value, 0 when it underflows); 0 where x == 0 or den == 0."""
    ok = (den > 0) & (num > 0)
    num = jnp.where(ok, num, 1)
    den = jnp.where(ok, den, 1)
    ratio = num / den
    direct = x * ratio
    direct_ok = jnp.isfinite(ratio) & (ratio > 0) & jnp.isfinite(direct)
    big = jnp.log(jnp.finfo(x.dtype).max)
    logpath = jnp.sign(x) * jnp.exp(jnp.minimum(_log(jnp.abs(x)) + jnp.log(num) - jnp.log(den), big))
    return jnp.where(ok & (x != 0), jnp.where(direct_ok, direct, logpath), 0.0)


def _cnorm(a: jax.Array, C: jax.Array) -> jax.Array:
    """||sum_t a_t u_t|| = sqrt(a^T C a) for unit vectors u_t with cosines C, without squaring a's scale."""
    e = _pow2_exponent(jnp.max(jnp.abs(a)))
    ah = jnp.ldexp(a, -e)
    return jnp.ldexp(jnp.sqrt(jnp.maximum(ah @ (C @ ah), 0.0)), e)


def _normalised_gramian(n: jax.Array, C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(G / trace(G), n / max(n)) from the factored form; the zero matrix for a zero Jacobian."""
    nmax = jnp.max(n)
    nt = _ratio(n, jnp.full_like(n, nmax))
    Q = (nt[:, None] * C) * nt[None, :]
    return Q / jnp.maximum(jnp.sum(nt * nt), 1.0), nt


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


def _log(x: jax.Array) -> jax.Array:
    """log x for x >= 0, -inf at 0 (no warning, no NaN)."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1)), -jnp.inf)


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


def _as_factored(G: GramianLike, name: str) -> tuple[int, jax.Array, jax.Array]:
    T = _check_gramian(G, name)
    S = as_scaled_gramian(G)
    return T, S.norms, S.cosines


def _nan_in_nan_out(fn):
    """A non-finite Gramian (or Jacobian) gives NaN weights, coefficients and residual, never finite guesses."""

    @functools.wraps(fn)
    def wrapped(G, *args, **kwargs):
        sol = fn(G, *args, **kwargs)
        S = as_scaled_gramian(G)
        bad = ~(jnp.all(jnp.isfinite(S.norms)) & jnp.all(jnp.isfinite(S.cosines)))
        return Solution(*(jnp.where(bad, jnp.nan, x).astype(x.dtype) for x in sol))

    return wrapped


# --------------------------------------------------------------------------------------------------------------
# Weightings
# --------------------------------------------------------------------------------------------------------------


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


@_nan_in_nan_out
def imtl_g_solution(G: GramianLike, *, eps: Optional[float] = None) -> Solution:
    """IMTL-G: weights whose direction has equal projections on every task's unit gradient.

    The direction d = sum_t a_t u_t (u_t = g_t / ||g_t||) with <d, u_t> equal for all t solves C a = 1 (C the
    cosines): a = pinv(C) 1, then w_t = a_t / ||g_t||, normalised to sum 1. This uses the cosines only, so
    the direction is invariant to rescaling any task. Where 1 is in the range of C (e.g. J of full row rank)
    it is the closed form w proportional to pinv(G) sqrt(diag G) of Liu et al. and of TorchJD's IMTLG
    (identical then: pinv(G) n = diag(n)^-1 pinv(C) 1 for invertible C); elsewhere TorchJD's form mixes the
    norms into the pseudo-inverse and can differ. TorchJD also thresholds |sum(v)| < 1e-12 on the raw scale
    of G (so its weights vanish for gradient norms above ~1e12); here the threshold is scale-free.

    Computed with rho_t = min_s ||g_s|| / ||g_t||: w = rho a / (rho^T a). If |rho^T a| <= eps (e.g. two
    exactly opposing gradients, where no such direction exists) the weights are 0.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      eps: threshold on |rho^T a|; default 100 * machine epsilon of G's dtype.

    Returns:
      :class:`Solution` (residual 0): weights summing to 1 (or all zero); a zero gradient gets weight 0.

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """
    T, n, C = _as_factored(G, "imtl_g_weights")
    if eps is not None:
        _check_nonneg_float(eps, "eps", "imtl_g_weights")
    threshold = 100.0 * jnp.finfo(C.dtype).eps if eps is None else eps
    pos = n > 0
    n_min = jnp.min(jnp.where(pos, n, jnp.inf))
    n_min = jnp.where(jnp.any(pos), n_min, 0.0).astype(C.dtype)
    rho = _ratio(jnp.full_like(n, n_min), n)
    a = jnp.linalg.pinv(C, hermitian=True) @ jnp.ones((T,), C.dtype)
    a = jnp.where(pos, a, 0.0)
    total = rho @ a
    ok = jnp.abs(total) > threshold
    inv = jnp.where(ok, 1.0 / jnp.where(ok, total, 1), 0.0)
    weights = jnp.where(ok, rho * a * inv, 0.0)
    coefficients = jnp.where(ok, (a * inv) * n_min, 0.0)
    return Solution(weights, coefficients, jnp.zeros((), C.dtype))


def imtl_g_weights(G: GramianLike, *, eps: Optional[float] = None) -> jax.Array:
    """IMTL-G weights (:func:`imtl_g_solution`): (T,) summing to 1 (or all zero)."""
    return imtl_g_solution(G, eps=eps).weights


@_nan_in_nan_out
def aligned_mtl_solution(G: GramianLike, pref: Optional[Any] = None) -> Solution:
    """Aligned-MTL: align the task gradients into orthogonal directions of equal norm, then weight them.

    With the eigendecomposition G = V diag(lambda) V^T restricted to its rank r (lambda_1 >= ... >= lambda_r
    > tol), B = sqrt(lambda_r) V diag(lambda^{-1/2}) V^T and w = B @ pref. The rows of B J are orthogonal with
    the common norm sqrt(lambda_r) (the smallest singular value of J): J = U S W^T gives B J =
    s_r U W^T. A zero Gramian gives B = I. tol = max(lambda) * T * machine epsilon of G's dtype (TorchJD
    uses the default torch dtype's epsilon): by this definition a task whose gradient norm is below about
    sqrt(T eps) times the largest counts as rank-deficient. G / trace(G) is formed from norms and cosines,
    so the weights are invariant to a global rescaling of J by any factor.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      pref: (T,) preference weights on the aligned gradients; default 1/T each (TorchJD's default).

    Returns:
      :class:`Solution` (residual 0).

    References:
      Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    """
    T, n, C = _as_factored(G, "aligned_mtl_weights")
    Q, _ = _normalised_gramian(n, C)
    pref = _preference(pref, T, Q.dtype, "aligned_mtl_weights")
    lam, V = jnp.linalg.eigh(Q)
    tol = jnp.max(lam) * T * jnp.finfo(Q.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    lam_r = jnp.min(jnp.where(keep, lam, jnp.inf))
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1)), 0.0)
    B = jnp.sqrt(jnp.where(rank > 0, lam_r, 1.0)) * (V * inv_sqrt) @ V.T
    B = jnp.where(rank > 0, B, jnp.eye(T, dtype=Q.dtype))
    w = B @ pref
    return Solution(w, w * n, jnp.zeros((), Q.dtype))


def aligned_mtl_weights(G: GramianLike, pref: Optional[Any] = None) -> jax.Array:
    """Aligned-MTL weights (:func:`aligned_mtl_solution`): (T,)."""
    return aligned_mtl_solution(G, pref).weights


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


def _project_above(H: jax.Array, u: jax.Array, max_iter: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(v, z, residual): v = argmin_{v >= u} v^T H v via z = v - u = NNLS(H, H u);
    residual = max_t |min(z_t, (H v)_t)|."""
    z = _nnls(H, H @ u, max_iter)
    v = u + z
    return v, z, _natural_residual(z, H @ v)


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


def _log_rows_factored(logscale: jax.Array, Ph: jax.Array, C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-norms and cosines of p_t = exp(logscale_t) sum_k Ph_tk u_k (u_k unit vectors with cosines C)."""
    e = _pow2_exponent(jnp.max(jnp.abs(Ph), axis=1))
    Ph = jnp.ldexp(Ph, -e[:, None])
    Gh = Ph @ C @ Ph.T
    Gh = 0.5 * (Gh + Gh.T)
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(Gh), 0.0))
    logn = logscale + _log(d) + e.astype(d.dtype) * np.log(2.0)
    return logn, _cosines(Gh, d)


def _log_cnorm(loga: jax.Array, ahat: jax.Array, C: jax.Array) -> jax.Array:
    """log ||sum_t exp(loga_t) ahat_t u_t||, for scale factors beyond the dtype's range (-inf for 0)."""
    top = jnp.max(loga)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return top + _log(_cnorm(ahat * jnp.exp(loga - top), C))


@_nan_in_nan_out
def cagrad_solution(
    G: GramianLike,
    c: float = 0.4,
    *,
    rescale: int = 1,
    num_outer: Optional[int] = None,
    num_inner: Optional[int] = None,
) -> Solution:
    """CAGrad: maximise the worst task improvement within a ball around the mean gradient.

    With g0 = mean_t g_t and r = c ||g0||, CAGrad solves max_{||d - g0|| <= r} min_t <g_t, d>. Its dual is
    min_{w in simplex} F(w) = <g_w, g0> + r ||g_w||, g_w = w @ J, and the primal solution is the closed form
    d = g0 + (r / ||g_w*||) g_w*; min_t <g_t, d> = F(w*). In weights: 1/T + (r / ||g_w*||) w*, divided by
    1 + c^2 (``rescale=1``, the paper's code default), 1 + c (``rescale=2``) or 1 (``rescale=0``).

    Solver. With the variational form r ||x|| = min_{s > 0} r (||x||^2 / s + s) / 2, for a fixed s the
    minimiser w(s) is the nearest point of conv{g_t} to y(s) = -(s / r) g0 (an MGDA problem on the points
    g_t - y(s), solved exactly by the active-set NNLS of :func:`mgda_solution`), and the optimal s is the
    root of s = psi(s) = ||g_w(s)||, unique because s - psi(s) changes sign once (the partial minimum over w
    is convex in s). The root is bracketed in log s between the min-norm m0 of the hull (or, when m0 is at
    rounding level, that level) and max_t ||g_t||, and found by the Illinois (modified regula falsi) method
    to |log s - log psi(s)| <= 16 T eps or a bracket narrower than 4 eps in log s (eps of G's dtype; ~6e-14
    in float64 and ~8e-5 in float32 for T = 40), within ``num_outer`` steps (typically 5-15). Scales are
    carried as logarithms of norms relative to max_t ||g_t|| and the rest as cosines, so tasks of any scale
    count (e.g. a task with gradient norm 1e-30 next to one with 1e30, in float32). ``Solution.residual`` is
    the larger of the inner KKT residual (see :func:`mgda_solution`) and the final |log s - log psi(s)|.

    Degenerate case: when ||g_w*|| is at rounding level, ||g_w*|| <= 10 sqrt(T eps) ||(w*_t ||g_t||)_t||
    (0 lies in the convex hull of the gradients and no point of the hull makes an obtuse enough angle with
    g0, so F* = 0 and the maximiser is not unique), the direction is g0 (weights 1/T before rescaling).

    Relation to TorchJD (``CAGradWeighting(c, norm_eps=1e-4)``: ``normalize(G, norm_eps)``, then the dual
    solved by cvxpy/CLARABEL in float64; weights 1/T + (r / ||g_w||) w when ||g_w|| >= norm_eps, else 0):
    the same dual on the same normalised Gramian, with these differences. (1) TorchJD does not rescale: it
    matches ``rescale=0``. (2) TorchJD zeroes the Gramian when trace(G) = ||J||_F^2 < 1e-4, and its weights are
    then all 0 (no update); here the weights do not depend on the scale of J. (3) Where 0 lies in the
    convex hull of the gradients and F* = 0, TorchJD returns zero weights (d = 0, which is outside the ball
    for c < 1); here d = g0 (the official code, which adds 1e-8 to ||g_w||^2 under the square root and to
    ||g_w||, on the raw scale, returns a large multiple of a rounding-level g_w). (4) TorchJD's zero-weight test
    ||g_w|| < 1e-4 is on the normalised scale, so it also zeroes the update when the optimal g_w is small
    but genuine (e.g. the gradient of a task whose norm is below 1e-4 ||J||_F); here the exact CAGrad
    direction d = g0 + r g_w / ||g_w|| is kept down to rounding level. (5) TorchJD solves in float64 to
    CLARABEL's default tolerances (~1e-8); here the dual is solved in G's dtype to the tolerance above.

    Args:
      G: (T, T) Gramian or :class:`ScaledGramian`.
      c: radius of the ball relative to ||g0||, >= 0 (0.4 here; the paper uses 0.4-0.5). c = 0 gives g0.
      rescale: 0, 1 or 2 (see above).
      num_outer: cap on the root-finding iterations; None (default): 100.
      num_inner: cap on the active-set iterations of each inner solve; None (default): 10 T + 50.

    Returns:
      :class:`Solution`.

    References:
      Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    """
    T, n, C = _as_factored(G, "cagrad_weights")
    _check_nonneg_float(c, "c", "cagrad_weights")
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad_weights: rescale must be 0, 1 or 2; got {rescale!r}")
    _check_cap(num_outer, "num_outer", "cagrad_weights")
    _check_cap(num_inner, "num_inner", "cagrad_weights")
    outer_cap = 100 if num_outer is None else int(num_outer)
    inner_cap = _active_set_cap(num_inner, T)
    dtype = C.dtype
    eps = jnp.finfo(dtype).eps
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    mean = jnp.full((T,), 1.0 / T, dtype)
    # Scales as logarithms relative to the largest norm, so that ratios beyond the dtype's range stay exact.
    logn = _log(n)
    zero_jacobian = ~(jnp.max(logn) > -jnp.inf)
    lognt = jnp.where(zero_jacobian, -jnp.inf, logn - jnp.where(zero_jacobian, 0.0, jnp.max(logn)))
    h = jnp.exp(lognt) / T  # g0 = max_t ||g_t|| sum_k h_k u_k
    log_hmax = _log(jnp.max(h))
    log_rt = _log(jnp.asarray(c, dtype) * _cnorm(h, C))  # log(r / max_t ||g_t||)
    radius = (log_rt > -jnp.inf) & ~zero_jacobian

    def inner(ell):
        """At s = exp(ell) max_t ||g_t||: w(s), g_w = sum_t exp(loga_t) coef_t u_t, log ||g_w|| and the residual."""
        loglam = ell - jnp.where(radius, log_rt, 0.0)  # y(s) = -lam g0, lam = s / r
        m = jnp.maximum(lognt, loglam + log_hmax)  # log of row t's largest entry
        m = jnp.where(m > -jnp.inf, m, 0.0)
        own = jnp.where(lognt > -jnp.inf, jnp.exp(lognt - m), 0.0)
        shift = jnp.where(loglam > -jnp.inf, jnp.exp(loglam - m), 0.0)
        Ph = jnp.eye(T, dtype=dtype) * own[:, None] + shift[:, None] * h[None, :]  # p_t = g_t - y(s), row-scaled
        logpn, pC = _log_rows_factored(m, Ph, C)
        rho, has_zero, log_pmin = _log_ratios_to_min(logpn)
        w, ahat, res = _min_norm(rho, has_zero, pC, inner_cap)
        safe = jnp.where(has_zero, 0.0, log_pmin - logpn)
        loga = jnp.where(has_zero, lognt, safe + lognt)  # g_w = sum_t w_t g_t, w_t = exp(log_pmin - logpn_t) ahat_t
        coef = jnp.where(has_zero, w, ahat)
        return w, loga, coef, _log_cnorm(loga, coef, C), res

    def fval(ell, log_psi):
        return jnp.where(log_psi > -jnp.inf, ell - log_psi, jnp.inf)

    def log_norm2(loga, coef):
        top = jnp.max(loga)
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        return top + _log(jnp.sqrt(jnp.sum((coef * jnp.exp(loga - top)) ** 2)))

    # Bracket in ell = log(s / max norm): psi(s) >= m0 = psi(0), the min-norm of the hull, and psi(s) <= 1 =
    # psi(hi). When m0 is at rounding level (0 in the hull, up to rounding) the lower end is that level.
    # One loop (a single copy of the inner solver): step 0 evaluates psi(0) (m0), step 1 the upper end, step 2
    # the lower end, then Illinois steps.
    log_noise = jnp.log(10.0 * jnp.sqrt(T * eps))
    ftol = 16 * T * eps
    zeros = jnp.zeros((T,), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    best0 = (zeros, zeros, zeros, -inf, inf, inf)

    def cond(state):
        *_, it, done = state
        return (~done) & (it < outer_cap + 3)

    def body(state):
        lo, f_lo, hi, f_hi, side, best, lo_is_floor, at_lo, it, done = state
        finite = jnp.isfinite(f_lo) & jnp.isfinite(f_hi) & (f_hi > f_lo)
        secant = jnp.where(finite, (lo * f_hi - hi * f_lo) / jnp.where(finite, f_hi - f_lo, 1), 0.5 * (lo + hi))
        margin = 1e-3 * (hi - lo)
        ell = jnp.select([it == 0, it == 1, it == 2], [-inf, hi, lo], jnp.clip(secant, lo + margin, hi - margin))
        out = inner(ell)
        f = fval(ell, out[3])
        cand = out + (jnp.abs(f),)
        # step 0: the lower end from m0
        log_a0 = log_norm2(out[1], out[2])
        floor0 = ~(out[3] > log_noise + log_a0)
        lo0 = jnp.where(floor0, log_noise + jnp.where(log_a0 > -jnp.inf, log_a0, 0.0), out[3])
        # steps >= 3: Illinois; steps 1 and 2 set f_hi and f_lo
        go_lo = f <= 0  # the root is above ell
        il_lo = jnp.where(go_lo, ell, lo)
        il_flo = jnp.where(go_lo, f, jnp.where(side == 1, 0.5 * f_lo, f_lo))  # Illinois: halve the end kept twice
        il_hi = jnp.where(go_lo, hi, ell)
        il_fhi = jnp.where(go_lo, jnp.where(side == -1, 0.5 * f_hi, f_hi), f)
        il_side = jnp.where(go_lo, -1, 1).astype(jnp.int32)
        setup = it < 3
        new_lo = jnp.where(it == 0, lo0, jnp.where(setup, lo, il_lo))
        new_flo = jnp.where(it == 2, f, jnp.where(setup, f_lo, il_flo))
        new_hi = jnp.where(setup, hi, il_hi)
        new_fhi = jnp.where(it == 1, f, jnp.where(setup, f_hi, il_fhi))
        new_side = jnp.where(setup, 0, il_side).astype(jnp.int32)
        new_floor = jnp.where(it == 0, floor0, lo_is_floor)
        new_at_lo = at_lo | ((it == 2) & (f >= 0))  # the root is at lo: s* = m0, or s* ~ 0 below the floor
        better = (it > 0) & ((cand[5] <= best[5]) | new_at_lo)
        best = jax.tree.map(lambda x, y: jnp.where(better, x, y), cand, best)
        done = jnp.where(
            it == 0,
            False,
            new_at_lo | (best[5] <= ftol) | ((it == 1) & (f <= 0))
            | (~setup & (il_hi - il_lo <= 4 * eps * jnp.maximum(1.0, jnp.abs(ell)))),
        )
        return new_lo, new_flo, new_hi, new_fhi, new_side, best, new_floor, new_at_lo, it + 1, done

    state = (-inf, -inf, jnp.zeros((), dtype), inf, jnp.zeros((), jnp.int32), best0, jnp.zeros((), bool),
             jnp.zeros((), bool), jnp.zeros((), jnp.int32), ~radius)
    *_, best, lo_is_floor, start_lo, _, _ = jax.lax.while_loop(cond, body, state)
    w_star, loga, coef, log_psi, res_inner, fgap = best
    log_anorm = log_norm2(loga, coef)
    degenerate = (start_lo & lo_is_floor) | (log_psi <= log_noise + log_anorm)
    ok = radius & ~degenerate
    log_lam = jnp.where(ok, log_rt - log_psi, -jnp.inf)  # log(r / ||g_w*||)
    big = jnp.log(jnp.finfo(dtype).max)
    log_div = float(np.log(divisor))
    extra = jnp.where(ok & (w_star > 0), jnp.exp(jnp.minimum(log_lam - log_div + _log(w_star), big)), 0.0)
    weights = _saturate(mean / divisor + extra)
    lognmax = jnp.where(zero_jacobian, 0.0, jnp.max(logn))
    scale = jnp.exp(jnp.minimum(lognmax + log_lam - log_div + loga, big))
    extra_coef = jnp.where(ok & (coef != 0), _saturate(scale * coef), 0.0)
    coefficients = _saturate(n / (T * divisor) + extra_coef)
    residual = jnp.where(ok, jnp.maximum(res_inner, jnp.where(jnp.isfinite(fgap), fgap, jnp.inf)), 0.0)
    return Solution(weights, coefficients, residual.astype(dtype))


def cagrad_weights(
    G: GramianLike,
    c: float = 0.4,
    *,
    rescale: int = 1,
    num_outer: Optional[int] = None,
    num_inner: Optional[int] = None,
) -> jax.Array:
    """CAGrad weights (:func:`cagrad_solution`): (T,)."""
    return cagrad_solution(G, c, rescale=rescale, num_outer=num_outer, num_inner=num_inner).weights
