"""Fixed scalarisations of the task losses: equal weights and single task.

Both differentiate ``sum_t w_t L_t`` with fixed weights w: all ones ("equal", the paper's "Equal Task
Weights" / "No reg" row) or the indicator of one task ("single_task": the encoder and that task's decoder
learn from that task alone, which is the paper's single-task baseline run with the same network and
engine; the other decoders get zero gradients and never change).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux

PyTree = Any

__all__ = ["equal", "single_task", "weighted_sum"]


def weighted_sum(weights: Optional[Sequence[float]] = None, *, name: str = "weighted_sum") -> Method:
    """Minimises sum_t w_t L_t with fixed weights (all ones when ``weights`` is None).

    Args:
      weights: optional fixed task weights, checked against T when the state is initialised.
      name: the registry name reported by the method.
    """
    fixed = None if weights is None else tuple(float(w) for w in weights)

    def init(params: PyTree, num_tasks: int) -> tuple:
        if fixed is not None and len(fixed) != num_tasks:
            raise ValueError(f"{name}: got {len(fixed)} weights for {num_tasks} tasks")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        def objective(p):
            losses, aux = task_losses_and_aux(problem, p, batch, rng)
            w = jnp.ones_like(losses) if fixed is None else jnp.asarray(fixed, losses.dtype)
            return jnp.dot(w, losses), (losses, aux, w)

        (loss, (losses, aux, w)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return MethodStep(grads, state, loss, losses, aux, {"task_weights": w})

    return Method(name=name, init=init, step=step)


def equal() -> Method:
    """Equal task weights: minimises sum_t L_t."""
    return weighted_sum(None, name="equal")


def single_task(task: int) -> Method:
    """Trains on task ``task`` alone: minimises L_task (weights e_task)."""
    if not isinstance(task, int) or task < 0:
        raise ValueError(f"single_task: task must be a non-negative task index; got {task!r}")

    base_name = "single_task"

    def init(params: PyTree, num_tasks: int) -> tuple:
        if task >= num_tasks:
            raise ValueError(f"{base_name}: task index {task} out of range for {num_tasks} tasks")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        def objective(p):
            losses, aux = task_losses_and_aux(problem, p, batch, rng)
            return losses[task], (losses, aux)

        (loss, (losses, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        weights = jax.nn.one_hot(task, losses.shape[0], dtype=losses.dtype)
        return MethodStep(grads, state, loss, losses, aux, {"task_weights": weights})

    return Method(name=base_name, init=init, step=step)
