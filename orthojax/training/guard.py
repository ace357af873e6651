"""Non-finite guard: a step whose loss or gradients are not finite leaves the model unchanged."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["NonFiniteError", "all_finite", "keep_if_finite", "check_streak"]


class NonFiniteError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


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
            f"(limit max_nonfinite={limit}). Lower the learning rate or check the inputs."
        )
