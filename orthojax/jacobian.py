"""Per-task gradients with respect to a selected parameter subtree.

For task losses L(theta) in R^T, the Jacobian rows J_t = dL_t / d theta_sel are obtained from ONE forward
pass and T vector-Jacobian products batched with ``jax.vmap`` over the rows of the identity (the
``jax.jacrev`` pattern), restricted to the leaves that ``wrt`` selects so that the other parameters never
get a cotangent. Everything is differentiable again: ``jax.grad`` of a function of these gradients is the
exact second-order derivative.

The forward pass is traced once (``jax.make_jaxpr``) and its jaxpr is both replayed under ``jax.vjp`` and
read by the dependency pass of :mod:`orthojax.dependence`: a task whose loss does not depend on the selected
leaves at all has a Jacobian row of exact zeros (and a CosReg penalty of 0 with it), which
:func:`task_jacobian` reports with an :class:`IndependentTaskWarning` at trace time, at no runtime cost.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from orthojax.dependence import jaxpr_independent_tasks
from orthojax.select import Selector, leaf_paths, make_selection

PyTree = Any

__all__ = [
    "IndependentTaskWarning",
    "independent_tasks",
    "jaxpr_independent_tasks",
    "task_gradients",
    "task_jacobian",
    "warn_independent_tasks",
]


class IndependentTaskWarning(UserWarning):
    """Some task's loss does not depend on the parameters ``wrt`` selects: its gradient row is exactly 0."""


# --------------------------------------------------------------------------------------------------------------
# Checks of what the task-loss function returned
# --------------------------------------------------------------------------------------------------------------


def describe_value(x: Any) -> str:
    """A short description of ``x`` for error messages: "a tuple of 2 scalars", "an array of shape (4, 2)"."""
    if isinstance(x, (tuple, list)):
        kind, n = type(x).__name__, len(x)
        if n and all(_is_arraylike(v) and jnp.ndim(v) == 0 for v in x):
            return f"a {kind} of {n} scalar{'s' if n != 1 else ''}"
        inner = ", ".join(_short(v) for v in x[:4]) + (", ..." if n > 4 else "")
        return f"a {kind} of {n} item{'s' if n != 1 else ''} ({inner})"
    return _short(x, article=True)


def _is_arraylike(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, (jax.Array, jax.core.Tracer, np.ndarray, np.generic, int, float, complex))


def _short(x: Any, article: bool = False) -> str:
    if _is_arraylike(x):
        shape = tuple(jnp.shape(x))
        text = "scalar" if shape == () else f"array of shape {shape}"
    else:
        text = type(x).__name__
    if not article:
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def _split_aux(out: Any, has_aux: bool) -> tuple[jax.Array, Any]:
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"has_aux=True expects task_losses_fn to return a pair (losses, aux); it returned "
                f"{describe_value(out)}. Return `jnp.stack([loss_0, loss_1, ...]), aux`")
        return out
    return out, None


def _check_losses(losses: Any, has_aux: bool = False) -> None:
    """Raises a ValueError saying what ``task_losses_fn`` returned unless ``losses`` is a (T,) vector."""
    sequence = isinstance(losses, (tuple, list))
    if getattr(losses, "ndim", None) == 1 and not sequence:
        return
    stack = "`jnp.stack([loss_0, loss_1, ...])`"
    or_aux = "(or, if it returns (losses, aux), pass has_aux=True)"
    got = f"it returned {describe_value(losses)}"
    if has_aux:
        got = f"the first item of its (losses, aux) pair was {describe_value(losses)}"
        fix = "return `jnp.stack([loss_0, loss_1, ...]), aux`"
        if not sequence and getattr(losses, "ndim", None) == 0:
            fix += " (with has_aux=True a pair of scalars (loss_0, loss_1) is read as (losses, aux))"
    elif sequence and len(losses) == 2 and getattr(losses[0], "ndim", None) == 1:
        fix = "that looks like (losses, aux): pass has_aux=True"
    elif sequence:
        fix = f"stack them, return {stack} {or_aux}"
    else:
        fix = f"return one (T,) vector, e.g. {stack} {or_aux}"
    raise ValueError(f"task_losses_fn must return the T task losses as one vector of shape (T,); {got}: {fix}")


