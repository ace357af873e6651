"""CosReg as a method: equal task weights plus the orthogonal-gradient penalty on the last shared layer."""

from __future__ import annotations

from typing import Any

import jax

from orthojax.cosreg import _check_alpha, loss_with_cosreg
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux

PyTree = Any

__all__ = ["cosreg"]


def cosreg(alpha: float = 10.0, *, scale_alpha_by_loss: bool = False) -> Method:
    """Minimises sum_t L_t + alpha * ||C - I||_F^2 / (T (T - 1)) (see :func:`orthojax.loss_with_cosreg`).

    The cosines are taken on ``problem.last_shared`` and the penalty is differentiated through the task
    gradients.

    Args:
      alpha: penalty weight, >= 0 (10 on NYUv2 / SUN RGB-D; 10 or 0.1 with BatchNorm on MultiDigitMNIST).
      scale_alpha_by_loss: multiply alpha by stop_gradient(mean task loss) (the paper's NYUv2 variant).

    Metrics: "cosine" (T, T), "penalty" (before alpha).
    """
    _check_alpha(alpha)

    def init(params: PyTree, num_tasks: int) -> tuple:
        if num_tasks < 2:
            raise ValueError(f"cosreg needs at least 2 tasks; got {num_tasks}")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        def losses_fn(p):
            return task_losses_and_aux(problem, p, batch, rng)

        def objective(p):
            return loss_with_cosreg(
                losses_fn, p, wrt=problem.last_shared, alpha=alpha,
                scale_alpha_by_loss=scale_alpha_by_loss, has_aux=True,
            )

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        metrics = {"cosine": aux.cosine, "penalty": aux.penalty}
        return MethodStep(grads, state, loss, aux.task_losses, aux.aux, metrics)

    return Method(name="cosreg", init=init, step=step)
