"""Nash-MTL: the Nash bargaining solution of Navon et al. (2022), solved in JAX by Newton's method.

The update d = sum_t alpha_t g_t uses the weights alpha > 0 that solve

    G alpha = 1 / alpha        (elementwise; G = J J^T),

i.e. <g_t, d> = 1 / alpha_t for every task: each task's directional derivative is inversely proportional
to its weight (the bargaining solution's optimality condition, Navon et al. Theorem 5.1). Then
||d||^2 = alpha^T G alpha = T and d does not depend on the scale of J. As in the reference, the direction
is finally clipped to norm ``max_norm`` (1.0 by default; 0 disables), so with T >= 2 it has norm max_norm.

Solver. The condition is the stationarity condition of the strictly convex problem

    min_{alpha > 0}  1/2 alpha^T G alpha - sum_t phi(alpha_t),   phi(a) = log a   (p = 1)
                                                                 phi(a) = a^(1-p) / (1-p)   (p != 1),

with p = 1 here (FairGrad, :mod:`orthojax.aggregators.fairgrad`, uses p = 1/alpha). It is solved by
Newton's method (Hessian G + p diag(alpha^(-p-1)) > 0) with a fraction-to-the-boundary rule keeping
alpha > 0 and Armijo backtracking (or, where the objective is flat to rounding, a step that lowers the
residual), in a ``lax.while_loop``, on G normalised to mean diagonal 1 (the scale
is put back analytically), from alpha = 1. It stops when the residual

    r = max_t |alpha_t^p (G alpha)_t - 1|

is at most ``tol`` or after ``max_iter`` iterations; r is reported. When a positive combination of the
gradients vanishes (e.g. g_2 = -c g_1) no solution exists: alpha grows along the null direction until the
cap and r stays large, while d stays bounded. The reference (CVXPY, ECOS) instead runs up to 20 convex
approximations and stops at ||G alpha - 1/alpha|| < 1e-3; here the exact solution is reached.

Defaults as in LibMTL / TorchJD: ``max_norm=1.0``, ``update_weights_every=1``.

References:
  Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a Bargaining
  Game", ICML 2022, Algorithm 1; https://github.com/AvivNavon/nash-mtl, ``methods/weight_methods.py``;
  LibMTL, ``LibMTL/weighting/Nash_MTL.py``; TorchJD 0.18, ``torchjd/aggregation/_nash_mtl.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from orthojax.aggregators.base import Aggregation, Aggregator, jacobian_info
from orthojax.aggregators.gramian import combine, gramian

__all__ = ["NashMTLState", "nash_mtl", "nash_mtl_solve", "nash_mtl_weights"]

PyTree = Any


class NashMTLState(NamedTuple):
    """weights: (T,) the last alpha (reused between updates); residual: () its solver residual; step: () int32."""

    weights: jax.Array
    residual: jax.Array
    step: jax.Array


def _default_tol(dtype) -> float:
    return float(1e3 * jnp.finfo(dtype).eps)


def _balance(G: jax.Array, p: float, tol: Optional[float], max_iter: int) -> tuple[jax.Array, jax.Array]:
    """alpha > 0 with G alpha = alpha^(-p) and its residual (module docstring); G is (T, T), PSD."""
    G = jnp.asarray(G)
    dtype = G.dtype
    num_tasks = G.shape[0]
    tol = _default_tol(dtype) if tol is None else tol
    G = 0.5 * (G + G.T)
    c = jnp.trace(G) / num_tasks
    c_safe = jnp.where(c > 0, c, 1)
    Gn = G / c_safe

    def objective(a):
        barrier = jnp.log(a) if p == 1 else a ** (1 - p) / (1 - p)
        return 0.5 * a @ Gn @ a - jnp.sum(barrier, axis=-1)

    def residual(a):
        return jnp.max(jnp.abs(a**p * (Gn @ a) - 1))

    steps = 0.5 ** jnp.arange(40, dtype=dtype)

    def body(carry):
        a, r, it = carry
        grad = Gn @ a - a ** (-p)
        H = Gn + jnp.diag(p * a ** (-p - 1))
        delta = -jnp.linalg.solve(H, grad)
        # Largest step keeping a > 0 (fraction 0.99 of the way to the boundary), then Armijo backtracking.
        ratio = jnp.where(delta < 0, -a / jnp.where(delta < 0, delta, -1), jnp.inf)
        t_max = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        cands = a[None, :] + (t_max * steps)[:, None] * delta[None, :]
        f0 = objective(a)
        slope = grad @ delta
        fc = jax.vmap(objective)(jnp.maximum(cands, jnp.finfo(dtype).tiny))
        armijo = fc <= f0 + 1e-4 * t_max * steps * slope
        # Near the solution f is flat to rounding: accept a step that reduces the residual instead.
        closer = jax.vmap(residual)(jnp.maximum(cands, jnp.finfo(dtype).tiny)) < r
        ok = jnp.all(cands > 0, axis=1) & (armijo | closer)
        first = jnp.argmax(ok)
        a_new = jnp.where(jnp.any(ok), cands[first], a)
        return a_new, residual(a_new), it + 1

    def cond(carry):
        _, r, it = carry
        return (r > tol) & (it < max_iter)

    a0 = jnp.ones((num_tasks,), dtype)
    a, r, _ = lax.while_loop(cond, body, (a0, residual(a0), jnp.zeros((), jnp.int32)))
    # G = c Gn: alpha = alpha_n c^(-1/(1+p)).
    alpha = a * c_safe ** (-1.0 / (1.0 + p))
    zero = ~(c > 0)
    return jnp.where(zero, 0.0, alpha), jnp.where(zero, 0.0, r)


def _check_solver(tol: Any, max_iter: Any, name: str) -> None:
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise ValueError(f"{name}: tol must be None or a positive number; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{name}: max_iter must be an int >= 1; got {max_iter!r}")


def nash_mtl_solve(G: jax.Array, *, tol: Optional[float] = None, max_iter: int = 60) -> tuple[jax.Array, jax.Array]:
    """(alpha, residual): the Nash-MTL weights solving G alpha = 1/alpha, and max_t |alpha_t (G alpha)_t - 1|.

    Args:
      G: (T, T) Gramian J J^T (PSD), floating point.
      tol: stopping tolerance on the residual (default 1e3 x the dtype's epsilon: 2.2e-13 in float64,
        1.2e-4 in float32).
      max_iter: Newton iteration cap.

    Returns:
      (T,) alpha > 0 (0 for a zero Gramian) and the scalar residual, in G's dtype. No clipping.
    """
    _check_solver(tol, max_iter, "nash_mtl_solve")
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"nash_mtl_solve: G must be a square (T, T) matrix; got shape {G.shape}")
    return _balance(G, 1.0, tol, max_iter)


def nash_mtl_weights(G: jax.Array, *, tol: Optional[float] = None, max_iter: int = 60) -> jax.Array:
    """(T,) Nash-MTL weights alpha (G alpha = 1/alpha, unclipped); the direction is combine(alpha, J)."""
    return nash_mtl_solve(G, tol=tol, max_iter=max_iter)[0]


def nash_mtl(
    max_norm: float = 1.0, update_weights_every: int = 1, *, tol: Optional[float] = None, max_iter: int = 60
) -> Aggregator:
    """Nash-MTL aggregator (stateful: the last weights, reused between updates).

    Args:
      max_norm: clip ||d|| to this value when larger (0 disables); reference default 1.0.
      update_weights_every: solve for new weights every this many calls, reusing the last ones in between
        (reference default 1).
      tol, max_iter: Newton solver tolerance and cap (:func:`nash_mtl_solve`).

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, NashMTLState)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) floating-point
      leaves; ``direction`` = combine(alpha, J), clipped, with one task's structure and dtype; the state
      carries the weights (after clipping), the solver residual and the step count; ``state=None`` stands
      for ``aggregate.init(T, dtype)`` (weights 1, step 0: the same shapes at every step). ``key`` is
      ignored. Diagnostics (``with_info``): "task_weights" (alpha after clipping), "grad_norms", "gramian",
      "solver_residual".

    Raises:
      TypeError / ValueError: bad hyper-parameters (at once); a state of the wrong shape (when called).

    Example:
      >>> agg = nash_mtl()
      >>> J = jnp.array([[1.0, 0.0], [0.0, 3.0]])
      >>> d, state = agg(J)
      >>> d, state = agg(2.0 * J, state)
      >>> round(float(jnp.linalg.norm(d)), 4)     # sqrt(T) = 1.414 before clipping to max_norm = 1
      1.0
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm >= 0:
        raise ValueError(f"nash_mtl: max_norm must be a non-negative number; got {max_norm!r}")
    if isinstance(update_weights_every, bool) or not isinstance(update_weights_every, int) or update_weights_every < 1:
        raise ValueError(f"nash_mtl: update_weights_every must be an int >= 1; got {update_weights_every!r}")
    _check_solver(tol, max_iter, "nash_mtl")

    def init(num_tasks: int, dtype: Any) -> NashMTLState:
        return NashMTLState(jnp.ones((num_tasks,), dtype), jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def fn(jacobian: PyTree, state: NashMTLState, key: Any) -> Aggregation:
        del key  # deterministic
        leaves = jax.tree.leaves(jacobian)
        num_tasks = leaves[0].shape[0]
        dtype = jnp.result_type(*leaves)
        if not isinstance(state, NashMTLState) or jnp.shape(state.weights) != (num_tasks,):
            raise ValueError(f"nash_mtl: state must be a NashMTLState with ({num_tasks},) weights")
        # alpha(c^2 G) = alpha(G) / c and d = alpha @ J is scale free: solve on J / 2^e (exact).
        maxabs = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
        _, e = jnp.frexp(jnp.where(jnp.isfinite(maxabs) & (maxabs > 0), maxabs, 1))
        e = e.astype(jnp.int32)
        scaled = jax.tree.map(lambda x: jnp.ldexp(x, -e), jacobian)
        G = gramian(scaled).astype(dtype)

        def solve(_):
            alpha, r = _balance(G, 1.0, tol, max_iter)
            if max_norm > 0:
                norm = jnp.sqrt(jnp.maximum(alpha @ G @ alpha, 0.0))
                alpha = jnp.where(norm > max_norm, alpha * (max_norm / jnp.where(norm > 0, norm, 1)), alpha)
            return alpha, r

        update = (state.step % update_weights_every) == 0
        alpha_s, r = lax.cond(update, solve, lambda _: (jnp.ldexp(state.weights, e), state.residual), None)
        d = combine(alpha_s, scaled)
        # Weights on the original J: alpha = alpha_s 2^-e.
        alpha = jnp.ldexp(alpha_s, -e)
        new_state = NashMTLState(alpha.astype(dtype), r.astype(dtype), state.step + 1)
        info = dict(jacobian_info(jacobian, new_state.weights), solver_residual=new_state.residual)
        return Aggregation(d, new_state, info)

    return Aggregator(name="nash_mtl", fn=fn, init=init)
