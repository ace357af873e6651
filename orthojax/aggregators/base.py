"""The aggregator object: ``aggregate(jacobian, state=None, *, key=None) -> (direction, state)``, with a side
channel for diagnostics.

An aggregator maps the Jacobian J of T task losses (a (T, P) array, or a pytree whose leaves have a leading
task axis T) to one update direction d with the structure of a single task's gradient. It is a pure function:
state is explicit (None for the stateless ones) and randomness comes only from ``key``. Any callable with this
signature is an aggregator; :class:`Aggregator` adds what an engine may want beyond ``(direction, state)``:

* ``aggregator.with_info(jacobian, state=None, *, key=None) -> Aggregation(direction, state, info)``, where
  ``info`` holds the diagnostics of the step, e.g. "task_weights" (T,) (d = sum_t w_t g_t), "grad_norms" (T,)
  ||g_t||, "gramian" (T, T) J J^T and, for iterative solvers, "solver_residual" (a scalar); it never feeds
  back into the computation, so it is free to ignore;
* ``aggregator.init(num_tasks, dtype) -> state``, the state that ``state=None`` stands for (so that a training
  loop can hold one state structure from the first step on); None for stateless aggregators;
* ``aggregator.needs_key``: True when the call raises without a key.

:func:`gramian_aggregator` builds an :class:`Aggregator` from a weighting of the factored Gramian (most
conflict-aware methods are of that form).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from orthojax.aggregators.gramian import ScaledGramian, Solution, _gramian_from_parts, _scaled_from_parts, \
    _scaled_parts, combine_unit

PyTree = Any

__all__ = ["Aggregation", "Aggregator", "gramian_aggregator", "jacobian_info", "num_tasks_of"]


class Aggregation(NamedTuple):
    """What :meth:`Aggregator.with_info` returns.

    direction: the update direction, the structure of the Jacobian with the task axis removed, its dtype.
    state: the aggregator's next state (None for stateless aggregators).
    info: dict of diagnostics (arrays), for logging only; see the aggregator's docstring for its keys.
    """

    direction: PyTree
    state: PyTree
    info: dict


def num_tasks_of(jacobian: PyTree, name: str) -> tuple[int, Any]:
    """(T, dtype): the common leading task axis of the Jacobian's leaves and their floating dtype.

    Raises:
      ValueError: no leaves, a scalar leaf, a bare (P,) vector (a gradient without its task axis), or
        leaves with different leading axes (the message lists the shapes).
      TypeError: a leaf that is not floating point.
    """
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError(f"{name}: the Jacobian has no leaves; expected a (T, P) array or a pytree of (T, ...) "
                         "arrays")
    if len(leaves) == 1 and leaves[0] is jacobian and jnp.ndim(jacobian) == 1:
        # one bare vector is one gradient without its task axis (a pytree of (T,) leaves stays valid)
        raise ValueError(f"{name}: the Jacobian is one vector of shape {jnp.shape(jacobian)}; expected a (T, P) "
                         "array with one row per task: stack the task gradients, jnp.stack([g_1, ..., g_T])")
    shapes = [jnp.shape(leaf) for leaf in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{name}: every Jacobian leaf needs the same leading task axis T; got shapes {shapes}")
    dtypes = [jnp.result_type(leaf) for leaf in leaves]
    for dtype in dtypes:
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}: the Jacobian must be floating point; got dtype {dtype}")
    return shapes[0][0], jnp.result_type(*dtypes)


def _check_stateless(state: PyTree, name: str) -> None:
    """A stateless aggregator's ``fn`` takes ``state=None`` only (ValueError naming ``name`` otherwise)."""
    if state is not None:
        raise ValueError(f"{name}: this aggregator is stateless; pass state=None, got {type(state).__name__}")


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A pure, jittable aggregator: ``aggregator(jacobian, state=None, *, key=None) -> (direction, state)``.

    Attributes:
      name: the method's name (e.g. "upgrad"), used in error messages and as the default Method name.
      fn: ``fn(jacobian, state, key) -> Aggregation``; receives the state already initialised and the key
        already checked.
      init: optional ``init(num_tasks, dtype) -> state``; ``state=None`` is replaced by ``init(T, dtype)``.
      needs_key: whether a call without ``key`` raises (randomised aggregators).

    Example::

        aggregate = orthojax.aggregators.upgrad()
        d, _ = jax.jit(aggregate)(J)                  # J: (T, P) or a pytree of (T, ...) leaves
        out = aggregate.with_info(J)                  # out.info["task_weights"], ...
    """

    name: str
    fn: Callable[[PyTree, PyTree, Optional[jax.Array]], Aggregation]
    init: Optional[Callable[[int, Any], PyTree]] = None
    needs_key: bool = False

    def with_info(self, jacobian: PyTree, state: PyTree = None, *, key: Optional[jax.Array] = None) -> Aggregation:
        """The direction, the next state and the step's diagnostics (:class:`Aggregation`).

        Raises:
          ValueError: a malformed Jacobian (see :func:`num_tasks_of`), or a missing ``key`` for a randomised
            aggregator.
        """
        num_tasks, dtype = num_tasks_of(jacobian, self.name)
        if self.needs_key and key is None:
            raise ValueError(f"{self.name}: this aggregator is randomised and needs key=jax.random.key(...); got "
                             "key=None")
        if state is None and self.init is not None:
            state = self.init(num_tasks, dtype)
        return self.fn(jacobian, state, key)

    def __call__(self, jacobian: PyTree, state: PyTree = None, *, key: Optional[jax.Array] = None):
        """``(direction, state)``: :meth:`with_info` without the diagnostics."""
        out = self.with_info(jacobian, state, key=key)
        return out.direction, out.state


def jacobian_info(jacobian: PyTree, weights: Optional[jax.Array] = None) -> dict:
    """The diagnostics every built-in aggregator reports: "grad_norms" (T,) ||g_t|| and "gramian" (T, T) J J^T
    (both scale-safe, from rows pre-scaled by powers of two), plus "task_weights" (T,) when ``weights`` (the w of
    d = w @ J) is given. Logging only: the aggregators do not read them back."""
    exponents, scaled = _scaled_parts(jacobian)
    info = {"grad_norms": _scaled_from_parts(exponents, scaled).norms,
            "gramian": _gramian_from_parts(exponents, scaled)}
    if weights is not None:
        info["task_weights"] = weights
    return info


def gramian_aggregator(
    name: str,
    solve: Callable[[ScaledGramian, Optional[jax.Array]], Solution],
    *,
    needs_key: bool = False,
    reports_residual: bool = False,
) -> Aggregator:
    """A stateless :class:`Aggregator` whose weights are a function of the Gramian alone.

    The step forms the scale-safe factored Gramian (:func:`~orthojax.aggregators.gramian.scaled_gramian`),
    calls ``solve(S, key) -> Solution`` and returns d = sum_t a_t g_t / ||g_t|| from the solution's
    unit-gradient coefficients (:func:`~orthojax.aggregators.gramian.combine_unit`; equal to w @ J, and right
    even where a weight is beyond the dtype's range). ``info``: "task_weights" (T,), "grad_norms" (T,),
    "gramian" (T, T) and, with ``reports_residual``, "solver_residual" (scalar).
    """

    def fn(jacobian: PyTree, state: PyTree, key: Optional[jax.Array]) -> Aggregation:
        _check_stateless(state, name)
        exponents, scaled = _scaled_parts(jacobian)
        S = _scaled_from_parts(exponents, scaled)
        sol = solve(S, key)
        direction = combine_unit(sol.coefficients, jacobian, S.norms)
        info = {"task_weights": sol.weights, "grad_norms": S.norms, "gramian": _gramian_from_parts(exponents, scaled)}
        if reports_residual:
            info["solver_residual"] = sol.residual
        return Aggregation(direction, None, info)

    return Aggregator(name=name, fn=fn, needs_key=needs_key)
