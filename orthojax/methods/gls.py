"""Geometric Loss Strategy (GLS): minimise the geometric mean of the task losses.

    GLS(theta) = (prod_t L_t)^(1/T) = exp( (1/T) sum_t log L_t ),

    dGLS/dtheta = sum_t w_t dL_t/dtheta,   w_t = GLS / (T L_t) = exp( mean_s log L_s - log L_t ) / T.

The product is never formed: with many tasks or very small / large losses it under- or overflows (in
float32, 1e-3 ** 13 is already 0), while the log form above is exact to rounding whenever every L_t is a
positive finite number. The weights w_t (held constant, ``stop_gradient``) are formed the same way, so a
step costs one forward and one backward pass.

GLS is defined for positive losses. A zero loss makes GLS 0 and its gradient undefined (the derivative of
L_t^(1/T) at 0 is infinite for T > 1): the loss is then 0, that task's weight NaN (the others' 0) and the
gradients NaN, as in the reference implementation, so a training loop that checks for non-finite values
stops; a negative loss gives NaN as well.

References:
  Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and Geometric
  Loss Strategy for Multi-Task Learning", CVPR Workshops 2019. Reference code: LibMTL
  (median-research-group/LibMTL), LibMTL/weighting/GLS.py.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks, task_losses_and_aux
from orthojax.methods.registry import register

PyTree = Any

__all__ = ["geometric_mean_and_weights", "gls"]


def geometric_mean_and_weights(losses: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The geometric mean of positive task losses and its gradient with respect to them, in log form.

    Args:
      losses: (T,) positive losses L_t (any floating dtype).

    Returns:
      ``(gls, weights)``: gls = exp(mean_t log L_t) (a scalar) and weights (T,) w_t = dgls/dL_t =
      exp(mean_s log L_s - log L_t) / T, both in the dtype of ``losses``. A zero loss gives gls = 0, a NaN
      weight for that task and 0 for the others; a negative loss gives NaN.
    """
    log_l = jnp.log(losses)
    mean_log = jnp.mean(log_l)
    return jnp.exp(mean_log), jnp.exp(mean_log - log_l) / losses.shape[0]


def gls() -> Method:
    """Geometric Loss Strategy: minimises (prod_t L_t)^(1/T), computed as exp(mean_t log L_t).

    No hyper-parameters; the state is empty. Requires positive task losses (see the module docstring for
    what a zero or negative loss does).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "gls". ``MethodStep.loss`` is the geometric mean;
      metrics: "task_weights" (T,) w_t = GLS / (T L_t), the weights of the task gradients in the update.

    Example:
      >>> method = gls()
      >>> out = method.step(problem, params, method.init(params, 3), batch, rng)

    References:
      Chennupati et al., "MultiNet++", CVPR Workshops 2019; LibMTL/weighting/GLS.py.
    """

    def init(params: PyTree, num_tasks: int) -> tuple:
        _check_num_tasks(num_tasks, "gls")
        return ()

    def step(problem: MultiTaskProblem, params: PyTree, state: tuple, batch: Any, rng: jax.Array) -> MethodStep:
        losses, pullback, aux = jax.vjp(lambda p: task_losses_and_aux(problem, p, batch, rng), params, has_aux=True)
        value, w = geometric_mean_and_weights(jax.lax.stop_gradient(losses))
        (grads,) = pullback(w)
        return MethodStep(grads, state, value, losses, aux, {"task_weights": w})

    return Method(name="gls", init=init, step=step)


register("gls", gls, label="GLS", aliases=("geometric_loss", "geometric_loss_strategy"))
