"""FairGrad: alpha-fair task weights (Ban & Ji, 2024), solved in JAX by Newton's method.

FairGrad picks the update d = sum_t w_t g_t whose per-task improvements <g_t, d> maximise the alpha-fair
utility sum_t u_alpha(<g_t, d>) over a trust region; its optimality condition (their Equation 4) is

    G w = w^(-1/alpha)      (elementwise, w > 0, G = J J^T),

so <g_t, d> = w_t^(-1/alpha). alpha = 1 is proportional fairness (the Nash-MTL condition G w = 1/w);
alpha -> infinity approaches max-min fairness; alpha = 0 is linear scalarisation, where (as in TorchJD)
the weights are uniform, w = 1/T.

The condition is solved by the Newton method of :mod:`orthojax.aggregators.nash_mtl` with p = 1/alpha
(strictly convex objective 1/2 w^T G w - sum_t w_t^(1-p)/(1-p), log for p = 1), to the residual
max_t |w_t^p (G w)_t - 1| <= tol. Scale: w(c^2 G) = c^(-2/(1+p)) w(G), so d(c J) = c^((p-1)/(p+1)) d(J)
(scale free for alpha = 1); the solve is done on J rescaled by a power of two and the factor put back.
The reference solves the same equations with ``scipy.optimize.least_squares`` (bounds w >= 0), to that
solver's default tolerances.

Default alpha = 1.0, as in the reference code's default.

References:
  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, Equation 4 and Algorithm 1;
  https://github.com/OptMN-Lab/fairgrad, ``methods/weight_methods.py`` (FairGrad);
  TorchJD 0.18, https://github.com/TorchJD/torchjd, ``torchjd/aggregation/_fairgrad.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from orthojax.aggregators._numerics import _pow2_normalised
from orthojax.aggregators.base import Aggregation, Aggregator, _check_stateless, jacobian_info, num_tasks_of
from orthojax.aggregators.gramian import combine, gramian
from orthojax.aggregators.nash_mtl import _balance, _check_solver

__all__ = ["fairgrad", "fairgrad_solve", "fairgrad_weights"]

PyTree = Any


def _check_alpha(alpha: Any, name: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: alpha must be a number; got {alpha!r}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"{name}: alpha must be a finite number >= 0; got {alpha!r}")
    return float(alpha)


def fairgrad_solve(
    G: jax.Array, alpha: float = 1.0, *, tol: Optional[float] = None, max_iter: int = 60
) -> tuple[jax.Array, jax.Array]:
    """(w, residual): FairGrad's weights solving G w = w^(-1/alpha), and max_t |w_t^(1/alpha) (G w)_t - 1|.

    Args:
      G: (T, T) Gramian J J^T (PSD), floating point.
      alpha: fairness parameter >= 0 (0: uniform weights 1/T, residual 0).
      tol: residual tolerance (default 1e3 x the dtype's epsilon); max_iter: Newton iteration cap.

    Returns:
      (T,) weights w > 0 (0 for a zero Gramian) and the scalar residual, in G's dtype.
    """
    alpha = _check_alpha(alpha, "fairgrad_solve")
    _check_solver(tol, max_iter, "fairgrad_solve")
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"fairgrad_solve: G must be a square (T, T) matrix; got shape {G.shape}")
    if alpha == 0:
        return jnp.full((G.shape[0],), 1.0 / G.shape[0], G.dtype), jnp.zeros((), G.dtype)
    return _balance(G, 1.0 / alpha, tol, max_iter)


def fairgrad_weights(G: jax.Array, alpha: float = 1.0, *, tol: Optional[float] = None, max_iter: int = 60):
    """(T,) FairGrad weights (:func:`fairgrad_solve`); the direction is combine(w, J)."""
    return fairgrad_solve(G, alpha, tol=tol, max_iter=max_iter)[0]


def fairgrad(alpha: float = 1.0, *, tol: Optional[float] = None, max_iter: int = 60) -> Aggregator:
    """FairGrad aggregator (deterministic, stateless).

    Args:
      alpha: fairness parameter >= 0 (1.0: proportional fairness, the reference default).
      tol, max_iter: Newton solver tolerance and cap (:func:`fairgrad_solve`).

    Returns:
      An :class:`~orthojax.aggregators.Aggregator`, ``aggregate(jacobian, state=None, *, key=None) ->
      (direction, None)``: ``jacobian`` a (T, P) array or a pytree of (T, ...) floating-point leaves;
      ``direction`` = combine(w, J), one task's structure and dtype. ``key`` is ignored. Diagnostics
      (``with_info``): "task_weights" w, "grad_norms", "gramian", "solver_residual".

    Raises:
      TypeError / ValueError: bad hyper-parameters (at once).

    Example:
      >>> J = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> d, _ = fairgrad(alpha=1.0)(J)           # alpha = 1: <g_t, d> = 1 / w_t
      >>> w = fairgrad().with_info(J).info["task_weights"]
      >>> bool(jnp.allclose(w * (J @ d), 1.0, rtol=1e-3))
      True
    """
    alpha = _check_alpha(alpha, "fairgrad")
    _check_solver(tol, max_iter, "fairgrad")

    def fn(jacobian: PyTree, state: None, key: Any) -> Aggregation:
        del key  # deterministic
        _check_stateless(state, "fairgrad")
        num_tasks, dtype = num_tasks_of(jacobian, "fairgrad")
        if alpha == 0:
            w = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
            info = dict(jacobian_info(jacobian, w), solver_residual=jnp.zeros((), dtype))
            return Aggregation(combine(w, jacobian), None, info)
        p = 1.0 / alpha
        e, scaled = _pow2_normalised(jacobian)
        w_s, residual = _balance(gramian(scaled).astype(dtype), p, tol, max_iter)
        # J = 2^e J_s: w = w_s 2^(-2e/(1+p)), d = combine(w, J) = 2^(e (p-1)/(p+1)) combine(w_s, J_s).
        factor = jnp.exp2(e.astype(dtype) * ((p - 1.0) / (p + 1.0)))
        direction = jax.tree.map(lambda x: x * factor.astype(x.dtype), combine(w_s, scaled))
        w = w_s * jnp.exp2(e.astype(dtype) * (-2.0 / (1.0 + p)))
        info = dict(jacobian_info(jacobian, w), solver_residual=residual)
        return Aggregation(direction, None, info)

    return Aggregator(name="fairgrad", fn=fn)