def _trace_once(fn_of_selected: Callable[[list], tuple], selected: list) -> tuple[Any, Callable[[list], tuple]]:
    """Traces ``fn_of_selected(selected) -> (losses, aux)`` once; returns its jaxpr (inputs: the selected
    leaves; outputs: losses, then the traced aux leaves) and a function that replays the jaxpr (the same
    ``(losses, aux)``, aux leaves that are not traced values returned as they were)."""
    record: dict = {}

    def flat(*leaves: Any) -> list:
        losses, aux = fn_of_selected(list(leaves))
        aux_leaves, aux_tree = jax.tree.flatten(aux)
        traced = [i for i, x in enumerate(aux_leaves) if isinstance(x, jax.core.Tracer)]
        record.update(aux_leaves=aux_leaves, aux_tree=aux_tree, traced=traced)
        return [losses] + [aux_leaves[i] for i in traced]

    closed = jax.make_jaxpr(flat)(*selected)

    def replay(leaves: list) -> tuple:
        outs = jax_core.jaxpr_as_fun(closed)(*leaves)
        aux_leaves = list(record["aux_leaves"])
        for i, x in zip(record["traced"], outs[1:]):
            aux_leaves[i] = x
        return outs[0], jax.tree.unflatten(record["aux_tree"], aux_leaves)

    return closed, replay


_CONCRETE_VALUE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                          jax.errors.TracerIntegerConversionError)


def independent_tasks(
    task_losses_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    wrt: Selector,
    has_aux: bool = False,
) -> tuple[int, ...]:
    """The tasks whose loss does not depend on the parameters ``wrt`` selects (gradient rows that are 0).

    Traces ``task_losses_fn`` once (``jax.make_jaxpr``; nothing is computed, so it works on tracers under
    ``jit`` / ``vmap`` / ``shard_map`` and costs nothing at run time) and runs
    :func:`jaxpr_independent_tasks` on it. Takes the arguments of :func:`task_jacobian`.

    Returns:
      Sorted task indices; empty when every task depends on the selection. ``()`` as well when the function
      cannot be traced abstractly (Python control flow on concrete values outside ``jit``).

    Raises:
      KeyError, ValueError, TypeError: as :func:`task_jacobian` (unknown ``wrt``, losses not of shape (T,)).
    """
    selection = make_selection(params, wrt)

    def fn_of_selected(selected: list) -> tuple:
        losses, aux = _split_aux(task_losses_fn(selection.merge(selected), *args), has_aux)
        _check_losses(losses, has_aux)
        return losses, aux

    try:
        closed, _ = _trace_once(fn_of_selected, selection.selected)
    except _CONCRETE_VALUE_ERRORS:
        return ()
    return jaxpr_independent_tasks(closed)


def _describe_selector(wrt: Selector, paths: Sequence[str]) -> str:
    if wrt is None:
        what = "wrt=None (every parameter)"
    elif isinstance(wrt, str):
        what = f"wrt={wrt!r}"
    else:
        what = f"the wrt predicate {getattr(wrt, '__name__', repr(wrt))}"
    if paths:
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        what += f" ({len(paths)} leaf{'s' if len(paths) != 1 else ''}: {shown})"
    return what


