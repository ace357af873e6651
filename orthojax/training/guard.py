"""Non-finite guard: a step whose loss or gradients are not finite leaves the model unchanged."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["NonFiniteError", "all_finite", "check_streak", "halt_at_limit", "keep_if_finite"]


class NonFiniteError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient.

    Attributes:
      step: the step that reached the limit (None when unknown).
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def all_finite(*trees: PyTree) -> jax.Array:
    """Boolean scalar: every floating-point leaf of every tree is finite (jittable)."""
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(trees)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def keep_if_finite(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``ok`` else ``old``, leaf by leaf (same structure; jittable)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def check_streak(streak: int, limit: int, step: int) -> None:
    """Raises :class:`NonFiniteError` when ``streak`` consecutive non-finite steps reach ``limit``.

    Args:
      streak: consecutive non-finite steps ending at ``step``.
      limit: the allowed number (0 or less disables the check).
      step: the current step, for the message.
    """
    if limit > 0 and streak >= limit:
        raise NonFiniteError(
            f"{streak} consecutive steps (up to step {step}) had a non-finite loss or gradient; "
            f"the parameters were left unchanged by those steps and the run stopped "
            f"(limit max_nonfinite={limit}). Lower the learning rate or check the inputs.",
            step=step,
        )


def halt_at_limit(train_step: Callable, limit: int) -> Callable:
    """``train_step(state, batch) -> (state, metrics)`` that stops exactly at the non-finite limit.

    Once any seed's ``state.nonfinite_streak`` has reached ``limit``, the step returns the state
    unchanged (step counter included); every step reports the streak after it as the metric
    "nonfinite_streak". The device may run ahead of the host, which reads the metrics only every few
    steps, but the state stops at the step that reached the limit.

    Args:
      train_step: the (possibly vmapped) step; ``state`` has an int ``nonfinite_streak`` leaf.
      limit: consecutive non-finite steps allowed, >= 1.

    Raises:
      ValueError: ``limit`` < 1.
    """
    if limit < 1:
        raise ValueError(f"halt_at_limit: limit must be >= 1; got {limit}")

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        halted = jnp.any(state.nonfinite_streak >= limit)
        new_state = jax.tree.map(lambda new, old: jnp.where(halted, old, new), new_state, state)
        return new_state, dict(metrics, nonfinite_streak=new_state.nonfinite_streak)

    return step
