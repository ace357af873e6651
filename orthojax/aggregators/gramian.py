"""Gradient aggregation from the Gramian: task weights as functions of G = J J^T alone.

Let J be the T x P matrix whose row t is the gradient g_t of task t's loss with respect to the shared
parameters. Most conflict-aware aggregators (MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj, CAGrad)
return an update direction of the form

    d = w @ J = sum_t w_t g_t,

with weights w in R^T that depend on J only through the T x T Gramian G = J J^T (G_ij = <g_i, g_j>).
The package keeps the parts apart: this module's :func:`gramian` / :func:`scaled_gramian` build G from
the Jacobian leaves, each weighting module's ``*_solution`` / ``*_weights`` function maps G to w
(:mod:`~orthojax.aggregators.mgda`, ...), and :func:`combine` / :func:`combine_unit` form d leaf by leaf. All functions are pure and jittable; the iterative solvers are
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

References (of the weightings built on this module):
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
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp

from orthojax.aggregators._numerics import _float_dtype, _pow2_exponent, _ratio

PyTree = Any

__all__ = ["GramianLike", "ScaledGramian", "Solution", "as_scaled_gramian", "combine", "combine_unit", "gramian",
           "scaled_gramian"]


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



def _check_gramian(G: GramianLike, name: str) -> int:
    shape = jnp.shape(G.cosines) if isinstance(G, ScaledGramian) else jnp.shape(G)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"{name}: expected a square (T, T) Gramian with T >= 1; got shape {shape}")
    if isinstance(G, ScaledGramian) and jnp.shape(G.norms) != (shape[0],):
        raise ValueError(f"{name}: ScaledGramian norms must have shape ({shape[0]},); got {jnp.shape(G.norms)}")
    return shape[0]



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



def _normalised_gramian(n: jax.Array, C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(G / trace(G), n / max(n)) from the factored form; the zero matrix for a zero Jacobian."""
    nmax = jnp.max(n)
    nt = _ratio(n, jnp.full_like(n, nmax))
    Q = (nt[:, None] * C) * nt[None, :]
    return Q / jnp.maximum(jnp.sum(nt * nt), 1.0), nt
