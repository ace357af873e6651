"""CosReg: the orthogonal task-gradient regulariser (Suteu & Guo), as pure functions.

With g_t the gradient of task t's loss w.r.t. the last shared layer and u_t = g_t / ||g_t||, the cosine
matrix is C = U U^T (U has rows u_t) and the penalty is

    P = ||C - I||_F^2 / (T (T - 1)) = mean_{i != j} cos^2(g_i, g_j)  in [0, 1].

The regularised objective is  sum_t w_t L_t + alpha * P , differentiated through the per-task gradients
(a second-order derivative), which is what makes the penalty reach the encoder and the decoders.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from orthojax import second_order
from orthojax.jacobian import task_jacobian
from orthojax.select import Selector, leaf_paths, make_selection

PyTree = Any

__all__ = [
    "IMPLEMENTATIONS", "CosRegAux", "cosine_matrix", "cosreg_penalty", "penalty_from_cosine", "loss_with_cosreg",
    "loss_with_cosreg_split",
]

IMPLEMENTATIONS = ("fast", "reference")
"""How :func:`loss_with_cosreg` builds its gradient: ``"fast"`` (reverse over forward, exact first
derivative; see :mod:`orthojax.second_order`) or ``"reference"`` (``jax.grad`` through ``jax.vjp``:
the straightforward formulation, exact to every order, slower)."""


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
    values and gradients stay finite there. Scale-safe: each row is divided by its largest magnitude (a
    constant under differentiation; cosines do not depend on it) before any product, so gradients whose
    norms are tiny (1e-30) or huge (1e30) neither flush to zero nor overflow in float32, and C is
    unchanged when a task's gradient is multiplied by any positive float32 factor.

    Args:
      task_grads: a (T, ...) array, or a pytree whose leaves all have the leading task axis T.

    Returns:
      (T, T) array, in float32 or wider.
    """
    matrix = _task_matrix(task_grads)
    magnitude = jax.lax.stop_gradient(jnp.max(jnp.abs(matrix), axis=1, keepdims=True))
    matrix = matrix / jnp.where(magnitude > 0, magnitude, 1.0)
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
    """alpha: a real >= 0, or a scalar array (checked for sign and finiteness when concrete)."""
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) or hasattr(alpha, "dtype")):
        raise TypeError(f"alpha must be a real number or a scalar array; got {type(alpha).__name__} {alpha!r}")
    if isinstance(alpha, numbers.Real):
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite non-negative number; got {alpha!r}")
        return
    if jnp.ndim(alpha) != 0:
        raise ValueError(f"alpha must be a scalar; got an array of shape {jnp.shape(alpha)}")
    if not jnp.issubdtype(jnp.result_type(alpha), jnp.number) or jnp.issubdtype(jnp.result_type(alpha), jnp.bool_):
        raise TypeError(f"alpha must be a real number; got dtype {jnp.result_type(alpha)}")
    if not isinstance(alpha, jax.core.Tracer):
        value = float(alpha)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"alpha must be a finite non-negative number; got {value}")


