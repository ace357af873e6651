"""The exact gradient of the CosReg objective by reverse-over-forward differentiation.

With g_t = dL_t/dW the task gradients of the selected layer W, P(g_1..g_T) the penalty and
v_t = dP/dg_t (a constant once g is known), the chain rule gives

    d/dtheta P(g(theta)) = d/dtheta sum_t <v_t, g_t(theta)>,      v_t held constant,

and <v_t, dL_t/dW> is the directional derivative of L_t along W in the direction v_t: a JVP. So the
second-order term is the reverse-mode gradient of T forward-mode tangents, one per task, instead of the
reverse-mode gradient of T reverse-mode gradients (PyTorch's ``create_graph=True`` double backward and the
straightforward ``jax.grad`` of ``jax.vjp``). Forward-mode tangents use the forward convolutions, and their
reverse is an ordinary first-order backward pass; XLA compiles it into far less work than reverse over
reverse. The objective built here,

    S(theta) = sum_t w_t L_t + alpha * [P + D(theta) - stop_gradient(D(theta))],
    D(theta) = sum_t <v_t, g_t(theta)>   (as JVPs, v_t and P under stop_gradient),

has the value of the CosReg objective and its exact first derivative (``jax.grad``, ``jax.value_and_grad``,
``jax.jvp`` of S); derivatives of order two and higher of S are not those of the objective (use the
straightforward formulation, :func:`orthojax.loss_with_cosreg` with ``implementation="reference"``, for
a Hessian of the regularised loss).

Two structures:

* :func:`generic_objective`: any ``fn(params, *args) -> (T,)``. One forward pass (``jax.linearize``), the
  T task gradients by transposing the linear map (vmapped), and the T tangents as one vmapped JVP of the
  linear map whose diagonal is kept. Every tangent runs through every decoder: the tangent work grows as T
  times all decoders.
* :func:`split_objective`: a model split into ``encode -> zs (one representation per task)`` and
  ``decode``, where L_t depends on W only through ``zs[t]``. Then dL_t/dzs_t for every t comes from ONE
  backward pass of the decoders (``sum_t L_t`` has them as its gradient), g_t is one weight gradient of W
  per task, and all T tangents go through the decoders in ONE JVP in which decoder t carries only its own
  task's tangent: the work is linear in T.

Scale safety: the penalty's direction v_t is rescaled by s_t = max|v_t| (a constant) before it is used as a
tangent and the JVP multiplied by s_t afterwards, so tasks whose gradients are tiny (large v_t) or huge do
not overflow the tangent pass.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from orthojax.dependence import any_dependence as _any
from orthojax.dependence import jaxpr_independent_tasks
from orthojax.dependence import output_dependence as _dependence
from orthojax.jacobian import (
    _CONCRETE_VALUE_ERRORS,
    _check_losses,
    _make_varying,
    _split_aux,
    _trace_once,
    _varying_axes,
    warn_independent_tasks,
)
from orthojax.select import Selection, Selector, leaf_paths

PyTree = Any

__all__ = ["PenaltyTerms", "SplitContractWarning", "generic_objective", "split_objective"]


class SplitContractWarning(UserWarning):
    """``loss_with_cosreg_split``'s decoders may break its contract; the generic fast path is used instead."""


class PenaltyTerms(NamedTuple):
    """The pieces of the CosReg objective built by this module.

    Attributes:
      losses: (T,) task losses L_t (differentiable).
      cosine: (T, T) cosine matrix of the task gradients (constant: under ``stop_gradient``).
      penalty: scalar penalty P (constant).
      penalty_surrogate: a scalar with value 0 whose gradient is that of P (add it to P).
      aux: the user's aux, or None.
    """

    losses: jax.Array
    cosine: jax.Array
    penalty: jax.Array
    penalty_surrogate: jax.Array
    aux: Any


def _axes(axis_name: Any) -> tuple:
    if axis_name is None:
        return ()
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _penalty_direction(jacobian: list, penalty_fn: Callable, axis_name: Any):
    """Constant (cosine, P, direction v / s, scale s) from the (T, ...) task-gradient leaves."""
    jacobian = jax.lax.stop_gradient(jacobian)
    if axis_name is not None:
        jacobian = jax.lax.pmean(jacobian, axis_name)
    (penalty, cosine), direction = jax.value_and_grad(penalty_fn, has_aux=True)(jacobian)
    num_tasks = cosine.shape[0]
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(d).reshape(num_tasks, -1), axis=1) for d in direction]), axis=0)
    safe = jnp.where(scale > 0, scale, 1.0)
    unit = [d / safe.reshape((num_tasks,) + (1,) * (d.ndim - 1)).astype(d.dtype) for d in direction]
    return cosine, penalty, unit, jax.lax.stop_gradient(scale)


