"""CosReg: the orthogonal task-gradient regulariser (Suteu & Guo), as pure functions.

With g_t the gradient of task t's loss w.r.t. the last shared layer and u_t = g_t / ||g_t||, the cosine
matrix is C = U U^T (U has rows u_t) and the penalty is

    P = ||C - I||_F^2 / (T (T - 1)) = mean_{i != j} cos^2(g_i, g_j)  in [0, 1].

The regularised objective is  sum_t w_t L_t + alpha * P , differentiated through the per-task gradients
(a second-order derivative), which is what makes the penalty reach the encoder and the decoders.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from orthojax.jacobian import task_jacobian
from orthojax.select import Selector

PyTree = Any

__all__ = ["CosRegAux", "cosine_matrix", "cosreg_penalty", "penalty_from_cosine", "loss_with_cosreg"]


def _task_matrix(task_grads: PyTree) -> jax.Array:
    """Stacks a (T, ...) array or a pytree of (T, ...) leaves into a (T, P) matrix."""
    leaves = jax.tree.leaves(task_grads)
    if not leaves:
        raise ValueError("task_grads is empty: expected a (T, ...) array or a pytree of (T, ...) arrays")
    sizes = {leaf.shape[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"every leaf of task_grads needs the same leading task axis T; got leading sizes "
            f"{sorted(str(s) for s in sizes)}"
        )
    (num_tasks,) = sizes
    if num_tasks == 0:
        raise ValueError("task_grads has an empty task axis (T = 0); expected T >= 1 task gradients")
    dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
    return jnp.concatenate([jnp.reshape(leaf, (num_tasks, -1)).astype(dtype) for leaf in leaves], axis=1)


def cosine_matrix(task_grads: PyTree) -> jax.Array:
    """The T x T matrix of cosines between task gradients.

    C_ij = <g_i, g_j> / (||g_i|| ||g_j||), where task t's vector g_t concatenates its flattened leaves.
    A task whose gradient is exactly zero gets cosine 0 with every task (its diagonal entry included);
    values and gradients stay finite there.

    Args:
      task_grads: a (T, ...) array, or a pytree whose leaves all have the leading task axis T.

    Returns:
      (T, T) array, in float32 or wider.
    """
    matrix = _task_matrix(task_grads)
    squared_norms = jnp.sum(matrix * matrix, axis=1)
    nonzero = squared_norms > 0
    inverse_norms = jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, squared_norms, 1.0)), 0.0)
    units = matrix * inverse_norms[:, None]
    return units @ units.T


def penalty_from_cosine(cosine: jax.Array) -> jax.Array:
    """||C - I||_F^2 / (T (T - 1)) computed from the off-diagonal entries of a T x T cosine matrix."""
    num_tasks = cosine.shape[0]
    if cosine.ndim != 2 or cosine.shape[1] != num_tasks:
        raise ValueError(f"cosine must be a square (T, T) matrix; got shape {cosine.shape}")
    if num_tasks < 2:
        raise ValueError(f"CosReg needs at least 2 tasks; got T = {num_tasks}")
    off_diagonal = cosine * (1.0 - jnp.eye(num_tasks, dtype=cosine.dtype))
    return jnp.sum(off_diagonal * off_diagonal) / (num_tasks * (num_tasks - 1))


def _check_num_tasks(task_grads: PyTree) -> None:
    leaves = jax.tree.leaves(task_grads)
    if leaves and jnp.ndim(leaves[0]) and leaves[0].shape[0] < 2:
        raise ValueError(f"CosReg needs at least 2 tasks; got T = {leaves[0].shape[0]}")


def cosreg_penalty(task_grads: PyTree) -> jax.Array:
    """The CosReg penalty ||C - I||_F^2 / (T (T - 1)) in [0, 1] (before alpha).

    0 when the task gradients are mutually orthogonal, 1 when they are all parallel or antiparallel.

    Args:
      task_grads: a (T, ...) array or a pytree of (T, ...) arrays, T >= 2.

    Raises:
      ValueError: T < 2.
    """
    _check_num_tasks(task_grads)
    return penalty_from_cosine(cosine_matrix(task_grads))


class CosRegAux(NamedTuple):
    """What :func:`loss_with_cosreg` returns beside the total loss.

    Attributes:
      task_losses: (T,) the task losses L_t (this device's, under ``axis_name``).
      cosine: (T, T) cosine matrix of the per-task gradients (global batch under ``axis_name``).
      penalty: scalar ||C - I||_F^2 / (T (T - 1)), before alpha.
      aux: the user's aux (``has_aux=True``), else None.
    """

    task_losses: jax.Array
    cosine: jax.Array
    penalty: jax.Array
    aux: Any = None


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, numbers.Real) and not alpha >= 0:
        raise ValueError(f"alpha must be a non-negative number; got {alpha!r}")


def _task_weights(weights: Optional[jax.Array], num_tasks: int, dtype: Any) -> jax.Array:
    if weights is None:
        return jnp.ones((num_tasks,), dtype)
    weights = jnp.asarray(weights, dtype)
    if weights.shape != (num_tasks,):
        raise ValueError(f"weights must have shape ({num_tasks},), one per task; got {weights.shape}")
    return weights


def loss_with_cosreg(
    task_losses_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    wrt: Selector,
    alpha: float | jax.Array,
    weights: Optional[jax.Array] = None,
    scale_alpha_by_loss: bool = False,
    has_aux: bool = False,
    axis_name: Any = None,
) -> tuple[jax.Array, CosRegAux]:
    """The multi-task loss with the CosReg penalty: sum_t w_t L_t + alpha * ||C - I||_F^2 / (T (T - 1)).

    C is the cosine matrix of the per-task gradients w.r.t. the subtree ``wrt`` selects (the last layer of
    the shared encoder in the paper). The gradients come from one forward pass and T vmapped VJPs, and the
    penalty is differentiated through them, so ``jax.grad`` of the total is exact to second order and the
    penalty reaches every layer that influences those gradients (the encoder below ``wrt`` and all
    decoders).

    Args:
      task_losses_fn: ``fn(params, *args) -> losses`` of shape (T,) (or ``(losses, aux)`` with ``has_aux``).
      params: the parameter pytree (plain dict, Flax Linen variables, ``nnx.State``).
      *args: further arguments of ``task_losses_fn`` (batch, RNG, ...).
      wrt: selector of the layer whose task gradients are decorrelated (see :mod:`orthojax.select`).
      alpha: penalty weight, >= 0 (10 in the paper's NYUv2 and SUN RGB-D runs).
      weights: optional (T,) task weights w_t (default 1: CosReg never rescales tasks).
      scale_alpha_by_loss: multiply alpha by stop_gradient(mean_t L_t) (the paper's NYUv2 variant).
      has_aux: whether ``task_losses_fn`` returns ``(losses, aux)``.
      axis_name: under ``pmap`` / ``shard_map``, the data axis: per-task gradients (and the mean loss used
        by ``scale_alpha_by_loss``) are averaged over it *before* the cosines, so the penalty is the global
        batch's. The task losses in the total stay local, so the usual ``lax.pmean`` of the final
        gradients gives the global-batch gradient.

    Returns:
      ``(total, CosRegAux(task_losses, cosine, penalty, aux))``.

    Example:
      >>> def task_losses(params, batch):
      ...     outs = model.apply({"params": params}, batch["image"])
      ...     return jnp.stack([xent(outs[0], batch["label"][:, 0]), xent(outs[1], batch["label"][:, 1])])
      >>> (total, aux), grads = jax.value_and_grad(loss_with_cosreg, argnums=1, has_aux=True)(
      ...     task_losses, params, batch, wrt="encoder/conv2", alpha=10.0)

    References:
      Suteu & Guo, "Regularizing Deep Multi-Task Networks using Orthogonal Gradients", eq. (5).
    """
    _check_alpha(alpha)
    losses, jacobian, aux, _ = task_jacobian(
        task_losses_fn, params, *args, wrt=wrt, has_aux=has_aux, axis_name=axis_name
    )
    mean_loss = jnp.mean(losses)
    if axis_name is not None:
        jacobian, mean_loss = jax.lax.pmean((jacobian, mean_loss), axis_name)
    cosine = cosine_matrix(jacobian)
    penalty = penalty_from_cosine(cosine)
    weights = _task_weights(weights, losses.shape[0], losses.dtype)
    effective_alpha = alpha * jax.lax.stop_gradient(mean_loss) if scale_alpha_by_loss else alpha
    total = jnp.dot(weights, losses) + effective_alpha * penalty
    return total, CosRegAux(task_losses=losses, cosine=cosine, penalty=penalty, aux=aux)
