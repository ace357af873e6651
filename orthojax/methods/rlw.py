"""Random Loss Weighting (RLW): a fresh random weighting of the task losses at every step.

Each step draws z ~ N(0, I_T) and minimises sum_t w_t L_t with w = softmax(z) (the weights are positive and
sum to 1, so the update is on the scale of the *mean* task loss, 1/T of equal weighting's). The method
needs the task losses only (one backward pass) and keeps no state.

References:
  Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
  Learning", TMLR 2022. Reference code: LibMTL (median-research-group/LibMTL), LibMTL/weighting/RLW.py
  (the normal distribution followed by a softmax, LibMTL's only one; the paper also studies uniform,
  Bernoulli, constrained Bernoulli and Dirichlet draws).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks, task_losses_and_aux
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["rlw", "rlw_weights"]

# Folded into the step's key so that the weights are independent of the model's own randomness (dropout).
_RLW_KEY_SALT = 0x524C57


def rlw_weights(key: jax.Array, num_tasks: int, dtype: Any = jnp.float32) -> jax.Array:
    """One draw of RLW's task weights: w = softmax(z), z ~ N(0, I_T).

    Args:
      key: a JAX PRNG key.
      num_tasks: T >= 1.
      dtype: floating dtype of the result.

    Returns:
      (T,) positive weights summing to 1; E[w_t] = 1/T, and log w_s - log w_t = z_s - z_t ~ N(0, 2).

    Raises:
      ValueError: ``num_tasks`` is not a positive integer.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"rlw_weights: num_tasks must be a positive integer; got {num_tasks!r}")
    return jax.nn.softmax(jax.random.normal(key, (num_tasks,), dtype))


def rlw() -> Method:
    """Random Loss Weighting: minimises sum_t w_t L_t with w = softmax(z), z ~ N(0, I_T) drawn every step.

    The draw uses the step's ``rng`` folded with a constant, so a fixed key gives the same weights and the
    weights do not reuse the model's random numbers. No hyper-parameters; the state is empty.

    Returns:
      A :class:`~orthojax.methods.base.Method` named "rlw". ``MethodStep.loss`` is sum_t w_t L_t;
      metrics: "task_weights" (T,) the weights w of this step.

    Example:
      >>> method = rlw()
      >>> out = method.step(problem, params, method.init(params, 3), batch, jax.random.key(0))

    References:
      Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
      Learning", TMLR 2022; LibMTL/weighting/RLW.py.
    """

    def init(params: PyTree, num_tasks: int) -> tuple:
        _check_num_tasks(num_tasks, "rlw")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        losses, pullback, aux = jax.vjp(lambda p: task_losses_and_aux(problem, p, batch, rng), params, has_aux=True)
        w = rlw_weights(jax.random.fold_in(rng, _RLW_KEY_SALT), losses.shape[0], losses.dtype)
        (grads,) = pullback(w)
        return MethodStep(grads, state, jnp.dot(w, losses), losses, aux, {"task_weights": w})

    return Method(name="rlw", init=init, step=step)


register("rlw", rlw, label="RLW", aliases=("random_loss_weighting", "random_weighting"))
