"""The one calling convention every multi-task method follows.

A method is a pair of pure functions built by a factory that validates its hyper-parameters (the optax
pattern)::

    method = orthojax.methods.cosreg(alpha=10.0)
    state = method.init(params, num_tasks)
    out = method.step(problem, params, state, batch, rng)   # -> MethodStep
    updates, opt_state = optimizer.update(out.grads, opt_state, params)

``problem`` (:class:`MultiTaskProblem`) is everything a method may ask of the model: the task losses, the
selector of the last shared layer and of all shared parameters, and, for methods that act on the shared
representation (RotoGrad), the encoder / decoder split. ``out.grads`` has the structure of ``params`` and
is what the optimiser receives; ``out.state`` is the method's next state (a pytree: learnable task
weights, their optimiser state, step counters); ``out.metrics`` holds the method's diagnostics.
"""

from __future__ import annotations

import numbers
import types
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax

from orthojax.cosreg import cosine_matrix
from orthojax.jacobian import task_jacobian
from orthojax.select import Selector
from orthojax.task_losses import call_task_losses

PyTree = Any

__all__ = ["check_positive", "Method", "MethodStep", "MultiTaskProblem", "last_shared_cosine", "task_losses_and_aux"]


class MultiTaskProblem(NamedTuple):
    """What a method may ask of a multi-task model.

    Attributes:
      task_losses: ``fn(params, batch, rng) -> (losses (T,), aux)``: the task-loss contract
        (:mod:`orthojax.task_losses`) with ``args = (batch, rng)`` and ``has_aux=True``; aux is carried
        through untouched (e.g. updated BatchNorm statistics; None or {} when there is none).
      last_shared: selector of the last shared layer (the paper's "last layer of the encoder").
      shared: selector of all shared parameters (used by GradNorm's all-shared option and by Recon).
      encode: optional ``fn(params, batch, rng) -> (zs, extras)``: zs is a tuple of T per-task
        representations (identical when the encoder is fully shared), channels last.
      decode: optional ``fn(params, zs, extras, batch, rng) -> (losses (T,), aux)``; with ``encode`` it
        must satisfy ``decode(params, *encode(params, batch, rng), batch, rng) == task_losses(...)``.
    """

    task_losses: Callable[..., tuple[jax.Array, Any]]
    last_shared: Selector
    shared: Selector = "encoder"
    encode: Optional[Callable[..., tuple[Any, Any]]] = None
    decode: Optional[Callable[..., tuple[jax.Array, Any]]] = None


class MethodStep(NamedTuple):
    """The result of one method step.

    Attributes:
      grads: gradient for the optimiser, same structure as ``params``.
      state: the method's next state.
      loss: the scalar objective that produced ``grads`` (for logging).
      task_losses: (T,) task losses.
      aux: the problem's aux (e.g. new BatchNorm statistics).
      metrics: method diagnostics (e.g. "cosine" (T, T), "penalty", "task_weights" (T,)).
    """

    grads: PyTree
    state: PyTree
    loss: jax.Array
    task_losses: jax.Array
    aux: Any
    metrics: dict


class Method(NamedTuple):
    """A multi-task method: ``init(params, num_tasks) -> state`` and ``step(problem, params, state, batch,
    rng) -> MethodStep``; both pure and jittable.

    Attributes:
      name: the registry name (any name for a method of your own).
      init: ``fn(params, num_tasks) -> state`` (a pytree; ``()`` when stateless).
      step: ``fn(problem, params, state, batch, rng) -> MethodStep``.
      hyperparameters: the values it was built with (filled in by
        :func:`orthojax.methods.build_method`; empty when built directly).
      evaluate: how a model trained with it is evaluated: ``fn(model, variables, method_state, inputs) ->
        outputs`` (a tuple of T outputs; the model runs with ``train=False``), or None for
        ``model.apply(variables, inputs, train=False)``. RotoGrad's heads, trained on rotated
        representations, are evaluated on them.
    """

    name: str
    init: Callable[[PyTree, int], PyTree]
    step: Callable[..., MethodStep]
    hyperparameters: Mapping[str, Any] = types.MappingProxyType({})
    evaluate: Optional[Callable[[Any, PyTree, PyTree, Any], tuple]] = None


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A hyper-parameter that must be a finite real > 0 (>= 0 with ``allow_zero``), as a float.

    Raises:
      TypeError: not a real number (booleans included).
      ValueError: negative, zero (unless allowed), infinite or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value == float("inf") or value != value:
        raise ValueError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0; got {value}")
    return value


def _check_real(value: Any, what: str, name: str) -> float:
    """A finite real hyper-parameter as a float (TypeError: not a real number; ValueError: inf or NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be a real number; got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: {what} must be finite; got {value}")
    return value


def _check_num_tasks(num_tasks: Any, name: str) -> None:
    """``init``'s ``num_tasks``: an integer >= 1 (ValueError naming the method ``name`` otherwise)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
        raise ValueError(f"{name} needs at least one task; got num_tasks={num_tasks!r}")


def task_losses_and_aux(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array):
    """Calls ``problem.task_losses(params, batch, rng)`` and checks it against the task-loss contract
    (:func:`orthojax.task_losses.check_task_losses`): returns ``(losses (T,), aux)``.

    Raises:
      ValueError: anything else; the message says what was returned and how to fix it
        (``return jnp.stack([loss_0, loss_1, ...]), aux``).
    """
    return call_task_losses(problem.task_losses, params, batch, rng, where="problem.task_losses")


def last_shared_cosine(problem: MultiTaskProblem, params: PyTree, batch: Any, rng: jax.Array) -> jax.Array:
    """(T, T) cosines between the task gradients of the last shared layer (the paper's diagnostic).

    Computed without second-order terms (the result is wrapped in ``stop_gradient``).
    """
    def losses_fn(p):
        return task_losses_and_aux(problem, p, batch, rng)

    _, jacobian, _, _ = task_jacobian(losses_fn, params, wrt=problem.last_shared, has_aux=True)
    return jax.lax.stop_gradient(cosine_matrix(jacobian))