def _as_varying(leaves: list, axes: tuple) -> list:
    return [_make_varying(leaf, axes) for leaf in leaves] if axes else leaves


def _explains_custom_vjp(hint: str) -> Callable[[Callable], Callable]:
    """Decorator: a clear error, with ``hint``, when a ``jax.custom_vjp`` function blocks forward mode."""

    def decorate(build: Callable) -> Callable:
        @functools.wraps(build)
        def wrapped(*args: Any, **kwargs: Any):
            try:
                return build(*args, **kwargs)
            except TypeError as e:
                if "custom_vjp" not in str(e):
                    raise
                raise TypeError(
                    "the fast CosReg gradient differentiates the model in forward mode, which a jax.custom_vjp "
                    f"function in its forward pass does not allow ({str(e).splitlines()[0]}); {hint}"
                ) from None

        return wrapped

    return decorate


_REFERENCE_HINT = "use loss_with_cosreg(..., implementation='reference') (reverse over reverse) for this model"
_SPLIT_HINT = ("use loss_with_cosreg(whole_model_fn, ..., implementation='reference') (reverse over reverse) "
               "for this model")


def _surrogate(tangent_terms: jax.Array, scale: jax.Array) -> jax.Array:
    directional = jnp.sum(scale.astype(tangent_terms.dtype) * tangent_terms)
    return directional - jax.lax.stop_gradient(directional)


def _checked_forward(losses_of_selected: Callable, selected: list, selection: Selection, wrt: Selector):
    """``losses_of_selected`` traced once; warns when a task's loss does not depend on the selection."""
    try:
        closed, forward = _trace_once(losses_of_selected, selected)
    except _CONCRETE_VALUE_ERRORS:  # Python control flow on concrete values (outside jit)
        return losses_of_selected
    tasks = jaxpr_independent_tasks(closed)
    if tasks:
        paths = leaf_paths(selection.treedef.unflatten(selection.leaves))
        warn_independent_tasks(tasks, wrt, closed.jaxpr.outvars[0].aval.shape[0],
                               [paths[i] for i in selection.indices], stacklevel=4)
    return forward


@_explains_custom_vjp(_REFERENCE_HINT)
def generic_objective(
    task_losses_fn: Callable[..., Any],
    selection: Selection,
    args: Sequence[Any],
    *,
    wrt: Selector,
    penalty_fn: Callable[[list], tuple[jax.Array, jax.Array]],
    has_aux: bool,
    axis_name: Any,
) -> PenaltyTerms:
    """The penalty's pieces for any task-loss function ``fn(params, *args) -> (T,)``.

    Args:
      task_losses_fn: ``fn(params, *args) -> losses`` (or ``(losses, aux)`` with ``has_aux``).
      selection: the parameters with the selected layer W (:func:`orthojax.select.make_selection`).
      args: the further arguments of ``task_losses_fn``.
      wrt: the selector that made ``selection`` (named in the warning for tasks that do not depend on it).
      penalty_fn: ``jacobian_leaves -> (P, cosine)``; differentiated w.r.t. the leaves.
      has_aux: whether ``task_losses_fn`` returns ``(losses, aux)``.
      axis_name: mapped data axis (``pmap`` / ``shard_map``); task gradients are averaged over it.
    """
    axes = _axes(axis_name)

    def losses_of_selected(selected: list):
        losses, aux = _split_aux(task_losses_fn(selection.merge(selected), *args), has_aux)
        _check_losses(losses, has_aux)
        return losses, aux

    selected = _as_varying(list(selection.selected), axes)
    forward = _checked_forward(losses_of_selected, selected, selection, wrt)
    losses, linear, aux = jax.linearize(forward, selected, has_aux=True)
    num_tasks = losses.shape[0]
    transpose = jax.linear_transpose(linear, selected)
    basis_axes = _varying_axes(losses)
    basis = jnp.eye(num_tasks, dtype=losses.dtype)
    (jacobian,) = jax.vmap(lambda row: transpose(_make_varying(row, basis_axes)))(basis)
    cosine, penalty, unit, scale = _penalty_direction(jacobian, penalty_fn, axis_name)
    tangents = jax.vmap(lambda *leaves: linear(_as_varying(list(leaves), axes)))(*unit)  # [s, t] = dL_t . v_s
    return PenaltyTerms(losses, cosine, penalty, _surrogate(jnp.diagonal(tangents), scale), aux)


