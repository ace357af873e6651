"""CosReg as a method: equal task weights plus the orthogonal-gradient penalty on the last shared layer."""

from __future__ import annotations

from typing import Any, Literal

import jax

from orthojax.cosreg import IMPLEMENTATIONS, _check_alpha, loss_with_cosreg, loss_with_cosreg_split
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["COSREG_IMPLEMENTATIONS", "cosreg"]

COSREG_IMPLEMENTATIONS = ("auto", "split") + IMPLEMENTATIONS
"""``"auto"``: ``"split"`` when the problem has ``encode`` / ``decode``, else ``"fast"``."""


def cosreg(
    alpha: float = 10.0,
    *,
    scale_alpha_by_loss: bool = False,
    implementation: Literal["auto", "split", "fast", "reference"] = "auto",
) -> Method:
    """Minimises sum_t L_t + alpha * ||C - I||_F^2 / (T (T - 1)) (see :func:`orthojax.loss_with_cosreg`).

    The cosines are taken on ``problem.last_shared`` and the penalty is differentiated through the task
    gradients.

    Args:
      alpha: penalty weight, >= 0 (10 on NYUv2 / SUN RGB-D; 10 or 0.1 with BatchNorm on MultiDigitMNIST).
      scale_alpha_by_loss: multiply alpha by stop_gradient(mean task loss) (the paper's NYUv2 variant).
      implementation: how the exact gradient is built: ``"split"`` (:func:`orthojax.loss_with_cosreg_split`
        over ``problem.encode`` / ``problem.decode``: work linear in T), ``"fast"`` or ``"reference"``
        (:func:`orthojax.loss_with_cosreg` on ``problem.task_losses``), or ``"auto"`` (the default:
        ``"split"`` when the problem has an encoder/decoder split, else ``"fast"``). All give the same
        gradient up to float rounding.

    Metrics: "cosine" (T, T), "penalty" (before alpha).

    Raises:
      ValueError: negative alpha, an unknown ``implementation``; at the first step, ``"split"`` on a
        problem without ``encode`` / ``decode``.
    """
    _check_alpha(alpha)
    if implementation not in COSREG_IMPLEMENTATIONS:
        raise ValueError(f"cosreg: implementation must be one of {COSREG_IMPLEMENTATIONS}; got {implementation!r}")

    def init(params: PyTree, num_tasks: int) -> tuple:
        if num_tasks < 2:
            raise ValueError(f"cosreg needs at least 2 tasks; got {num_tasks}")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        has_split = problem.encode is not None and problem.decode is not None
        chosen = ("split" if has_split else "fast") if implementation == "auto" else implementation
        kwargs = dict(wrt=problem.last_shared, alpha=alpha, scale_alpha_by_loss=scale_alpha_by_loss, has_aux=True)
        if chosen == "split":
            if not has_split:
                raise ValueError("cosreg: implementation='split' needs a problem with encode and decode")

            def objective(p):
                return loss_with_cosreg_split(
                    lambda q: problem.encode(q, batch, rng),
                    lambda q, zs, extras: problem.decode(q, zs, extras, batch, rng),
                    p, **kwargs,
                )
        else:
            def objective(p):
                return loss_with_cosreg(
                    lambda q: task_losses_and_aux(problem, q, batch, rng), p, implementation=chosen, **kwargs
                )

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        metrics = {"cosine": aux.cosine, "penalty": aux.penalty}
        return MethodStep(grads, state, loss, aux.task_losses, aux.aux, metrics)

    return Method(name="cosreg", init=init, step=step)

register("cosreg", cosreg, label="CosReg", aliases=("cos_reg",))
