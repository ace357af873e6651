"""Uncertainty weighting (Kendall, Gal & Cipolla, 2018): task weights from learnable log-variances.

With one learnable log-variance s_t = log sigma_t^2 per task, the objective is

    form="half" (default; MTAN / LibMTL, Kendall's regression likelihood):
        J(theta, s) = sum_t  L_t(theta) / (2 e^{s_t})  +  s_t / 2
    form="full" (the other widespread implementation, e^{-s} L + s):
        J(theta, s) = sum_t  e^{-s_t} L_t(theta)  +  s_t

The model receives dJ/dtheta; s is updated inside the step by its own optax optimiser from dJ/ds (the
optimum of the "half" form is s_t = log L_t). The effective task weight is dJ/dL_t (e^{-s_t}/2 or e^{-s_t}).
The state (s and its optimiser state) has the floating dtype of the parameters (float64 under x64).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_real, task_losses_and_aux
from orthojax.methods.gradnorm import copy_leaves, param_dtype
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["UncertaintyState", "uncertainty"]

_FORMS = ("half", "full")


class UncertaintyState(NamedTuple):
    """State of :func:`uncertainty`.

    Attributes:
      log_vars: (T,) learnable log-variances s_t.
      opt_state: the optax state of their optimiser.
    """

    log_vars: jax.Array
    opt_state: Any


def uncertainty(
    init_log_var: float = -0.5,
    *,
    form: Literal["half", "full"] = "half",
    learning_rate: float = 1e-3,
    optimizer: Optional[optax.GradientTransformation] = None,
) -> Method:
    """Homoscedastic-uncertainty task weighting with learnable log-variances s (one per task).

    Minimises  sum_t L_t / (2 e^{s_t}) + s_t / 2  (``form="half"``) or  sum_t e^{-s_t} L_t + s_t
    (``form="full"``) jointly in the model parameters and s.

    Args:
      init_log_var: initial value of every s_t (-0.5 in LibMTL).
      form: "half" (MTAN / LibMTL, default) or "full".
      learning_rate: learning rate of the default optimiser of s, ``optax.adam(learning_rate)`` (the same
        kind of optimiser as the model in the paper-style experiments).
      optimizer: an optax transformation for s; overrides ``learning_rate`` when given.

    Returns:
      A :class:`~orthojax.methods.base.Method` named "uncertainty". Metrics: "task_weights" (T,) = dJ/dL_t
      at the s used for this step, "log_vars" (T,) the same s.

    Example:
      >>> method = uncertainty(form="half")
      >>> state = method.init(params, num_tasks=3)

    References:
      Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
      and Semantics", CVPR 2018. Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention"
      (MTAN), CVPR 2019. Lin & Zhang, LibMTL, JMLR 2023.
    """
    init_log_var = _check_real(init_log_var, "init_log_var", "uncertainty")
    if form not in _FORMS:
        raise ValueError(f"uncertainty: form must be one of {_FORMS}; got {form!r}")
    if optimizer is None:
        learning_rate = _check_real(learning_rate, "learning_rate", "uncertainty")
        if learning_rate <= 0:
            raise ValueError(f"uncertainty: learning_rate must be > 0; got {learning_rate}")
        optimizer = optax.adam(learning_rate)
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"uncertainty: optimizer must be an optax.GradientTransformation; got {optimizer!r}")
    scale, offset = (0.5, 0.5) if form == "half" else (1.0, 1.0)

    def init(params: PyTree, num_tasks: int) -> UncertaintyState:
        if num_tasks < 1:
            raise ValueError(f"uncertainty needs at least 1 task; got {num_tasks}")
        log_vars = jnp.full((num_tasks,), init_log_var, param_dtype(params))
        return UncertaintyState(log_vars, copy_leaves(optimizer.init(log_vars)))

    def step(
        problem: MultiTaskProblem, params: PyTree, state: UncertaintyState, batch: Any, rng: jax.Array
    ) -> MethodStep:
        def objective(p, s):
            losses, aux = task_losses_and_aux(problem, p, batch, rng)
            s = s.astype(losses.dtype)
            weights = scale * jnp.exp(-s)
            return jnp.sum(weights * losses + offset * s), (losses, aux, weights)

        (loss, (losses, aux, weights)), (grads, s_grad) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(params, state.log_vars)
        updates, opt_state = optimizer.update(s_grad, state.opt_state, state.log_vars)
        log_vars = optax.apply_updates(state.log_vars, updates)
        metrics = {"task_weights": weights, "log_vars": state.log_vars}
        return MethodStep(grads, UncertaintyState(log_vars, opt_state), loss, losses, aux, metrics)

    return Method(name="uncertainty", init=init, step=step)

register("uncertainty", uncertainty, label="Uncertainty (Kendall)", aliases=(
    "uw", "uncertainty_weight", "uncertainty_weights", "uncertainty_weighting"))
