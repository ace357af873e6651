"""Training methods from aggregators: any :mod:`orthojax.aggregators` aggregator as a :class:`Method`.

:func:`gradient_aggregation` turns an aggregator ``aggregate(jacobian, state=None, *, key=None) -> (direction,
state)`` into a method whose step computes, from one forward pass,

* the Jacobian J of the task losses with respect to the shared parameters (``problem.shared``), by T
  vector-Jacobian products batched with ``jax.vmap`` (as :func:`orthojax.task_jacobian` does), under
  ``stop_gradient``;
* the shared-parameter gradient d = aggregate(J) (a list of leaves in the selection's order);
* the gradient of sum_t L_t for every other parameter: each task-specific decoder only sees its own loss,
  so this is its own task gradient, untouched by the aggregation.

``MethodStep.loss`` is sum_t L_t (for logging: the update is not the gradient of one scalar). Metrics: the
aggregator's diagnostics where it reports them (:meth:`~orthojax.aggregators.base.Aggregator.with_info`:
"task_weights" (T,), "grad_norms" (T,) ||g_t||, "gramian" (T, T) and, for MGDA, UPGrad, DualProj and
CAGrad, "solver_residual"), and "cosine" (T, T), the last shared layer's cosines from the same Jacobian
when that layer is among the shared parameters. The method's state is the aggregator's state (``()`` for a
stateless one); the aggregator's ``key`` is the step's ``rng`` folded with a constant (None without one).

:data:`AGGREGATORS` maps the registry names to method factories taking the aggregators' hyper-parameters;
a new aggregator is one line there: ``"krum": _method_from_aggregator(aggregators.krum)``.

Example::

    method = orthojax.methods.aggregation.upgrad()          # or gradient_aggregation(aggregators.upgrad(), name="upgrad")
    state = method.init(params, num_tasks)
    out = method.step(problem, params, state, batch, rng)

References: see each aggregator's module in :mod:`orthojax.aggregators`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from orthojax import aggregators
from orthojax.cosreg import cosine_matrix
from orthojax.methods.base import Method, MethodStep, MultiTaskProblem, task_losses_and_aux
from orthojax.select import make_selection

PyTree = Any

__all__ = [
    "AGGREGATORS",
    "aligned_mtl",
    "cagrad",
    "dualproj",
    "gradient_aggregation",
    "imtl_g",
    "jacobian_step",
    "mgda",
    "pcgrad",
    "upgrad",
]

# Folded into the step's key so that a randomised aggregator (PCGrad's task order) is independent of the
# model's own randomness.
_AGGREGATOR_KEY_SALT = 0x5043


def jacobian_step(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array):
    """One forward pass; the shared-parameter Jacobian and the gradient of sum_t L_t for the rest.

    Returns:
      ``(losses, aux, jacobian, rest_grads, selection, rest_indices)``: ``jacobian`` is the list of (T, ...)
      Jacobian leaves of the shared parameters (in ``selection.indices`` order), ``rest_grads`` the list of
      gradients of sum_t L_t for the other leaves (in ``rest_indices`` order).
    """
    selection = make_selection(params, problem.shared)
    chosen = set(selection.indices)
    rest_indices = tuple(i for i in range(len(selection.leaves)) if i not in chosen)

    def merged(shared_leaves, rest_leaves):
        leaves = list(selection.leaves)
        for i, leaf in zip(selection.indices, shared_leaves):
            leaves[i] = leaf
        for i, leaf in zip(rest_indices, rest_leaves):
            leaves[i] = leaf
        return selection.treedef.unflatten(leaves)

    def losses_fn(shared_leaves, rest_leaves):
        return task_losses_and_aux(problem, merged(shared_leaves, rest_leaves), batch, rng)

    rest = [selection.leaves[i] for i in rest_indices]
    losses, pullback, aux = jax.vjp(losses_fn, selection.selected, rest, has_aux=True)
    num_tasks = losses.shape[0]
    jacobian, _ = jax.vmap(pullback)(jnp.eye(num_tasks, dtype=losses.dtype))
    _, rest_grads = pullback(jnp.ones((num_tasks,), losses.dtype))
    return losses, aux, jacobian, rest_grads, selection, rest_indices


def _last_shared_cosine(problem: MultiTaskProblem, params: PyTree, selection, jacobian: list):
    """The (T, T) cosines of the last shared layer's rows of the shared Jacobian (None when that layer is not
    among the shared parameters)."""
    last = make_selection(params, problem.last_shared).indices
    position = {index: k for k, index in enumerate(selection.indices)}
    if not last or any(i not in position for i in last):
        return None
    return cosine_matrix([jacobian[position[i]] for i in last])


def _is_empty_state(state: PyTree) -> bool:
    return state is None or (type(state) is tuple and not state)


def _float_dtype_of(params: PyTree):
    floats = [jnp.result_type(x) for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.result_type(*floats) if floats else jnp.float32


def gradient_aggregation(aggregator: Callable[..., Any], *, name: Optional[str] = None) -> Method:
    """The training method that updates the shared parameters along ``aggregator``'s direction.

    Args:
      aggregator: ``aggregate(jacobian, state=None, *, key=None) -> (direction, state)``, e.g.
        ``orthojax.aggregators.upgrad()`` or a user's function. An :class:`~orthojax.aggregators.Aggregator`
        also gives its diagnostics as metrics and its initial state to ``init``; for a plain function the
        state starts as None (a stateful plain function therefore changes the state's structure after the
        first step, which costs one more trace).
      name: the method's name; default the aggregator's ``name`` attribute.

    Returns:
      :class:`Method` (see the module docstring for its step).

    Raises:
      TypeError: ``aggregator`` not callable (e.g. a registry name: use ``get_method(name)``), or no name.
    """
    if not callable(aggregator):
        raise TypeError(f"gradient_aggregation: aggregator must be an aggregate function such as "
                        f"orthojax.aggregators.upgrad(); got {aggregator!r} (for a method by name use "
                        f"orthojax.methods.get_method)")
    name = getattr(aggregator, "name", None) if name is None else name
    if not isinstance(name, str) or not name:
        raise TypeError(f"gradient_aggregation: name must be a non-empty string; got {name!r}")
    with_info = getattr(aggregator, "with_info", None)
    init_fn = getattr(aggregator, "init", None)

    def init(params: PyTree, num_tasks: int) -> PyTree:
        if num_tasks < 1:
            raise ValueError(f"{name} needs at least 1 task; got {num_tasks}")
        return () if init_fn is None else init_fn(num_tasks, _float_dtype_of(params))

    def step(problem: MultiTaskProblem, params: PyTree, state: PyTree, batch: Any, rng: jax.Array) -> MethodStep:
        losses, aux, jacobian, rest_grads, selection, rest_indices = jacobian_step(problem, params, batch, rng)
        jac = jax.lax.stop_gradient(jacobian)
        agg_state = None if _is_empty_state(state) else state
        key = None if rng is None else jax.random.fold_in(rng, _AGGREGATOR_KEY_SALT)
        if with_info is not None:
            direction, new_state, info = with_info(jac, agg_state, key=key)
        else:
            (direction, new_state), info = aggregator(jac, agg_state, key=key), {}
        if jax.tree.structure(direction) != jax.tree.structure(jac):
            raise ValueError(f"{name}: the aggregator's direction must have the structure of the Jacobian without "
                             f"its task axis, {jax.tree.structure(jac)}; got {jax.tree.structure(direction)}")
        leaves = list(selection.leaves)
        for i, g in zip(selection.indices, direction):
            leaves[i] = g
        for i, g in zip(rest_indices, rest_grads):
            leaves[i] = g
        grads = selection.treedef.unflatten(leaves)
        metrics = dict(jax.lax.stop_gradient(info))
        cosine = _last_shared_cosine(problem, params, selection, jac)
        if cosine is not None:  # the diagnostic from this Jacobian: the engine computes no extra one
            metrics["cosine"] = cosine
        new_state = () if new_state is None else new_state
        return MethodStep(grads, new_state, jnp.sum(losses), losses, aux, metrics)

    return Method(name=name, init=init, step=step)


def _method_from_aggregator(factory: Callable[..., Any], *, name: Optional[str] = None) -> Callable[..., Method]:
    """A method factory with ``factory``'s hyper-parameters (signature, annotations, docstring):
    ``make(**hyperparameters) = gradient_aggregation(factory(**hyperparameters), name=name)``; ``name``
    defaults to the factory's ``__name__``."""
    method_name = factory.__name__ if name is None else name

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Method:
        return gradient_aggregation(factory(*args, **kwargs), name=method_name)

    make.__signature__ = inspect.signature(factory).replace(return_annotation=Method)
    make.__module__ = __name__
    make.__doc__ = (factory.__doc__ or "") + (
        "\n\n    As a training method (:func:`gradient_aggregation`): the direction on the shared parameters, "
        "the own task gradient on the rest.\n")
    return make


mgda = _method_from_aggregator(aggregators.mgda)
pcgrad = _method_from_aggregator(aggregators.pcgrad)
imtl_g = _method_from_aggregator(aggregators.imtl_g)
aligned_mtl = _method_from_aggregator(aggregators.aligned_mtl)
upgrad = _method_from_aggregator(aggregators.upgrad)
dualproj = _method_from_aggregator(aggregators.dualproj)
cagrad = _method_from_aggregator(aggregators.cagrad)

AGGREGATORS: dict[str, Callable[..., Method]] = {
    "mgda": mgda,
    "pcgrad": pcgrad,
    "imtl_g": imtl_g,
    "aligned_mtl": aligned_mtl,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "cagrad": cagrad,
}
