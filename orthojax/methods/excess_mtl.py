"""ExcessMTL: task weights from estimated excess risks, updated by exponentiated gradient ascent.

The excess risk of task t (its loss minus the best loss reachable) is estimated by a diagonal second-order
proxy, g_t^T H_t^-1 g_t, with H_t the AdaGrad preconditioner of the task's gradients w.r.t. the shared
parameters:

    S_t <- S_t + g_t * g_t                                  (elementwise, summed over all steps so far),
    e_t  = sum_p g_tp^2 / sqrt(S_tp + 1e-7).

The first step records e^0 = e and keeps the weights at 1. Every later step moves the weights by a
multiplicative (mirror-ascent) step with the robust step size eta, then renormalises them to sum T:

    w_t <- w_t exp(eta e_t / e^0_t),     w <- T w / sum_s w_s,

and the model minimises sum_t w_t L_t with the updated weights (shared parameters and heads alike). The
multiplicative update is done in log space (T softmax(log w + eta e / e^0)), which equals it whenever it is
representable and cannot overflow. A task with e^0_t = 0 (a zero first gradient) gets a ratio of 0 instead
of the reference code's division by zero.

References:
  He, Zhou, Gross, Guo, Zhao & Moura, "Robust Multi-Task Learning with Excess Risks", ICML 2024. Reference
  code: uiuctml/ExcessMTL, forked into LibMTL (median-research-group/LibMTL) as
  LibMTL/weighting/ExcessMTL.py; robust_step_size = 1e-2 from LibMTL/config.py (the official configuration's
  value).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks
from orthojax.methods.db_mtl import _check_buffer, _task_buffer, shared_jacobian
from orthojax.methods.gradnorm import param_dtype
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["ExcessMTLState", "excess_mtl"]

_ADAGRAD_EPS = 1e-7  # the reference code's constant under the square root


class ExcessMTLState(NamedTuple):
    """State of :func:`excess_mtl`.

    Attributes:
      grad_sq_sum: running sums S_t of the squared task gradients: the structure of ``params`` with a
        leading task axis on every leaf; leaves outside ``problem.shared`` stay zero.
      weights: (T,) task weights w (sum T).
      initial: (T,) e^0, the excess-risk estimates of the first step.
      started: whether ``initial`` holds the first step's estimates.
    """

    grad_sq_sum: PyTree
    weights: jax.Array
    initial: jax.Array
    started: jax.Array


def excess_mtl(robust_step_size: float = 1e-2) -> Method:
    """ExcessMTL: minimises sum_t w_t L_t with w updated from AdaGrad-preconditioned excess-risk estimates.

    Args:
      robust_step_size: eta > 0, the step size of the weights' exponentiated update (1e-2 in the official
        configuration and LibMTL/config.py; the official README's example uses 1).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "excess_mtl". ``MethodStep.loss`` is sum_t w_t L_t;
      metrics: "task_weights" (T,) the weights used in this step, "excess_risks" (T,) e_t.

    Raises:
      TypeError / ValueError: ``robust_step_size`` not a finite real > 0.

    Example:
      >>> method = excess_mtl(robust_step_size=1e-2)
      >>> state = method.init(params, num_tasks=3)

    References:
      He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024; LibMTL/weighting/ExcessMTL.py.
    """
    if isinstance(robust_step_size, bool) or not isinstance(robust_step_size, numbers.Real):
        raise TypeError(f"excess_mtl: robust_step_size must be a real number; got {robust_step_size!r}")
    eta = float(robust_step_size)
    if not (eta > 0 and eta != float("inf")):
        raise ValueError(f"excess_mtl: robust_step_size must be finite and > 0; got {eta}")

    def init(params: PyTree, num_tasks: int) -> ExcessMTLState:
        _check_num_tasks(num_tasks, "excess_mtl")
        dtype = param_dtype(params)
        return ExcessMTLState(_task_buffer(params, num_tasks), jnp.ones((num_tasks,), dtype),
                              jnp.zeros((num_tasks,), dtype), jnp.zeros((), bool))

    def step(
        problem: MultiTaskProblem, params: PyTree, state: ExcessMTLState, batch: Any, rng: jax.Array
    ) -> MethodStep:
        sj = shared_jacobian(problem, params, batch, rng)
        old = jax.tree.leaves(state.grad_sq_sum)
        _check_buffer(old, sj.selection, "excess_mtl")
        new_leaves = list(old)
        risks = jnp.zeros_like(state.weights)
        for i, g in zip(sj.selection.indices, sj.jacobian):
            g = jax.lax.stop_gradient(g).astype(old[i].dtype)
            total = old[i] + g * g
            new_leaves[i] = total
            flat = (g * g / jnp.sqrt(total + _ADAGRAD_EPS)).reshape(g.shape[0], -1)
            risks = risks + jnp.sum(flat, axis=1).astype(risks.dtype)
        initial = jnp.where(state.started, state.initial, risks)
        ok = initial > 0
        ratio = jnp.where(ok, risks / jnp.where(ok, initial, 1), 0.0)
        num_tasks = risks.shape[0]
        updated = num_tasks * jax.nn.softmax(jnp.log(state.weights) + eta * ratio)
        weights = jnp.where(state.started, updated, state.weights)
        shared, rest = sj.pullback(weights)
        new_state = ExcessMTLState(jax.tree.unflatten(jax.tree.structure(state.grad_sq_sum), new_leaves), weights,
                                   initial, jnp.ones((), bool))
        loss = jnp.dot(weights.astype(sj.losses.dtype), sj.losses)
        metrics = {"task_weights": weights, "excess_risks": risks}
        return MethodStep(sj.assemble(shared, rest), new_state, loss, sj.losses, sj.aux, metrics)

    return Method(name="excess_mtl", init=init, step=step)


register("excess_mtl", excess_mtl, label="ExcessMTL", aliases=("excessmtl",))