def warn_independent_tasks(tasks: Sequence[int], wrt: Selector, num_tasks: int,
                           selected_paths: Sequence[str] = (), stacklevel: int = 2) -> None:
    """Warns (:class:`IndependentTaskWarning`) that ``tasks`` do not depend on ``wrt``; nothing if empty."""
    if not tasks:
        return
    tasks = [int(t) for t in tasks]
    which = "task" if len(tasks) == 1 else "tasks"
    warnings.warn(
        f"the loss of {which} {tasks} (of {num_tasks}) does not depend on the parameters selected by "
        f"{_describe_selector(wrt, list(selected_paths))}: {'its' if len(tasks) == 1 else 'their'} gradient "
        f"{'row is' if len(tasks) == 1 else 'rows are'} exactly zero, so every cosine with "
        f"{'it' if len(tasks) == 1 else 'them'} is 0 and a CosReg penalty on this layer is 0 (no signal) for "
        f"{'it' if len(tasks) == 1 else 'them'}. Select a layer every task uses, e.g. the last shared layer "
        f"of the encoder, not a task-specific head.",
        IndependentTaskWarning, stacklevel=stacklevel + 1,
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
    check_dependence: bool = True,
) -> tuple[jax.Array, list[jax.Array], Any, Any]:
    """The Jacobian of the task losses w.r.t. the selected leaves, as a list of (T, ...) arrays.

    The low-level form of :func:`task_gradients` (no averaging across devices, no nested dict). Inside
    ``jax.shard_map``, ``axis_name`` marks the selected parameters as varying over that axis first, so
    each device's Jacobian is its own shard's (a VJP w.r.t. replicated values would come back already
    summed over devices).

    With ``check_dependence`` (the default) the forward pass is traced once with ``jax.make_jaxpr``, that
    jaxpr is differentiated, and a task whose loss does not depend on the selected leaves (a zero Jacobian
    row, e.g. ``wrt`` naming another task's head) is reported with an :class:`IndependentTaskWarning`
    naming the task indices and ``wrt``, once per trace; nothing is added to the computation.

    Returns:
      ``(losses, jacobian_leaves, aux, selection)``; ``selection.as_tree(jacobian_leaves)`` is the mirrored
      nested dict.

    Raises:
      KeyError / ValueError / TypeError: a ``wrt`` that selects nothing or is of the wrong type (see
        :func:`orthojax.select.make_selection`).
      ValueError: ``task_losses_fn`` does not return a (T,) vector (or ``(losses, aux)`` with ``has_aux``);
        the message says what it returned.
    """
    selection = make_selection(params, wrt)

    def losses_of_selected(selected: list) -> tuple[jax.Array, Any]:
        losses, aux = _split_aux(task_losses_fn(selection.merge(selected), *args), has_aux)
        _check_losses(losses, has_aux)
        return losses, aux

    selected = selection.selected
    if axis_name is not None:
        axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
        selected = [_make_varying(leaf, axes) for leaf in selected]
    forward = losses_of_selected
    if check_dependence:
        try:
            closed, forward = _trace_once(losses_of_selected, selected)
        except _CONCRETE_VALUE_ERRORS:
            # Python control flow on concrete values (outside jit): differentiate the function itself
            forward = losses_of_selected
        else:
            tasks = jaxpr_independent_tasks(closed)
            if tasks:
                paths = leaf_paths(params)
                warn_independent_tasks(tasks, wrt, closed.jaxpr.outvars[0].aval.shape[0],
                                       [paths[i] for i in selection.indices], stacklevel=2)
    losses, pullback, aux = jax.vjp(forward, selected, has_aux=True)
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
      >>> import jax.numpy as jnp
      >>> params = {"encoder": {"kernel": jnp.eye(3, 4) + 0.1}, "heads": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)}
      >>> def fn(params, x):                                 # -> (T,) = (2,)
      ...     return jnp.mean(jnp.tanh(x @ params["encoder"]["kernel"]) @ params["heads"], axis=0) ** 2
      >>> losses, grads = task_gradients(fn, params, jnp.linspace(-1.0, 1.0, 24).reshape(8, 3), wrt="encoder")
      >>> grads["kernel"].shape                               # (T, d_in, d_out)
      (2, 3, 4)
    """
    losses, jacobian, aux, selection = task_jacobian(
        task_losses_fn, params, *args, wrt=wrt, has_aux=has_aux, axis_name=axis_name
    )
    if axis_name is not None:
        losses, jacobian = jax.lax.pmean((losses, jacobian), axis_name)
    grads = selection.as_tree(jacobian)
    return (losses, grads, aux) if has_aux else (losses, grads)
