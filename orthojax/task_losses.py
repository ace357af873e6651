"""The task-loss contract: the one function a user writes, and the adapters onto it.

**The contract.** A task-loss function is

    task_losses_fn(params, *args) -> losses              # losses: (T,), one loss per task
    task_losses_fn(params, *args) -> (losses, aux)       # with has_aux=True; aux is carried untouched

pure and differentiable in ``params`` (any pytree). Everything else is derived from it with JAX
transformations: the per-task Jacobian of a selected layer (:func:`orthojax.task_jacobian`), the CosReg
penalty and its exact gradient (:func:`orthojax.loss_with_cosreg`), and every method's gradient.

Where it is used:

* the penalty (:mod:`orthojax.cosreg`, :mod:`orthojax.jacobian`): any ``*args``, ``has_aux`` as a keyword;
* the methods (:class:`orthojax.methods.MultiTaskProblem`): ``task_losses(params, batch, rng) -> (losses,
  aux)``, i.e. the contract with ``args = (batch, rng)`` and ``has_aux=True`` (aux may be None or {});
  :func:`call_task_losses` checks each call's return value;
* the engine (:mod:`orthojax.training`): a Flax model's experiments write ``loss_fn(outputs, batch) -> (T,)``;
  :func:`from_outputs` is the adapter that turns it into the contract.

Example:
  >>> import jax.numpy as jnp
  >>> def task_losses(params, batch, rng):
  ...     x, ys = batch
  ...     preds = x @ params["w"]                                  # (B, T): one output per task
  ...     return jnp.mean((preds - ys) ** 2, axis=0), None         # (T,) and no aux
  >>> params = {"w": jnp.ones((3, 2))}
  >>> batch = (jnp.ones((4, 3)), jnp.zeros((4, 2)))
  >>> losses, aux = call_task_losses(task_losses, params, batch, None)
  >>> losses.shape
  (2,)
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["TaskLossFn", "OutputLossFn", "call_task_losses", "check_task_losses", "from_outputs"]

TaskLossFn = Callable[..., Union[jax.Array, tuple[jax.Array, Any]]]
"""``fn(params, *args) -> losses (T,)``, or ``-> (losses (T,), aux)`` with ``has_aux=True``."""

OutputLossFn = Callable[[tuple, Any], jax.Array]
"""``fn(outputs: tuple of T model outputs, batch) -> losses (T,)``: what an experiment writes for a model."""

_FIX = "return `jnp.stack([loss_0, loss_1, ...]), aux` (aux may be None or {})"


def _describe(value: Any) -> str:
    from orthojax.jacobian import describe_value  # one wording for the contract checks everywhere

    return describe_value(value)


def check_task_losses(out: Any, *, has_aux: bool = True, where: str = "task_losses") -> tuple[jax.Array, Any]:
    """Checks a task-loss function's return value against the contract and splits it.

    Args:
      out: what the function returned.
      has_aux: whether it must be a pair ``(losses, aux)`` (else the losses alone).
      where: the function's name in messages (e.g. ``"problem.task_losses"``).

    Returns:
      ``(losses, aux)`` (aux None when ``has_aux`` is False).

    Raises:
      ValueError: anything but losses of shape (T,) (and an aux): the message says what was returned and
        how to fix it. Common slips are named: a tuple of scalar losses instead of a stacked array, and a
        pair of scalar losses read as (losses, aux).
    """
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"{where} must return a pair (losses of shape (T,), aux); it returned "
                             f"{_describe(out)}: {_FIX}")
        losses, aux = out
    else:
        losses, aux = out, None
    if not isinstance(losses, (tuple, list)) and jnp.ndim(losses) == 1:
        return losses, aux
    if isinstance(losses, (tuple, list)):
        extra = " (stack a tuple of losses into one array)"
    elif has_aux and jnp.ndim(losses) == 0 and isinstance(aux, (jax.Array, float, int)) and jnp.ndim(aux) == 0:
        extra = " (a pair of scalar losses (loss_0, loss_1) is read as (losses, aux))"
    else:
        extra = ""
    item = "as the first item of (losses, aux)" if has_aux else ""
    raise ValueError(f"{where} must return losses of shape (T,) {item}; the {'first item' if has_aux else 'value'} "
                     f"was {_describe(losses)}{extra}: "
                     + (_FIX if has_aux else "return `jnp.stack([loss_0, loss_1, ...])`"))


def call_task_losses(fn: TaskLossFn, params: PyTree, *args: Any, has_aux: bool = True,
                     where: str = "task_losses") -> tuple[jax.Array, Any]:
    """``fn(params, *args)`` checked by :func:`check_task_losses`; returns ``(losses (T,), aux)``."""
    return check_task_losses(fn(params, *args), has_aux=has_aux, where=where)


def from_outputs(
    model_apply: Callable[..., tuple[tuple, Any]], loss_fn: OutputLossFn
) -> Callable[[PyTree, Any, Any], tuple[jax.Array, Any]]:
    """Adapter: a model's forward pass and ``loss_fn(outputs, batch) -> (T,)`` as a task-loss function.

    Args:
      model_apply: ``fn(params, batch, rng) -> (outputs, aux)``: the model's T outputs (a sequence) and
        whatever the forward pass carries out (e.g. updated BatchNorm statistics).
      loss_fn: ``fn(outputs: tuple, batch) -> losses (T,)``.

    Returns:
      ``task_losses(params, batch, rng) -> (losses (T,), aux)``: the contract with ``args = (batch, rng)``,
      ``has_aux=True`` (what :class:`orthojax.methods.MultiTaskProblem` takes).
    """
    if not callable(model_apply) or not callable(loss_fn):
        raise TypeError(f"from_outputs takes two functions; got {model_apply!r} and {loss_fn!r}")

    def task_losses(params: PyTree, batch: Any, rng: Any) -> tuple[jax.Array, Any]:
        outputs, aux = model_apply(params, batch, rng)
        return check_task_losses((loss_fn(tuple(outputs), batch), aux), where="the task-loss function")

    return task_losses

