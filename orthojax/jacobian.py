"""Per-task gradients with respect to a selected parameter subtree.

For task losses L(theta) in R^T, the Jacobian rows J_t = dL_t / d theta_sel are obtained from ONE forward
pass and T vector-Jacobian products batched with ``jax.vmap`` over the rows of the identity (the
``jax.jacrev`` pattern), restricted to the leaves that ``wrt`` selects so that the other parameters never
get a cotangent. Everything is differentiable again: ``jax.grad`` of a function of these gradients is the
exact second-order derivative.

The forward pass is traced once (``jax.make_jaxpr``) and its jaxpr is both replayed under ``jax.vjp`` and
read by a dependency pass (:func:`jaxpr_independent_tasks`): a task whose loss does not depend on the
selected leaves at all has a Jacobian row of exact zeros (and a CosReg penalty of 0 with it), which
:func:`task_jacobian` reports with an :class:`IndependentTaskWarning` at trace time, at no runtime cost.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

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


# --------------------------------------------------------------------------------------------------------------
# Which task losses depend on the selected leaves (a dependency pass over the jaxpr)
# --------------------------------------------------------------------------------------------------------------

# Dependence of a value on the inputs: a Python bool for the whole array, or a NumPy bool array of the value's
# shape (kept only for small arrays such as the (T,) loss vector, so that jnp.stack([...]) stays per task).
_Dep = Union[bool, np.ndarray]
_PRECISE_MAX_SIZE = 4096

_ELEMENTWISE = frozenset({
    "abs", "acos", "acosh", "add", "add_any", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp",
    "complex", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div", "erf", "erf_inv",
    "erfc", "exp", "exp2", "expm1", "floor", "igamma", "igammac", "imag", "integer_pow", "lgamma", "log", "log1p",
    "logistic", "max", "min", "mul", "neg", "nextafter", "pow", "real", "reduce_precision", "rem", "round",
    "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square", "sub", "tan", "tanh",
})
# one output per operand, same shape (collectives and type casts)
_PER_OPERAND = frozenset({"optimization_barrier", "pcast", "pmax", "pmin", "psum", "psum_invariant", "pvary",
                          "sharding_constraint", "mesh_cast", "reshard"})
_REDUCTIONS = frozenset({"argmax", "argmin", "reduce_and", "reduce_max", "reduce_min", "reduce_or", "reduce_prod",
                         "reduce_sum", "reduce_xor"})
# calls whose body is the function itself (custom_jvp / custom_vjp are not: their derivative is user code)
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "remat2"})


def _any(dep: _Dep) -> bool:
    return bool(dep) if isinstance(dep, (bool, np.bool_)) else bool(dep.any())


def _array(dep: _Dep, shape: tuple) -> np.ndarray:
    return np.full(shape, bool(dep)) if isinstance(dep, (bool, np.bool_)) else np.asarray(dep, dtype=bool)


def _carries_gradient(var: Any) -> bool:
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    try:
        return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))
    except TypeError:  # extended dtypes (PRNG keys)
        return False


def _shape(var: Any) -> tuple:
    return tuple(getattr(getattr(var, "aval", None), "shape", ()))


def _small(shape: tuple) -> bool:
    return all(isinstance(d, int) for d in shape) and int(np.prod(shape, dtype=np.int64)) <= _PRECISE_MAX_SIZE


def _sub_jaxpr(eqn: Any) -> Optional[Any]:
    for key in ("jaxpr", "call_jaxpr"):
        sub = eqn.params.get(key)
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax_core.Jaxpr) and len(sub.invars) == len(eqn.invars) \
                and len(sub.outvars) == len(eqn.outvars):
            return sub
    return None


def _precise_rule(eqn: Any, deps: list) -> Optional[list]:
    """Per-element dependence of the outputs of ``eqn``, or None where only whole-array dependence is known."""
    name = eqn.primitive.name
    outs = eqn.outvars
    out_shape = _shape(outs[0]) if outs else ()
    uniform = all(isinstance(d, (bool, np.bool_)) for d in deps)
    if name == "stop_gradient":
        return [False] * len(outs)
    if name in _CALLS:
        sub = _sub_jaxpr(eqn)
        return None if sub is None else _dependence(sub, deps)
    if name in _PER_OPERAND and len(outs) == len(deps):
        return [d if _shape(v) == np.shape(d) or isinstance(d, (bool, np.bool_)) else _any(d)
                for v, d in zip(outs, deps)]
    if len(outs) != 1:
        return None
    if name in _ELEMENTWISE:
        if uniform:
            return [any(bool(d) for d in deps)]
        out = np.zeros(out_shape, dtype=bool)
        for d in deps:
            out |= np.asarray(d, dtype=bool)  # operands have the output's shape or are scalars
        return [out]
    if name in _REDUCTIONS:
        if uniform:
            return [bool(deps[0])]
        return [np.asarray(deps[0]).any(axis=tuple(eqn.params["axes"]))]
    if name in ("concatenate", "stack"):
        if uniform and len(set(bool(d) for d in deps)) == 1:
            return [bool(deps[0])]
        if not _small(out_shape):
            return None
        arrays = [_array(d, _shape(v)) for d, v in zip(deps, eqn.invars)]
        if name == "concatenate":
            return [np.concatenate(arrays, axis=eqn.params["dimension"])]
        return [np.stack(arrays, axis=eqn.params["axis"])]
    if uniform:
        if name in ("broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "rev", "slice"):
            return [any(bool(d) for d in deps)]
        return None
    operand = np.asarray(deps[0], dtype=bool)
    if any(_any(d) for d in deps[1:]):  # dynamic shapes, index operands: give up on precision
        return None
    if name == "broadcast_in_dim":
        if not _small(out_shape):
            return [bool(operand.any())]
        shape = [1] * len(out_shape)
        for i, dim in enumerate(eqn.params["broadcast_dimensions"]):
            shape[dim] = operand.shape[i]
        return [np.broadcast_to(operand.reshape(shape), out_shape)]
    if name in ("reshape", "squeeze", "expand_dims"):
        if eqn.params.get("dimensions") is not None and name == "reshape":
            return None
        return [operand.reshape(out_shape)]
    if name == "transpose":
        return [np.transpose(operand, eqn.params["permutation"])]
    if name == "rev":
        return [np.flip(operand, axis=tuple(eqn.params["dimensions"]))]
    if name == "slice":
        strides = eqn.params.get("strides") or (1,) * operand.ndim
        index = tuple(slice(s, e, k) for s, e, k in
                      zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides))
        return [operand[index]]
    return None


def _dependence(jaxpr: Any, in_deps: Sequence[_Dep]) -> list:
    """Which elements of each output of ``jaxpr`` depend differentiably on the inputs marked in ``in_deps``.

    Conservative: whenever a primitive's structure is not known, each of its outputs depends on every input
    that any of its operands depends on. Integer and boolean values carry no gradient, nor does
    ``stop_gradient``.
    """
    env: dict = {}

    def read(v: Any) -> _Dep:
        if isinstance(v, jax_core.Literal):
            return False
        return env.get(v, False)  # constvars: closed-over values, independent of the inputs

    for v, d in zip(jaxpr.invars, in_deps):
        env[v] = d if _carries_gradient(v) else False
    for eqn in jaxpr.eqns:
        deps = [read(v) for v in eqn.invars]
        if not any(_any(d) for d in deps):
            outs: list = [False] * len(eqn.outvars)
        else:
            try:
                outs = _precise_rule(eqn, deps)
            except Exception:  # an unexpected parameter layout: fall back to whole-array dependence
                outs = None
            if outs is None:
                outs = [True] * len(eqn.outvars)
        for v, d in zip(eqn.outvars, outs):
            if not isinstance(v, jax_core.DropVar):
                env[v] = d if _carries_gradient(v) else False
    return [read(v) for v in jaxpr.outvars]


def jaxpr_independent_tasks(jaxpr: Any, differentiated: Optional[Sequence[bool]] = None) -> tuple[int, ...]:
    """The tasks whose loss has no differentiable dependence on the marked inputs of a traced function.

    A pure function of the jaxpr (no tracing, no arrays): use it on a jaxpr you already have.

    Args:
      jaxpr: a ``ClosedJaxpr`` (``jax.make_jaxpr(f)(...)``) or ``Jaxpr`` whose FIRST output is the (T,) vector
        of task losses (further outputs, e.g. aux, are ignored).
      differentiated: one bool per input of the jaxpr: the inputs the Jacobian is taken with respect to
        (default: all of them).

    Returns:
      The sorted indices t for which loss t provably does not depend on the marked inputs, i.e. whose
      gradient row is structurally zero. The pass is conservative (it may miss an independent task, e.g. one
      whose loss is multiplied by 0 or assembled by a scatter, but never reports a dependent one), and it
      follows ``jnp.stack`` / ``concatenate`` / ``broadcast`` / ``slice`` element by element.
    """
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    marks = [True] * len(inner.invars) if differentiated is None else [bool(m) for m in differentiated]
    if len(marks) != len(inner.invars):
        raise ValueError(f"differentiated has {len(marks)} entries for a jaxpr of {len(inner.invars)} inputs")
    if not inner.outvars:
        raise ValueError("the jaxpr has no output; its first output must be the (T,) task losses")
    losses_var = inner.outvars[0]
    shape = _shape(losses_var)
    if len(shape) != 1:
        raise ValueError(f"the jaxpr's first output must be the (T,) task losses; got shape {shape}")
    dep = _dependence(inner, marks)[0]
    return tuple(int(t) for t in np.flatnonzero(~_array(dep, shape)))


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
                warn_independent_tasks(tasks, wrt, _shape(closed.jaxpr.outvars[0])[0],
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
