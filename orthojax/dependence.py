"""Which outputs of a traced function depend differentiably on which of its inputs (a pass over a jaxpr).

An abstract interpretation of a jaxpr: each value carries a *dependence*, ``True`` / ``False`` for the
whole array or, for small arrays (at most 4096 elements, such as the (T,) vector of task losses), a
NumPy bool array of the value's shape. Inputs start marked or not; each equation's outputs get the
dependence of its operands through a rule for the primitive:

* elementwise primitives: the union of the operands' dependences, element by element;
* reductions: the union over the reduced axes;
* ``concatenate``, ``stack``, ``broadcast_in_dim``, ``reshape``, ``squeeze``, ``expand_dims``,
  ``transpose``, ``rev`` and ``slice``: the operand's dependence moved as the data moves;
* ``jit`` / ``pjit`` / ``remat`` calls: the pass recursed into the called jaxpr;
* ``stop_gradient``, and every integer, boolean or PRNG-key value: no dependence;
* any other primitive: every output depends wholly on everything any operand depends on.

The last rule makes the pass conservative: it may report a dependence that does not exist (a loss
multiplied by 0, a loss assembled by a scatter), never miss one that does. So a task it reports as
independent has a structurally zero gradient row. Nothing is computed; the cost is one walk over the
equations at trace time.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

__all__ = ["Dependence", "any_dependence", "jaxpr_independent_tasks", "output_dependence"]

Dependence = Union[bool, np.ndarray]
"""Dependence of a value on the marked inputs: a Python bool for the whole array, or a NumPy bool array of
the value's shape (kept only for small arrays, so that ``jnp.stack([...])`` of task losses stays per task)."""

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


def any_dependence(dep: Dependence) -> bool:
    """Whether any element of the value depends on the marked inputs."""
    return bool(dep) if isinstance(dep, (bool, np.bool_)) else bool(dep.any())


def _array(dep: Dependence, shape: tuple) -> np.ndarray:
    """The dependence as a bool array of ``shape``."""
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
        return None if sub is None else output_dependence(sub, deps)
    if name in _PER_OPERAND and len(outs) == len(deps):
        return [d if _shape(v) == np.shape(d) or isinstance(d, (bool, np.bool_)) else any_dependence(d)
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
    return _layout_rule(eqn, deps, uniform)


def _layout_rule(eqn: Any, deps: list, uniform: bool) -> Optional[list]:
    """Per-element dependence through the primitives that move data without combining it (broadcast,
    reshape, transpose, reverse, slice), or None for other primitives and dynamic index operands."""
    name = eqn.primitive.name
    out_shape = _shape(eqn.outvars[0])
    if uniform:
        if name in ("broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "rev", "slice"):
            return [any(bool(d) for d in deps)]
        return None
    operand = np.asarray(deps[0], dtype=bool)
    if any(any_dependence(d) for d in deps[1:]):  # dynamic shapes, index operands: give up on precision
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


def output_dependence(jaxpr: Any, in_deps: Sequence[Dependence]) -> list[Dependence]:
    """Which elements of each output of ``jaxpr`` depend differentiably on the inputs marked in ``in_deps``.

    Conservative: whenever a primitive's structure is not known, each of its outputs depends on every input
    that any of its operands depends on. Integer and boolean values carry no gradient, nor does
    ``stop_gradient`` (see the module docstring for the rules).

    Args:
      jaxpr: a ``jax.extend.core.Jaxpr`` (``jax.make_jaxpr(f)(...).jaxpr``).
      in_deps: one :data:`Dependence` per input of ``jaxpr`` (usually a bool: marked or not).

    Returns:
      One :data:`Dependence` per output of ``jaxpr``.
    """
    env: dict = {}

    def read(v: Any) -> Dependence:
        if isinstance(v, jax_core.Literal):
            return False
        return env.get(v, False)  # constvars: closed-over values, independent of the inputs

    for v, d in zip(jaxpr.invars, in_deps):
        env[v] = d if _carries_gradient(v) else False
    for eqn in jaxpr.eqns:
        deps = [read(v) for v in eqn.invars]
        if not any(any_dependence(d) for d in deps):
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
    dep = output_dependence(inner, marks)[0]
    return tuple(int(t) for t in np.flatnonzero(~_array(dep, shape)))