def _checked_selection(params: PyTree, wrt: Selector):
    """The selection of ``wrt``, whose leaves must all be floating point."""
    selection = make_selection(params, wrt)
    bad = [(i, leaf) for i, leaf in zip(selection.indices, selection.selected)
           if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    if bad:
        paths = leaf_paths(params)
        shown = ", ".join(f"{paths[i]} ({jnp.result_type(leaf)})" for i, leaf in bad[:3])
        raise ValueError(
            f"wrt={wrt!r} selects leaves that are not floating point: {shown}{', ...' if len(bad) > 3 else ''}; "
            "select only the layer's weights (a narrower path such as '.../kernel', a predicate, or for NNX "
            "the Param state: nnx.split(model, nnx.Param, ...))"
        )
    return selection


def _task_weights(weights: Optional[jax.Array], num_tasks: int, dtype: Any) -> jax.Array:
    if weights is None:
        return jnp.ones((num_tasks,), dtype)
    weights = jnp.asarray(weights, dtype)
    if weights.shape != (num_tasks,):
        raise ValueError(f"weights must have shape ({num_tasks},), one per task; got {weights.shape}")
    return weights


def _penalty_and_cosine(jacobian: list) -> tuple[jax.Array, jax.Array]:
    cosine = cosine_matrix(jacobian)
    return penalty_from_cosine(cosine), cosine


def _check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")


def _total(terms: second_order.PenaltyTerms, alpha, weights, scale_alpha_by_loss, axis_name):
    losses = terms.losses
    mean_loss = jnp.mean(losses)
    if axis_name is not None and scale_alpha_by_loss:
        mean_loss = jax.lax.pmean(mean_loss, axis_name)
    weights = _task_weights(weights, losses.shape[0], losses.dtype)
    effective_alpha = alpha * jax.lax.stop_gradient(mean_loss) if scale_alpha_by_loss else alpha
    penalty = jax.lax.stop_gradient(terms.penalty) + terms.penalty_surrogate
    total = jnp.dot(weights, losses) + effective_alpha * penalty
    return total, CosRegAux(task_losses=losses, cosine=terms.cosine, penalty=terms.penalty, aux=terms.aux)


def _reference_terms(task_losses_fn, params, args, wrt, has_aux, axis_name) -> second_order.PenaltyTerms:
    """The straightforward formulation: P of the vmapped VJPs, differentiated by reverse over reverse."""
    losses, jacobian, aux, _ = task_jacobian(
        task_losses_fn, params, *args, wrt=wrt, has_aux=has_aux, axis_name=axis_name
    )
    if axis_name is not None:
        jacobian = jax.lax.pmean(jacobian, axis_name)
    cosine = cosine_matrix(jacobian)
    penalty = penalty_from_cosine(cosine)
    surrogate = penalty - jax.lax.stop_gradient(penalty)  # value 0, the penalty's gradient
    return second_order.PenaltyTerms(
        losses, jax.lax.stop_gradient(cosine), jax.lax.stop_gradient(penalty), surrogate, aux)


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
    implementation: str = "fast",
) -> tuple[jax.Array, CosRegAux]:
    """The multi-task loss with the CosReg penalty: sum_t w_t L_t + alpha * ||C - I||_F^2 / (T (T - 1)).

    C is the cosine matrix of the per-task gradients w.r.t. the subtree ``wrt`` selects (the last layer of
    the shared encoder in the paper). The gradients come from one forward pass and T vmapped VJPs, and the
    penalty is differentiated through them, so ``jax.grad`` of the total is exact and the penalty reaches
    every layer that influences those gradients (the encoder below ``wrt`` and all decoders).

    ``implementation="fast"`` (the default) builds the second-order term by reverse over forward
    differentiation (:mod:`orthojax.second_order`): ``jax.grad``, ``jax.value_and_grad`` and ``jax.jvp`` of
    the total are exact, derivatives of order two and higher of the total are not.
    ``implementation="reference"`` differentiates through the vmapped VJPs (reverse over reverse): exact to
    every order (a Hessian of the regularised loss), slower. For a model split into an encoder and
    per-task decoders, :func:`loss_with_cosreg_split` is faster still (work linear in T).

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
      implementation: ``"fast"`` or ``"reference"`` (see above).

    Returns:
      ``(total, CosRegAux(task_losses, cosine, penalty, aux))``; ``cosine`` and ``penalty`` are constants
      (their gradient reaches ``params`` through ``total`` only).

    Raises:
      ValueError: alpha negative, not finite or not a scalar; an unknown ``implementation``; losses that
        are not a (T,) vector; T < 2; ``wrt`` selecting non-floating-point leaves.
      TypeError: alpha not a number; with ``"fast"``, a ``jax.custom_vjp`` function in the model (forward
        mode cannot go through it: use ``"reference"``).
      KeyError: ``wrt`` names no parameter.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"encoder": {"w": jnp.eye(3, 4) + 0.1}, "heads": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)}
      >>> def task_losses(params, x, y):                     # -> (T,) = (2,)
      ...     predictions = jnp.tanh(x @ params["encoder"]["w"]) @ params["heads"]
      ...     return jnp.mean((predictions - y) ** 2, axis=0)
      >>> x, y = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3), jnp.ones((8, 2))
      >>> (total, aux), grads = jax.value_and_grad(loss_with_cosreg, argnums=1, has_aux=True)(
      ...     task_losses, params, x, y, wrt="encoder/w", alpha=10.0)
      >>> aux.cosine.shape, grads["encoder"]["w"].shape
      ((2, 2), (3, 4))

    References:
      Suteu & Guo, "Regularizing Deep Multi-Task Networks using Orthogonal Gradients", eq. (5).
    """
    _check_alpha(alpha)
    _check_implementation(implementation)
    selection = _checked_selection(params, wrt)
    if implementation == "reference":
        terms = _reference_terms(task_losses_fn, params, args, wrt, has_aux, axis_name)
    else:
        terms = second_order.generic_objective(
            task_losses_fn, selection, args, wrt=wrt,
            penalty_fn=_penalty_and_cosine, has_aux=has_aux, axis_name=axis_name,
        )
    return _total(terms, alpha, weights, scale_alpha_by_loss, axis_name)


