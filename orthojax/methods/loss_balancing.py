"""Loss-space task weighting: Dynamic Weight Average (DWA) and FAMO.

Both differentiate sum_t w_t L_t with weights w computed from the history of the task losses alone (no
per-task gradients: the cost of one backward pass). The weights are held constant (``stop_gradient``).
The states are in the parameters' floating dtype, promoted to at least float32 (float64 under x64).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.methods.gradnorm import copy_leaves, param_dtype
from orthojax.methods.registry import RunContext, register

PyTree = Any

__all__ = ["DWAState", "FAMOState", "dwa", "dwa_weights", "famo"]


def _check_positive(value: Any, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: {what} must be a positive number; got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {what} must be a finite positive number; got {value!r}")
    return float(value)


def _check_nonneg(value: Any, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: {what} must be a non-negative number; got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {what} must be a finite non-negative number; got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------------------
# DWA
# --------------------------------------------------------------------------------------------------------------


class DWAState(NamedTuple):
    """DWA state.

    Attributes:
      running_sum: (T,) sum of the task losses in the current period.
      count: steps taken in the current period.
      last: (T,) mean task losses of the last completed period, L(k-1).
      before_last: (T,) mean task losses of the period before, L(k-2).
      periods: number of completed periods.
    """

    running_sum: jax.Array
    count: jax.Array
    last: jax.Array
    before_last: jax.Array
    periods: jax.Array


def dwa_weights(last: jax.Array, before_last: jax.Array, temperature: float = 2.0) -> jax.Array:
    """DWA weights from two consecutive average task losses.

    w_t = T exp(r_t / tau) / sum_i exp(r_i / tau), r_t = L_t(k-1) / L_t(k-2) (r_t = 1 where L_t(k-2) = 0).
    The weights sum to T; tasks whose loss decreases slowly get more weight.

    References:
      Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019.
    """
    ok = before_last > 0
    ratio = jnp.where(ok, last / jnp.where(ok, before_last, 1), 1.0)
    return last.shape[0] * jax.nn.softmax(ratio / temperature)


def dwa(temperature: float = 2.0, period: int = 1) -> Method:
    """Dynamic Weight Average: minimises sum_t w_t L_t with w from the rate of decrease of each loss.

    The losses are averaged over periods of ``period`` steps (the paper: one epoch; set ``period`` to the
    number of steps per epoch to reproduce it; 1 uses the losses of single steps). Weights are 1 until two
    periods are complete, then :func:`dwa_weights` of the last two period averages.

    Args:
      temperature: softmax temperature tau, > 0 (2 in the paper).
      period: steps per averaging period, >= 1.

    Metrics: "task_weights" (T,).

    References:
      Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019.
    """
    temperature = _check_positive(temperature, "temperature", "dwa")
    if not isinstance(period, (int, np.integer)) or isinstance(period, bool) or period < 1:
        raise ValueError(f"dwa: period must be a positive integer; got {period!r}")

    def init(params: PyTree, num_tasks: int) -> DWAState:
        if num_tasks < 1:
            raise ValueError(f"dwa needs at least one task; got {num_tasks}")
        dtype = param_dtype(params)
        # one array per field: a state whose fields share a buffer cannot be donated to a compiled step
        return DWAState(
            running_sum=jnp.zeros((num_tasks,), dtype),
            count=jnp.zeros((), jnp.int32),
            last=jnp.zeros((num_tasks,), dtype),
            before_last=jnp.zeros((num_tasks,), dtype),
            periods=jnp.zeros((), jnp.int32),
        )

    def step(problem: MultiTaskProblem, params: PyTree, state: DWAState, batch: Any, rng: jax.Array) -> MethodStep:
        w = jnp.where(
            state.periods >= 2,
            dwa_weights(state.last, state.before_last, temperature),
            jnp.ones_like(state.last),
        )

        def objective(p):
            losses, aux = task_losses_and_aux(problem, p, batch, rng)
            return jnp.dot(w.astype(losses.dtype), losses), (losses, aux)

        (loss, (losses, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        running = state.running_sum + jax.lax.stop_gradient(losses).astype(state.running_sum.dtype)
        count = state.count + 1
        done = count >= period
        mean = running / period
        new_state = DWAState(
            running_sum=jnp.where(done, jnp.zeros_like(running), running),
            count=jnp.where(done, 0, count),
            last=jnp.where(done, mean, state.last),
            before_last=jnp.where(done, state.last, state.before_last),
            periods=state.periods + done.astype(jnp.int32),
        )
        return MethodStep(grads, new_state, loss, losses, aux, {"task_weights": w})

    return Method(name="dwa", init=init, step=step)


# --------------------------------------------------------------------------------------------------------------
# FAMO
# --------------------------------------------------------------------------------------------------------------


class FAMOState(NamedTuple):
    """FAMO state.

    Attributes:
      logits: (T,) task logits xi; the task distribution is z = softmax(xi).
      opt_state: the state of the logits' optimiser (Adam with L2 weight decay).
      prev_losses: (T,) task losses of the previous step.
      has_prev: whether ``prev_losses`` holds a previous step's losses.
    """

    logits: jax.Array
    opt_state: PyTree
    prev_losses: jax.Array
    has_prev: jax.Array


def famo(w_lr: float = 0.025, gamma: float = 0.01, min_losses: Any = 0.0, eps: float = 1e-8) -> Method:
    """FAMO: Fast Adaptive Multitask Optimization, balancing the tasks' log-loss decrease at O(1) cost.

    With D_t = L_t - min_t + eps and z = softmax(xi), the model minimises sum_t (z_t / c) log D_t,
    c = sum_t z_t / D_t held constant, i.e. sum_t w_t L_t with w_t = (z_t / D_t) / c (the weights sum to 1).
    The logits learn from the observed decrease of the log losses between consecutive steps,
    delta_t = log D_t(previous step) - log D_t(this step): their gradient is the softmax Jacobian applied to
    delta, grad_xi = z * (delta - <z, delta>), followed by Adam (learning rate ``w_lr``) with L2 weight decay
    ``gamma`` (torch ``Adam(weight_decay=gamma)``). The logit update happens at the start of each step, before
    the weights of that step are formed; the first step uses xi = 0 (uniform z).

    Deviation from the reference code: it re-evaluates the losses on the same batch after the model's
    update (one extra forward pass); here the decrease is measured between consecutive steps' batches, so the
    method needs no extra pass and fits the ``step`` convention (with a fixed batch both agree).

    Args:
      w_lr: learning rate of the logits, > 0 (0.025 in the reference implementation).
      gamma: L2 weight decay of the logits, >= 0 (0.01 in the reference implementation).
      min_losses: the losses' lower bounds min_t (a scalar or (T,)); 0 for non-negative losses.
      eps: added to L_t - min_t before the logarithm, > 0.

    Metrics: "task_weights" (T,) (w above), "task_probs" (T,) (z).

    References:
      Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
    """
    w_lr = _check_positive(w_lr, "w_lr", "famo")
    gamma = _check_nonneg(gamma, "gamma", "famo")
    eps = _check_positive(eps, "eps", "famo")
    min_arr = np.asarray(min_losses, dtype=np.float64)
    if min_arr.ndim > 1 or not np.all(np.isfinite(min_arr)):
        raise ValueError(f"famo: min_losses must be a finite scalar or (T,) vector; got {min_losses!r}")
    optimizer = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))

    def init(params: PyTree, num_tasks: int) -> FAMOState:
        if num_tasks < 1:
            raise ValueError(f"famo needs at least one task; got {num_tasks}")
        if min_arr.ndim == 1 and min_arr.shape[0] != num_tasks:
            raise ValueError(f"famo: got {min_arr.shape[0]} min_losses for {num_tasks} tasks")
        dtype = param_dtype(params)
        logits = jnp.zeros((num_tasks,), dtype)
        return FAMOState(logits, copy_leaves(optimizer.init(logits)), jnp.zeros((num_tasks,), dtype),
                         jnp.zeros((), bool))

    def step(problem: MultiTaskProblem, params: PyTree, state: FAMOState, batch: Any, rng: jax.Array) -> MethodStep:
        losses, pullback, aux = jax.vjp(
            lambda p: task_losses_and_aux(problem, p, batch, rng), params, has_aux=True
        )
        dtype = state.logits.dtype
        lower = jnp.asarray(min_arr, dtype)
        log_d = jnp.log(jnp.maximum(jax.lax.stop_gradient(losses).astype(dtype) - lower, 0.0) + eps)
        log_d_prev = jnp.log(jnp.maximum(state.prev_losses - lower, 0.0) + eps)
        delta = log_d_prev - log_d
        z_old = jax.nn.softmax(state.logits)
        logit_grad = z_old * (delta - jnp.dot(z_old, delta))
        updates, opt_state = optimizer.update(logit_grad, state.opt_state, state.logits)
        logits = optax.apply_updates(state.logits, updates)
        logits, opt_state = jax.tree.map(
            lambda new, old: jnp.where(state.has_prev, new, old), (logits, opt_state), (state.logits, state.opt_state)
        )

        z = jax.nn.softmax(logits)
        inv_d = z / jnp.exp(log_d)
        w = jax.lax.stop_gradient(inv_d / jnp.sum(inv_d))

        (grads,) = pullback(w.astype(losses.dtype))
        loss = jnp.dot(z, log_d) / jnp.sum(inv_d)
        new_state = FAMOState(logits, opt_state, jax.lax.stop_gradient(losses).astype(dtype), jnp.ones((), bool))
        return MethodStep(grads, new_state, loss, losses, aux, {"task_weights": w, "task_probs": z})

    return Method(name="famo", init=init, step=step)

def _dwa_period(context: RunContext) -> int:
    """DWA averages the task losses over epochs in the paper (MTAN): one period is one epoch."""
    return context.steps_per_epoch


register("dwa", dwa, label="DWA", context={"period": _dwa_period})
register("famo", famo, label="FAMO")
