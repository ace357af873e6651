"""Per-task gradients with respect to a selected parameter subtree.

For task losses L(theta) in R^T, the Jacobian rows J_t = dL_t / d theta_sel are obtained from ONE forward
pass and T vector-Jacobian products batched with ``jax.vmap`` over the rows of the identity (the
``jax.jacrev`` pattern), restricted to the leaves that ``wrt`` selects so that the other parameters never
get a cotangent. Everything is differentiable again: ``jax.grad`` of a function of these gradients is the
exact second-order derivative.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from orthojax.select import Selector, make_selection

PyTree = Any

__all__ = ["task_gradients", "task_jacobian"]


def _split_aux(out: Any, has_aux: bool) -> tuple[jax.Array, Any]:
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("has_aux=True expects task_losses_fn to return a pair (losses, aux)")
        return out
    return out, None


def _check_losses(losses: jax.Array) -> None:
    if getattr(losses, "ndim", None) != 1:
        raise ValueError(
            f"task_losses_fn must return a vector of T task losses, shape (T,); got shape "
            f"{getattr(losses, 'shape', type(losses).__name__)}"
        )


def _varying_axes(x: Any) -> tuple:
    """The mapped axes ``x`` varies over inside ``jax.shard_map`` (empty elsewhere)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    axes = getattr(manual, "varying", None) if manual is not None else getattr(aval, "vma", None)
    return tuple(sorted(axes or ()))


def _make_varying(x: Any, axes: tuple) -> Any:
    """``x`` marked as varying over ``axes`` (a no-op for axes it already varies over, and outside
    ``shard_map``'s varying-axis typing, e.g. under ``pmap``)."""
    missing = tuple(a for a in axes if a not in _varying_axes(x))
    if not missing:
        return x
    try:
        return jax.lax.pcast(x, missing, to="varying")
    except (NameError, ValueError, TypeError):
        return x


def task_jacobian(
    task_losses_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    wrt: Selector,
    has_aux: bool = False,
    axis_name: Any = None,
) -> tuple[jax.Array, list[jax.Array], Any, Any]:
    """The Jacobian of the task losses w.r.t. the selected leaves, as a list of (T, ...) arrays.

    The low-level form of :func:`task_gradients` (no averaging across devices, no nested dict). Inside
    ``jax.shard_map``, ``axis_name`` marks the selected parameters as varying over that axis first, so
    each device's Jacobian is its own shard's (a VJP w.r.t. replicated values would come back already
    summed over devices).

    Returns:
      ``(losses, jacobian_leaves, aux, selection)``; ``selection.as_tree(jacobian_leaves)`` is the mirrored
      nested dict.
    """
    selection = make_selection(params, wrt)

    def losses_of_selected(selected: list) -> tuple[jax.Array, Any]:
        losses, aux = _split_aux(task_losses_fn(selection.merge(selected), *args), has_aux)
        _check_losses(losses)
        return losses, aux

    selected = selection.selected
    if axis_name is not None:
        axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
        selected = [_make_varying(leaf, axes) for leaf in selected]
    losses, pullback, aux = jax.vjp(losses_of_selected, selected, has_aux=True)
    basis_axes = _varying_axes(losses)
    basis = jnp.eye(losses.shape[0], dtype=losses.dtype)
    (jacobian,) = jax.vmap(lambda row: pullback(_make_varying(row, basis_axes)))(basis)
    return losses, jacobian, aux, selection


def task_gradients(
    task_losses_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    wrt: Selector,
    has_aux: bool = False,
    axis_name: Any = None,
) -> tuple:
    """Per-task gradients of ``task_losses_fn`` w.r.t. the subtree that ``wrt`` selects.

    ``grads[t] = d L_t / d theta_wrt`` for ``L = task_losses_fn(params, *args)`` of shape (T,).

    Args:
      task_losses_fn: ``fn(params, *args) -> losses`` (or ``(losses, aux)`` with ``has_aux``).
      params: the parameter pytree.
      *args: further arguments of ``task_losses_fn`` (batch, RNG, ...).
      wrt: the selector (see :mod:`orthojax.select`): ``"encoder/conv5_3"``, a predicate, or ``None``.
      has_aux: whether ``task_losses_fn`` returns ``(losses, aux)``.
      axis_name: a mapped axis (``pmap`` / ``shard_map``) over which losses and gradients are averaged
        (``lax.pmean``), so each device holds the global batch's values.

    Returns:
      ``(losses, grads)`` or ``(losses, grads, aux)``: ``grads`` is a nested dict mirroring the selected
      subtree with a leading task axis T on every leaf.

    Example:
      >>> losses, grads = task_gradients(fn, params, batch, wrt="encoder/conv2")
      >>> grads["kernel"].shape  # (T, kh, kw, c_in, c_out)
    """
    losses, jacobian, aux, selection = task_jacobian(
        task_losses_fn, params, *args, wrt=wrt, has_aux=has_aux, axis_name=axis_name
    )
    if axis_name is not None:
        losses, jacobian = jax.lax.pmean((losses, jacobian), axis_name)
    grads = selection.as_tree(jacobian)
    return (losses, grads, aux) if has_aux else (losses, grads)
