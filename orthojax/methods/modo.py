"""MoDo: multi-objective gradient with double sampling.

MGDA's weights lambda minimise ||J^T lambda||^2 over the simplex; with stochastic Jacobians the plug-in
estimate of J J^T from one batch is biased. MoDo takes one projected gradient step on lambda per model
step, using two independent stochastic Jacobians J_1, J_2 whose product J_1 J_2^T is an unbiased
estimate of J J^T, and updates the model with a third:

    lambda <- Proj_simplex( lambda - gamma (J_1 J_2^T lambda + rho lambda) ),      lambda_0 = 1/T,
    d = J_3^T lambda            (the new lambda),

where J_k holds the gradients of the task losses w.r.t. the shared parameters on batch k. The task heads
receive the gradient of sum_t L_t.

Approximation (one batch per step). The paper and the reference code draw three independent batches per
step; a method step here receives one. It is split along its leading (batch) axis into two halves: J_1
and J_2 are the Jacobians on the first and the second half (independent samples, so J_1 J_2^T stays an
unbiased estimate of the product of the expected Jacobians, with half-batch variance), and J_3 is the
Jacobian on the whole batch, which also gives the reported losses, the aux (e.g. BatchNorm statistics) and
the heads' gradient. J_3 therefore shares its samples with J_1 and J_2 (the reference's third batch is
independent of the other two). The two halves are evaluated with keys folded from the step's ``rng`` (1
and 2); the whole batch with ``rng`` itself. Cost: three forward passes (two on half batches) and 3T
vector-Jacobian products.

References:
  Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
  Generalization and Conflict-Avoidance", NeurIPS 2023 (JMLR 2024). Reference code:
  heshandevaka/Trade-Off-MOL and LibMTL (median-research-group/LibMTL) LibMTL/weighting/MoDo.py; defaults
  MoDo_gamma = 1e-3, MoDo_rho = 0.1 from LibMTL/config.py.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.methods import gramian as gm
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks
from orthojax.methods.db_mtl import shared_jacobian
from orthojax.methods.gradnorm import param_dtype
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["MoDoState", "modo", "project_to_simplex", "split_batch"]


class MoDoState(NamedTuple):
    """State of :func:`modo`.

    Attributes:
      weights: (T,) lambda, on the probability simplex.
    """

    weights: jax.Array


def project_to_simplex(y: jax.Array) -> jax.Array:
    """The Euclidean projection of y (T,) onto the probability simplex {x : x >= 0, sum_t x_t = 1}.

    x = max(y - theta, 0) with theta chosen so that x sums to 1: with u = y sorted in decreasing order and
    r the largest j such that u_j - (sum_{i<=j} u_i - 1) / j > 0, theta = (sum_{i<=r} u_i - 1) / r.

    References:
      Held, Wolfe & Crowder, "Validation of subgradient optimization", Math. Programming 1974; Duchi,
      Shalev-Shwartz, Singer & Chandra, "Efficient projections onto the l1-ball", ICML 2008.
    """
    u = jnp.sort(y)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    j = jnp.arange(1, y.shape[0] + 1, dtype=y.dtype)
    active = u - cumulative / j > 0
    # >= 1 in exact arithmetic (u_1 - (u_1 - 1) = 1 > 0); rounding can lose it when |u_1| >> 1
    r = jnp.maximum(jnp.sum(active), 1)
    theta = cumulative[r - 1] / r.astype(y.dtype)
    x = jnp.maximum(y - theta, 0.0)
    # the sum is 1 up to rounding; where rounding took every entry to 0 (|y| beyond 1 / eps), the projection
    # is the vertex of the largest entry
    vertex = jax.nn.one_hot(jnp.argmax(y), y.shape[0], dtype=y.dtype)
    return jnp.where(jnp.sum(x) > 0, x, vertex)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """Splits a batch into two halves along the leading axis of its array leaves (sizes n // 2, n - n // 2).

    Leaves of rank 0 (and non-array leaves) are given to both halves unchanged.

    Raises:
      ValueError: no array leaf of rank >= 1, leaves whose leading sizes differ, or a batch of fewer than 2
        examples; the message names the sizes found.
    """
    leaves, treedef = jax.tree.flatten(batch)
    sizes = sorted({int(jnp.shape(x)[0]) for x in leaves if hasattr(x, "shape") and jnp.ndim(x) >= 1})
    if not sizes:
        raise ValueError(f"modo splits the batch in two halves along its leading axis, but the batch has no array "
                         f"with a batch axis (got {type(batch).__name__})")
    if len(sizes) > 1:
        raise ValueError(f"modo splits the batch along its leading axis, but its arrays have different leading "
                         f"sizes {sizes}; every array of rank >= 1 must have the batch size first")
    n = sizes[0]
    if n < 2:
        raise ValueError(f"modo needs a batch of at least 2 examples to split in two halves; got {n}")
    half = n // 2

    def part(lo, hi):
        return treedef.unflatten([x[lo:hi] if hasattr(x, "shape") and jnp.ndim(x) >= 1 else x for x in leaves])

    return part(0, half), part(half, n)


def modo(gamma: float = 1e-3, rho: float = 0.1) -> Method:
    """MoDo: lambda by one projected stochastic step per model step, from two half-batch Jacobians.

    See the module docstring for the update and for how one batch stands in for the paper's three.

    Args:
      gamma: step size of lambda, > 0 (1e-3 in LibMTL/config.py).
      rho: L2 regularisation of lambda's update, >= 0 (0.1 in LibMTL/config.py).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "modo". ``MethodStep.loss`` is sum_t lambda_t L_t on the
      whole batch (new lambda); metrics: "task_weights" (T,) the new lambda.

    Raises:
      TypeError / ValueError: gamma not a finite real > 0, rho not a finite real >= 0; at trace time, a batch
        that cannot be split (:func:`split_batch`).

    Example:
      >>> method = modo(gamma=1e-3, rho=0.1)
      >>> state = method.init(params, num_tasks=3)   # lambda = 1/T

    References:
      Chen et al., "Three-Way Trade-Off in Multi-Objective Learning", NeurIPS 2023; LibMTL/weighting/MoDo.py.
    """
    for value, what, allow_zero in ((gamma, "gamma", False), (rho, "rho", True)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"modo: {what} must be a real number; got {value!r}")
        ok = float(value) >= 0 if allow_zero else float(value) > 0
        if not ok or float(value) == float("inf") or value != value:
            raise ValueError(f"modo: {what} must be finite and {'>=' if allow_zero else '>'} 0; got {value}")
    gamma, rho = float(gamma), float(rho)

    def init(params: PyTree, num_tasks: int) -> MoDoState:
        _check_num_tasks(num_tasks, "modo")
        return MoDoState(jnp.full((num_tasks,), 1.0 / num_tasks, param_dtype(params)))

    def step(problem: MultiTaskProblem, params: PyTree, state: MoDoState, batch: Any, rng: jax.Array) -> MethodStep:
        first, second = split_batch(batch)
        j1 = jax.lax.stop_gradient(shared_jacobian(problem, params, first, jax.random.fold_in(rng, 1)).jacobian)
        j2 = jax.lax.stop_gradient(shared_jacobian(problem, params, second, jax.random.fold_in(rng, 2)).jacobian)
        sj = shared_jacobian(problem, params, batch, rng)
        lam = state.weights
        v = gm.combine(lam, j2)  # J_2^T lambda, leaf by leaf
        cross = sum(jnp.tensordot(a, b, axes=b.ndim).astype(lam.dtype) for a, b in zip(j1, v))  # J_1 J_2^T lambda
        new = project_to_simplex(lam - gamma * (cross + rho * lam))
        shared = gm.combine(new, sj.jacobian)
        _, rest = sj.pullback(jnp.ones_like(sj.losses))
        loss = jnp.dot(new.astype(sj.losses.dtype), sj.losses)
        return MethodStep(sj.assemble(shared, rest), MoDoState(new), loss, sj.losses, sj.aux, {"task_weights": new})

    return Method(name="modo", init=init, step=step)


register("modo", modo, label="MoDo")
