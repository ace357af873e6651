"""IMTL: Impartial Multi-Task Learning, the hybrid of loss balancing (IMTL-L) and gradient balancing (IMTL-G).

IMTL-L: every task loss gets a learnable scale s_t (initialised to 0) and is replaced by

    L'_t = e^{s_t} L_t - s_t,

whose minimum over s_t is at e^{s_t} L_t = 1: the scaled losses are driven to a common value, and the -s_t
term keeps the scale from collapsing to 0. s receives the gradient of sum_t L'_t, dL'/ds_t = e^{s_t} L_t - 1,
and is updated inside the step by its own optax optimiser.

IMTL-G on the scaled losses' gradients g'_t = e^{s_t} g_t with respect to the shared parameters: the update
d = sum_t a_t g'_t with sum_t a_t = 1 whose projections on every unit task gradient u_t = g'_t / ||g'_t|| are
equal (closed form a proportional to pinv(G') sqrt(diag G'), G' the Gramian of the g'_t; computed by
:func:`orthojax.methods.gramian.imtl_g_weights` from the scale-safe Gramian). Every other parameter (the
task heads) receives the gradient of sum_t L'_t, i.e. sum_t e^{s_t} grad L_t.

This is the full method of the paper as LibMTL implements it with ``rep_grad=False`` (gradients w.r.t. the
shared parameters; the paper uses the gradients w.r.t. the shared representation). In LibMTL s is a
parameter of the model and trained by the model's optimiser; here it is the method's state with its own
optimiser (by default Adam, the kind of optimiser the experiments use for the model).

References:
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.
  Reference code: LibMTL (median-research-group/LibMTL), LibMTL/weighting/IMTL.py.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from orthojax.methods import gramian as gm
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks
from orthojax.methods.db_mtl import shared_jacobian
from orthojax.methods.gradnorm import copy_leaves, param_dtype
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["IMTLState", "imtl"]


class IMTLState(NamedTuple):
    """State of :func:`imtl`.

    Attributes:
      log_scales: (T,) the learnable loss scales s_t (the losses are multiplied by e^{s_t}).
      opt_state: the optax state of their optimiser.
    """

    log_scales: jax.Array
    opt_state: Any


def imtl(learning_rate: float = 1e-3, *, optimizer: Optional[optax.GradientTransformation] = None) -> Method:
    """IMTL (IMTL-L + IMTL-G): learnable loss scales e^{s_t} L_t - s_t and equal-projection gradients.

    Args:
      learning_rate: learning rate of the default optimiser of s, ``optax.adam(learning_rate)``; > 0.
      optimizer: an optax transformation for s; overrides ``learning_rate`` when given.

    Returns:
      A :class:`~orthojax.methods.base.Method` named "imtl". ``MethodStep.loss`` is sum_t (e^{s_t} L_t - s_t)
      at the s used for this step. Metrics: "task_weights" (T,) a_t e^{s_t}, the weights of the raw task
      gradients g_t in the shared update; "imtl_g_weights" (T,) a; "loss_scales" (T,) e^{s_t}.

    Raises:
      TypeError / ValueError: ``learning_rate`` not a finite real > 0, or ``optimizer`` not an
        ``optax.GradientTransformation``.

    Example:
      >>> method = imtl(learning_rate=1e-4)
      >>> state = method.init(params, num_tasks=3)

    References:
      Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; LibMTL/weighting/IMTL.py.
    """
    if optimizer is None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
            raise TypeError(f"imtl: learning_rate must be a real number; got {learning_rate!r}")
        learning_rate = float(learning_rate)
        if not (learning_rate > 0 and learning_rate != float("inf")):
            raise ValueError(f"imtl: learning_rate must be finite and > 0; got {learning_rate}")
        optimizer = optax.adam(learning_rate)
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"imtl: optimizer must be an optax.GradientTransformation; got {optimizer!r}")

    def init(params: PyTree, num_tasks: int) -> IMTLState:
        _check_num_tasks(num_tasks, "imtl")
        log_scales = jnp.zeros((num_tasks,), param_dtype(params))
        return IMTLState(log_scales, copy_leaves(optimizer.init(log_scales)))

    def step(problem: MultiTaskProblem, params: PyTree, state: IMTLState, batch: Any, rng: jax.Array) -> MethodStep:
        sj = shared_jacobian(problem, params, batch, rng)
        losses = jax.lax.stop_gradient(sj.losses)
        s = state.log_scales
        scales = jnp.exp(s)
        scaled = [jax.lax.stop_gradient(g) * scales.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
                  for g in sj.jacobian]
        a = jax.lax.stop_gradient(gm.imtl_g_weights(gm.scaled_gramian(scaled)))
        shared = gm.combine(a, scaled)
        _, rest = sj.pullback(scales)
        s_grad = scales * losses.astype(s.dtype) - 1.0
        updates, opt_state = optimizer.update(s_grad, state.opt_state, s)
        new_state = IMTLState(optax.apply_updates(s, updates), opt_state)
        loss = jnp.sum(scales.astype(sj.losses.dtype) * sj.losses - s.astype(sj.losses.dtype))
        metrics = {"task_weights": a * scales.astype(a.dtype), "imtl_g_weights": a, "loss_scales": scales}
        return MethodStep(sj.assemble(shared, rest), new_state, loss, sj.losses, sj.aux, metrics)

    return Method(name="imtl", init=init, step=step)


register("imtl", imtl, label="IMTL", aliases=("imtl_hybrid",))
