"""Smooth Tchebycheff scalarisation (STCH) of the task losses, with the reference code's nadir warm-up.

The Tchebycheff scalarisation max_t lambda_t (f_t - z_t) reaches every Pareto-optimal point but is not
smooth; STCH replaces the max by its log-sum-exp smoothing with parameter mu > 0:

    g_mu(f) = mu log sum_t exp( lambda_t (f_t - z_t) / mu ),       g_mu -> max_t as mu -> 0.

For multi-task learning (the reference code, followed here): lambda_t = 1, f_t = log L_t and the
reference point is the log of a nadir estimate z_t, so each task is measured relative to its own scale:

    l_t = log(L_t / z_t + 1e-20),      objective = T mu log sum_t exp(l_t / mu).

z is not known in advance. Training runs in epochs of ``steps_per_epoch`` steps (0-based):

* epochs 0 .. warmup_epochs - 1: minimise sum_t log(L_t + 1e-20) (the log losses, equally weighted);
* epoch ``warmup_epochs``: the same objective, while z accumulates the mean of the task losses over the
  epoch's batches;
* later epochs: the STCH objective above with that z (fixed from then on).

Both objectives are sums of functions of the losses, so a step is one forward and one backward pass: the
model receives sum_t w_t grad L_t with w_t = 1 / (L_t + 1e-20) during the warm-up and
w_t = T softmax(l / mu)_t / (L_t + 1e-20 z_t) afterwards (held constant, ``stop_gradient``).

The reference code subtracts the detached max_t l_t inside the log-sum-exp; that changes the objective's
value by T max_t l_t but not its gradient. Here the loss reported is the objective itself (log-sum-exp
computed stably). A nadir component that is 0 (a task whose loss was exactly 0 over the whole nadir epoch)
makes l_t infinite and the step non-finite, as in the reference code.

References:
  Lin, Zhang, Zhang, Liu & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
  ICML 2024. Reference code: Xi-L/STCH (STCH_MTL), also LibMTL (median-research-group/LibMTL)
  LibMTL/weighting/STCH.py; defaults STCH_mu = 1.0 and STCH_warmup_epoch = 4 from LibMTL/config.py.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, _check_num_tasks, task_losses_and_aux
from orthojax.methods.gradnorm import param_dtype
from orthojax.methods.registry import RunContext, register

PyTree = Any

__all__ = ["STCHState", "stch", "stch_objective_and_weights"]

_TINY = 1e-20  # the reference code's constant inside the logarithms


class STCHState(NamedTuple):
    """State of :func:`stch`.

    Attributes:
      step: number of steps taken (the epoch is step // steps_per_epoch).
      loss_sum: (T,) sum of the task losses over the nadir epoch's steps so far.
      count: number of steps summed into ``loss_sum``.
    """

    step: jax.Array
    loss_sum: jax.Array
    count: jax.Array


def stch_objective_and_weights(losses: jax.Array, nadir: jax.Array, mu: float) -> tuple[jax.Array, jax.Array]:
    """The STCH objective of the task losses and its gradient with respect to them.

    Args:
      losses: (T,) positive task losses L_t.
      nadir: (T,) positive nadir estimates z_t.
      mu: smoothing parameter > 0.

    Returns:
      ``(value, weights)``: value = T mu log sum_t exp(l_t / mu) with l_t = log(L_t / z_t + 1e-20), and
      weights (T,) = d value / d L_t = T softmax(l / mu)_t / (L_t + 1e-20 z_t); in the dtype of ``losses``.
    """
    num_tasks = losses.shape[0]
    nadir = nadir.astype(losses.dtype)
    logs = jnp.log(losses / nadir + _TINY) / mu
    value = num_tasks * mu * jax.nn.logsumexp(logs)
    weights = num_tasks * jax.nn.softmax(logs) / (losses + _TINY * nadir)
    return value, weights


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"stch: {what} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def stch(mu: float = 1.0, warmup_epochs: int = 4, *, steps_per_epoch: int) -> Method:
    """Smooth Tchebycheff scalarisation of the log losses relative to a nadir estimate (module docstring).

    Args:
      mu: smoothing parameter mu > 0 (1.0 in the reference code and LibMTL/config.py); small mu approaches
        the (non-smooth) Tchebycheff max, large mu the mean of the log losses.
      warmup_epochs: epochs of plain log-loss training before the nadir epoch, >= 0 (4 in the reference
        code); the nadir is the mean task loss over epoch ``warmup_epochs``.
      steps_per_epoch: steps per epoch, >= 1 (the run's number of batches per epoch).

    Returns:
      A :class:`~orthojax.methods.base.Method` named "stch". ``MethodStep.loss``: sum_t log(L_t + 1e-20)
      until the nadir is fixed, then T mu log sum_t exp(l_t / mu). Metrics: "task_weights" (T,) w_t, the
      weights of the task gradients in the update; "nadir" (T,) the current nadir estimate (the running mean
      during the nadir epoch, 0 before it).

    Raises:
      TypeError / ValueError: mu not a finite real > 0; warmup_epochs not an integer >= 0; steps_per_epoch
        not an integer >= 1.

    Example:
      >>> method = stch(mu=1.0, warmup_epochs=4, steps_per_epoch=len(loader))
      >>> state = method.init(params, num_tasks=3)

    References:
      Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024;
      Xi-L/STCH STCH_MTL; LibMTL/weighting/STCH.py.
    """
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real):
        raise TypeError(f"stch: mu must be a real number; got {mu!r}")
    mu = float(mu)
    if not (mu > 0 and mu != float("inf")):
        raise ValueError(f"stch: mu must be finite and > 0; got {mu}")
    warmup_epochs = _check_int(warmup_epochs, "warmup_epochs", 0)
    steps_per_epoch = _check_int(steps_per_epoch, "steps_per_epoch", 1)

    def init(params: PyTree, num_tasks: int) -> STCHState:
        _check_num_tasks(num_tasks, "stch")
        return STCHState(jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,), param_dtype(params)),
                         jnp.zeros((), jnp.int32))

    def step(problem: MultiTaskProblem, params: PyTree, state: STCHState, batch: Any, rng: jax.Array) -> MethodStep:
        losses, pullback, aux = jax.vjp(lambda p: task_losses_and_aux(problem, p, batch, rng), params, has_aux=True)
        fixed = jax.lax.stop_gradient(losses)
        epoch = state.step // steps_per_epoch
        in_nadir_epoch = epoch == warmup_epochs
        nadir_ready = epoch > warmup_epochs

        count = jnp.maximum(state.count, 1).astype(state.loss_sum.dtype)
        nadir = state.loss_sum / count
        safe_nadir = jnp.where(nadir_ready, nadir, jnp.ones_like(nadir))
        stch_value, stch_w = stch_objective_and_weights(fixed, safe_nadir, mu)
        warm_value = jnp.sum(jnp.log(fixed + _TINY))
        warm_w = 1.0 / (fixed + _TINY)
        w = jnp.where(nadir_ready, stch_w, warm_w)
        value = jnp.where(nadir_ready, stch_value, warm_value)
        (grads,) = pullback(w)

        loss_sum = jnp.where(in_nadir_epoch, state.loss_sum + fixed.astype(state.loss_sum.dtype), state.loss_sum)
        new_count = state.count + in_nadir_epoch.astype(jnp.int32)
        running = loss_sum / jnp.maximum(new_count, 1).astype(loss_sum.dtype)
        new_state = STCHState(state.step + 1, loss_sum, new_count)
        return MethodStep(grads, new_state, value, losses, aux, {"task_weights": w, "nadir": running})

    return Method(name="stch", init=init, step=step)


def _steps_per_epoch(context: RunContext) -> int:
    """STCH's warm-up and nadir epochs are counted in the run's epochs."""
    return context.steps_per_epoch


register("stch", stch, label="STCH", aliases=("smooth_tchebycheff",), context={"steps_per_epoch": _steps_per_epoch})