@_explains_custom_vjp(_SPLIT_HINT)
def split_objective(
    encode_fn: Callable[..., Any],
    decode_fn: Callable[..., Any],
    params: PyTree,
    selection: Selection,
    args: Sequence[Any],
    *,
    wrt: Selector,
    penalty_fn: Callable[[list], tuple[jax.Array, jax.Array]],
    has_aux: bool,
    axis_name: Any,
) -> PenaltyTerms:
    """The penalty's pieces for a model split into an encoder and per-task decoders.

    Args:
      encode_fn: ``encode_fn(params, *args) -> (zs, extras)``: ``zs`` a sequence of T arrays (task t's
        representation; the same array T times for a fully shared encoder), ``extras`` anything the
        decoders need besides (pooling indices, statistics: held constant by the penalty's second-order
        term; first-order gradients flow through them as usual).
      decode_fn: ``decode_fn(params, zs, extras, *args) -> losses`` (T,) (or ``(losses, aux)``), where
        L_t depends on the selected layer only through ``zs[t]``.
      params: the full parameters (the decoders' and the encoder's); ``selection`` is made from them.
      selection, args, wrt, penalty_fn, has_aux, axis_name: as in :func:`generic_objective`.

    Raises:
      ValueError: ``zs`` does not hold one array per task.
    """
    axes = _axes(axis_name)

    def encode_selected(selected: list):
        return _check_encoded(encode_fn(selection.merge(selected), *args))

    def decode_all(p: PyTree, zs: tuple, extras: Any):
        losses, aux = _split_aux(decode_fn(p, zs, extras, *args), has_aux)
        _check_decoded(losses, has_aux, len(zs))
        return losses, aux

    def losses_of_selected(selected: list):  # the whole model
        zs, extras = encode_selected(selected)
        return decode_all(selection.merge(selected), zs, extras)

    selected = _as_varying(list(selection.selected), axes)
    _checked_forward(losses_of_selected, selected, selection, wrt)
    broken = _split_contract_violations(encode_selected, decode_all, selection, selected)
    if broken:
        warnings.warn(
            f"loss_with_cosreg_split: {broken} (the contract: L_t depends on the selected layer only "
            "through zs[t]); using the generic fast path (loss_with_cosreg) instead, which is exact for any "
            "model but does more work",
            SplitContractWarning, stacklevel=4,
        )
        whole = lambda p, *a: decode_fn(p, *_check_encoded(encode_fn(p, *a)), *a)  # noqa: E731
        return generic_objective(whole, selection, args, wrt=wrt, penalty_fn=penalty_fn, has_aux=has_aux,
                                 axis_name=axis_name)
    zs, encode_linear, extras = jax.linearize(encode_selected, selected, has_aux=True)

    def decode_zs(representations: tuple):
        return decode_all(params, representations, extras)

    losses, decode_linear, aux = jax.linearize(decode_zs, zs, has_aux=True)
    num_tasks = losses.shape[0]
    # one backward pass: dL_t / dzs_t for every t (L_s does not depend on zs_t for s != t)
    (representation_grads,) = jax.linear_transpose(decode_linear, zs)(jnp.ones_like(losses))
    encode_transpose = jax.linear_transpose(encode_linear, selected)

    def task_gradient(onehot: jax.Array) -> list:
        cotangent = tuple(a * onehot[s].astype(a.dtype) for s, a in enumerate(representation_grads))
        return encode_transpose(cotangent)[0]

    jacobian = jax.vmap(task_gradient)(jnp.eye(num_tasks, dtype=losses.dtype))
    cosine, penalty, unit, scale = _penalty_direction(jacobian, penalty_fn, axis_name)
    # task t's tangent of its own representation: d zs_t along v_t (vmapped over t, slot t kept)
    per_direction = jax.vmap(lambda *leaves: encode_linear(_as_varying(list(leaves), axes)))(*unit)
    own_tangents = tuple(per_direction[t][t] for t in range(num_tasks))
    tangents = decode_linear(own_tangents)  # decoder t carries only task t's tangent
    return PenaltyTerms(losses, cosine, penalty, _surrogate(tangents, scale), aux)



