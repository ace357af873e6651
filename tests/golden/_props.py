"""Property checks shared by the aggregator tests (imported as ``golden._props``)."""

from __future__ import annotations

import pathlib
import json

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def load(name: str) -> dict:
    """The golden file tests/golden/<name>.json written by tests/golden/make_<name>.py."""
    return json.loads((HERE / f"{name}.json").read_text())


def as_pytree(J: jax.Array) -> dict:
    """A (T, P) Jacobian, P >= 3, as a pytree of two leaves of other shapes: {"a": (T, 2, 1), "b": (T, P-2)}."""
    T = J.shape[0]
    return {"a": J[:, :2].reshape(T, 2, 1), "b": J[:, 2:]}


def from_pytree(d: dict) -> jax.Array:
    """Inverse of :func:`as_pytree` for a direction (task axis removed)."""
    return jnp.concatenate([d["a"].reshape(-1), d["b"]])


def check_basics(aggregate, J, *, state=None, key=None, rtol=1e-6, atol=1e-9):
    """Finite output of one task's shape and dtype; jit == no jit; pytree == array. Returns (d, state)."""
    d, new_state = aggregate(J, state, key=key)
    assert d.shape == J.shape[1:] and d.dtype == J.dtype
    assert np.all(np.isfinite(np.asarray(d)))
    dj, sj = jax.jit(lambda J, s, k: aggregate(J, s, key=k))(J, state, key)
    np.testing.assert_allclose(np.asarray(dj), np.asarray(d), rtol=rtol, atol=atol)
    dp, sp = aggregate(as_pytree(J), state, key=key)
    assert set(dp) == {"a", "b"} and dp["a"].shape == (2, 1)
    np.testing.assert_allclose(np.asarray(from_pytree(dp)), np.asarray(d), rtol=rtol, atol=atol)
    for x, y in zip(jax.tree.leaves(new_state), jax.tree.leaves(sj)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
    for x, y in zip(jax.tree.leaves(new_state), jax.tree.leaves(sp)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
    return d, new_state