def loss_with_cosreg_split(
    encode_fn: Callable[..., Any],
    decode_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    wrt: Selector,
    alpha: float | jax.Array,
    weights: Optional[jax.Array] = None,
    scale_alpha_by_loss: bool = False,
    has_aux: bool = False,
    axis_name: Any = None,
) -> tuple[jax.Array, CosRegAux]:
    """:func:`loss_with_cosreg` for a model split into a shared encoder and one decoder per task.

    The same value and the same exact gradient, with less work: one backward pass of the decoders gives
    every task's representation gradient, and one forward-mode pass in which decoder t carries only task
    t's tangent gives the second-order term, so the cost grows linearly in T (see
    :mod:`orthojax.second_order`).

    Args:
      encode_fn: ``encode_fn(params, *args) -> (zs, extras)``: ``zs`` a sequence of T arrays, task t's
        representation (the same array T times for a fully shared encoder); ``extras`` whatever else the
        decoders take (pooling indices, skip features of layers below ``wrt``, None).
      decode_fn: ``decode_fn(params, zs, extras, *args) -> losses`` (T,) (or ``(losses, aux)`` with
        ``has_aux``). Contract: L_t depends on the selected layer only through ``zs[t]`` (true of
        hard-parameter-sharing models whose decoder t reads only ``zs[t]`` and whose ``extras`` do not
        depend differentiably on ``wrt``); otherwise use :func:`loss_with_cosreg`.
      params, *args, wrt, alpha, weights, scale_alpha_by_loss, has_aux, axis_name: as in
        :func:`loss_with_cosreg`.

    Checked at trace time (no run-time cost) with the jaxpr dependency pass of :mod:`orthojax.jacobian`:
    when decoder t may read ``zs[s]`` (s != t), the decoders read ``wrt`` directly, or the losses read
    floating-point ``extras`` that depend on ``wrt``, a :class:`orthojax.second_order.SplitContractWarning`
    is issued and the generic fast path (:func:`loss_with_cosreg`) computes the same objective instead.

    Derivatives: the value and the first derivative are exact; derivatives of order two and higher of
    the total are not (see :mod:`orthojax.second_order`); for those use :func:`loss_with_cosreg` with
    ``implementation="reference"`` on the whole model.

    Returns:
      ``(total, CosRegAux(task_losses, cosine, penalty, aux))``.

    Raises:
      ValueError: as :func:`loss_with_cosreg`; ``encode_fn`` not returning ``(zs, extras)`` with ``zs`` a
        sequence of T arrays, one per task loss.
      TypeError: a ``jax.custom_vjp`` function in the model (use ``loss_with_cosreg(...,
        implementation="reference")``).

    Example (the model of :func:`loss_with_cosreg`'s example, split after the encoder):
      >>> import jax, jax.numpy as jnp
      >>> params = {"encoder": {"w": jnp.eye(3, 4) + 0.1}, "heads": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)}
      >>> x, y = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3), jnp.ones((8, 2))
      >>> def encode(p, x, y):                               # -> (zs: one representation per task, extras)
      ...     z = jnp.tanh(x @ p["encoder"]["w"])
      ...     return (z, z), None
      >>> def decode(p, zs, extras, x, y):                   # -> (T,); task t reads zs[t] only
      ...     return jnp.stack([jnp.mean((zs[t] @ p["heads"][:, t] - y[:, t]) ** 2) for t in range(2)])
      >>> (total, aux), grads = jax.value_and_grad(loss_with_cosreg_split, argnums=2, has_aux=True)(
      ...     encode, decode, params, x, y, wrt="encoder/w", alpha=10.0)
      >>> aux.cosine.shape
      (2, 2)
    """
    _check_alpha(alpha)
    terms = second_order.split_objective(
        encode_fn, decode_fn, params, _checked_selection(params, wrt), args, wrt=wrt,
        penalty_fn=_penalty_and_cosine, has_aux=has_aux, axis_name=axis_name,
    )
    return _total(terms, alpha, weights, scale_alpha_by_loss, axis_name)
