"""Fixed scalarisations of the task losses: equal weights and single task.

Both differentiate ``sum_t w_t L_t`` with fixed weights w: all ones ("equal", the paper's "Equal Task
Weights" / "No reg" row) or the indicator of one task ("single_task": the encoder and that task's decoder
learn from that task alone, which is the paper's single-task baseline run with the same network and
engine; the other decoders get zero gradients and never change). As a table row, single-task learning is a
protocol (:mod:`orthojax.methods.protocol`): one run per task, task t's columns from run t.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.gradnorm import param_dtype
from orthojax.methods.protocol import MultiStage, Outcome, PlannedStage, Stages
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["SingleTaskState", "equal", "single_task", "weighted_sum"]


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


class SingleTaskState(NamedTuple):
    """The state of :func:`single_task`.

    Attributes:
      weights: (T,) the task weights e_task (one-hot), in the parameters' floating dtype. The task is a value
        of the state, not a constant of the compiled step: the T runs of a single-task row (and their
        seeds) compile one and the same step program, so the persistent compilation cache serves them all
        from one entry.
    """

    weights: jax.Array


def single_task(task: int) -> Method:
    """Trains on task ``task`` alone: minimises L_task = sum_t w_t L_t with w = e_task (one-hot).

    The weights are the method's state (:class:`SingleTaskState`), so the step program does not depend on
    ``task``. The objective selects the trained loss (``where(w != 0, L, 0)``) before weighting it, so the
    loss and gradients equal those of ``L_task`` alone, also when another task's loss is not finite.

    Args:
      task: the index t of the task trained, 0 <= t < T. A table row of single-task learning trains every
        task (one run each) and takes none.

    Raises:
      ValueError: a negative or non-integer index; at ``init``, an index >= T.

    Example:
      >>> method = single_task(1)
      >>> state = method.init(params, 3)
      >>> state.weights
      Array([0., 1., 0.], dtype=float32)
      >>> out = method.step(problem, params, state, batch, rng)
      >>> bool(out.loss == out.task_losses[1])
      True
    """
    if isinstance(task, bool) or not isinstance(task, int) or task < 0:
        raise ValueError(f"single_task: task must be a non-negative task index; got {task!r}")

    base_name = "single_task"

    def init(params: PyTree, num_tasks: int) -> SingleTaskState:
        if task >= num_tasks:
            raise ValueError(f"{base_name}: task index {task} out of range for {num_tasks} tasks")
        return SingleTaskState(jax.nn.one_hot(task, num_tasks, dtype=param_dtype(params)))

    def step(problem: MultiTaskProblem, params: PyTree, state: SingleTaskState, batch: Any,
             rng: jax.Array) -> MethodStep:
        weights = state.weights

        def objective(p):
            losses, aux = task_losses_and_aux(problem, p, batch, rng)
            w = weights.astype(losses.dtype)
            return jnp.dot(w, jnp.where(w != 0, losses, 0)), (losses, aux, w)

        (loss, (losses, aux, w)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return MethodStep(grads, state, loss, losses, aux, {"task_weights": w})

    return Method(name=base_name, init=init, step=step)


def _single_task_stages(stages: Stages, hyperparameters: Mapping[str, Any]) -> list[PlannedStage]:
    if hyperparameters:
        raise ValueError(
            f"single_task as a table row trains one network per task and takes no hyper-parameters; got "
            f"{dict(hyperparameters)} (build_method('single_task', task=t) builds one task's method)")
    return [PlannedStage(f"task_{t}", "single_task", {"task": t}) for t in range(stages.num_tasks)]


def _single_task_run(stages: Stages, hyperparameters: Mapping[str, Any]) -> Outcome:
    planned = _single_task_stages(stages, hyperparameters)
    for stage in planned:
        stages.train(stage.stage, stage.method, stage.hyperparameters)
    return Outcome(task_stages=tuple(stage.stage for stage in planned))


SINGLE_TASK_PROTOCOL = MultiStage(plan=_single_task_stages, run=_single_task_run)
"""Single-task learning as a table row: one run per task (stage "task_<t>"); task t's columns from run t."""

register("equal", equal, label="Equal weights", aliases=("ew", "equal_weight", "equal_weights", "equal_weighting", "equally_weighted"))
register("single_task", single_task, label="Single task", aliases=("stl", "single", "single_task_learning"),
         protocol=SINGLE_TASK_PROTOCOL)