def _check_encoded(out: Any) -> tuple[tuple, Any]:
    """``(zs, extras)`` from ``encode_fn`` with ``zs`` a tuple of arrays, or a clear error."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(
            f"encode_fn must return a pair (zs, extras), zs one representation per task; got "
            f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''} "
            "(return (zs, None) when the decoders need nothing else)"
        )
    zs, extras = out
    if not isinstance(zs, (tuple, list)) or not all(hasattr(z, "shape") for z in zs):
        raise ValueError(
            "encode_fn must return zs as a tuple or list of T arrays (the same array T times for a fully "
            f"shared encoder, e.g. (z,) * T); got {type(zs).__name__}"
            f"{f' of shape {zs.shape}' if hasattr(zs, 'shape') else ''}"
        )
    return tuple(zs), extras


def _check_decoded(losses: Any, has_aux: bool, num_representations: int) -> None:
    try:
        _check_losses(losses, has_aux)
    except ValueError as e:
        raise ValueError(str(e).replace("task_losses_fn", "decode_fn", 1)) from None
    if not jnp.issubdtype(losses.dtype, jnp.inexact):
        raise ValueError(f"decode_fn must return floating-point losses; got dtype {losses.dtype}")
    if losses.shape[0] != num_representations:
        raise ValueError(
            f"encode_fn must return one representation per task: got {num_representations} representations "
            f"for {losses.shape[0]} task losses"
        )


def _inexact_leaves(tree: Any) -> tuple[list, Callable[[list], Any]]:
    """The floating-point array leaves of ``tree`` and a function that puts replacements back."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [i for i, x in enumerate(leaves) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]

    def put(replacements: list) -> Any:
        out = list(leaves)
        for i, x in zip(where, replacements):
            out[i] = x
        return jax.tree.unflatten(treedef, out)

    return [leaves[i] for i in where], put


def _split_contract_violations(encode_selected: Callable, decode_all: Callable, selection: Selection,
                               selected: list) -> str:
    """What in the traced model breaks the split contract (empty when nothing does). Trace time only.

    Checked with the jaxpr dependency pass of :mod:`orthojax.jacobian`: the decoder's loss t reads zs[s]
    (s != t), the decoder reads the selected layer directly (tied weights), or it reads a floating-point
    ``extras`` leaf that depends on the selected layer. The pass is conservative (an unknown primitive
    counts as reading everything), so a clean model may be flagged; the fallback is exact either way.
    """
    try:
        encoded = jax.make_jaxpr(lambda leaves: _flatten_encoded(encode_selected(leaves)))(selected)
        zs, extras = encode_selected(selected)  # traced values (unused: dead code once compiled)
        extra_leaves, put_extras = _inexact_leaves(extras)
        num_tasks = len(zs)

        def decode_flat(zs_leaves: list, extra_values: list, layer: list):
            losses, aux = decode_all(selection.merge(layer), tuple(zs_leaves), put_extras(extra_values))
            return [losses] + [x for x in jax.tree.leaves(aux) if hasattr(x, "dtype")]

        decoded = jax.make_jaxpr(decode_flat)(list(zs), extra_leaves, selected)
    except _CONCRETE_VALUE_ERRORS:
        return ""
    groups = [("zs", num_tasks), ("extras", len(extra_leaves)), ("layer", len(selected))]
    offsets, start = {}, 0
    for name, size in groups:
        offsets[name] = (start, start + size)
        start += size

    def marks(name: str, which: Sequence[int]) -> list[bool]:
        lo, _ = offsets[name]
        chosen = {lo + i for i in which}
        return [i in chosen for i in range(start)]

    independent = jaxpr_independent_tasks
    for s in range(num_tasks):
        readers = sorted(set(range(num_tasks)) - set(independent(decoded, marks("zs", [s]))) - {s})
        if readers:
            return f"the loss of task {readers} reads zs[{s}]"
    if selected and len(independent(decoded, marks("layer", range(len(selected))))) < num_tasks:
        return "the decoders read the selected layer's parameters directly (e.g. tied weights)"
    if extra_leaves:
        encoder_deps = _dependence(encoded.jaxpr, [True] * len(selected))
        extras_deps = encoder_deps[num_tasks:]
        tied = [i for i, d in enumerate(extras_deps) if _any(d)]
        if tied and len(independent(decoded, marks("extras", tied))) < num_tasks:
            return "the losses read floating-point extras that depend on the selected layer"
    return ""


def _flatten_encoded(encoded: tuple) -> list:
    zs, extras = encoded
    extra_leaves, _ = _inexact_leaves(extras)
    return list(zs) + extra_leaves
