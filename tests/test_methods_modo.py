"""MoDo against a NumPy float64 transcription with the half-batch split, and the simplex projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.modo import modo, project_to_simplex, split_batch

RNG = np.random.default_rng(0)
XB = RNG.normal(size=(8, 2))
YB = RNG.normal(size=(8, 3))
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.3, -0.6]])
SCALE = np.array([1.0, 10.0, 0.1])


def _problem(order=(0, 1, 2)):
    """L_t = s_t mean over the batch of (x W a_t - y_t)^2; ``order`` permutes the tasks."""
    order = np.asarray(order)

    def task_losses(p, batch, rng):
        z = batch["x"] @ p["encoder"]["w"]
        return SCALE[order] * jnp.mean((z @ p["heads"]["a"][order].T - batch["y"][:, order]) ** 2, axis=0), None

    params = {"encoder": {"w": jnp.asarray(W0)}, "heads": {"a": jnp.asarray(A0)}}
    return MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder"), params


def _np_losses_and_grads(W, A, x, y):
    Z = x @ W
    R = Z @ A.T - y
    n = x.shape[0]
    L = SCALE * np.mean(R**2, axis=0)
    dW = np.stack([SCALE[t] * 2.0 / n * x.T @ np.outer(R[:, t], A[t]) for t in range(3)])
    dA = np.zeros((3, 3, 2))
    for t in range(3):
        dA[t, t] = SCALE[t] * 2.0 / n * Z.T @ R[:, t]
    return L, dW, dA


def _np_simplex(y):
    """Projection by bisection on theta: sum_t max(y_t - theta, 0) = 1 (independent of the sort formula)."""
    lo, hi = y.min() - 1.0, y.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(y - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(y - 0.5 * (lo + hi), 0)


def test_steps_match_numpy_float64():
    gamma, rho, lr = 0.5, 0.1, 0.05  # a large gamma so that lambda moves visibly
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        batch = {"x": jnp.asarray(XB), "y": jnp.asarray(YB)}
        method = modo(gamma=gamma, rho=rho)
        state = method.init(params, 3)
        np.testing.assert_allclose(state.weights, np.full(3, 1 / 3))
        W, A, lam = W0.copy(), A0.copy(), np.full(3, 1 / 3)
        for _ in range(4):
            out = method.step(problem, params, state, batch, jax.random.key(0))
            _, J1, _ = _np_losses_and_grads(W, A, XB[:4], YB[:4])
            _, J2, _ = _np_losses_and_grads(W, A, XB[4:], YB[4:])
            L, J3, dA = _np_losses_and_grads(W, A, XB, YB)
            J1, J2, J3f = J1.reshape(3, -1), J2.reshape(3, -1), J3.reshape(3, -1)
            lam = _np_simplex(lam - gamma * (J1 @ (J2.T @ lam) + rho * lam))
            d = (lam @ J3f).reshape(W.shape)
            head = dA.sum(axis=0)
            np.testing.assert_allclose(out.metrics["task_weights"], lam, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.loss, lam @ L, rtol=1e-10)
            np.testing.assert_allclose(out.grads["encoder"]["w"], d, rtol=1e-10)
            np.testing.assert_allclose(out.grads["heads"]["a"], head, rtol=1e-12)
            W, A = W - lr * d, A - lr * head
            params = jax.tree.map(lambda p, g: p - lr * g, params, out.grads)
            state = out.state
        assert not np.allclose(lam, 1 / 3)


def test_simplex_projection_against_bisection():
    with jax.enable_x64(True):
        for y in (np.array([0.2, 0.3, 0.5]), np.array([2.0, -1.0, 0.3, 0.1]), np.array([-5.0, -5.0]),
                  np.array([0.7]), RNG.normal(size=7) * 3):
            x = np.asarray(project_to_simplex(jnp.asarray(y)))
            np.testing.assert_allclose(x, _np_simplex(y), atol=1e-12)
            assert np.all(x >= 0) and abs(x.sum() - 1) < 1e-12


def test_split_batch_and_its_errors():
    a, b = split_batch({"x": jnp.zeros((5, 2)), "y": jnp.arange(5), "scale": jnp.asarray(2.0)})
    assert a["x"].shape == (2, 2) and b["x"].shape == (3, 2)
    np.testing.assert_array_equal(np.concatenate([a["y"], b["y"]]), np.arange(5))
    assert float(a["scale"]) == 2.0 and float(b["scale"]) == 2.0
    with pytest.raises(ValueError, match="no array"):
        split_batch(None)
    with pytest.raises(ValueError, match=r"different leading sizes \[3, 4\]"):
        split_batch({"x": jnp.zeros((4, 2)), "y": jnp.zeros(3)})
    with pytest.raises(ValueError, match="at least 2 examples"):
        split_batch({"x": jnp.zeros((1, 2))})


def test_jit_agrees_and_permutation_equivariance():
    problem, params = _problem()
    batch = {"x": jnp.asarray(XB, jnp.float32), "y": jnp.asarray(YB, jnp.float32)}
    method = modo(gamma=0.5)
    state = method.init(params, 3)
    eager = method.step(problem, params, state, batch, jax.random.key(0))
    jitted = jax.jit(method.step, static_argnums=0)(problem, params, state, batch, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    perm = np.array([2, 0, 1])
    permuted = method.step(_problem(tuple(perm))[0], params, state, batch, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][perm], rtol=1e-5)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-5, atol=1e-6)
    w = np.asarray(eager.metrics["task_weights"])
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6


def test_validation():
    for kwargs in ({"gamma": 0.0}, {"gamma": float("inf")}, {"rho": -0.1}, {"rho": float("nan")}):
        with pytest.raises(ValueError, match="modo"):
            modo(**kwargs)
    with pytest.raises(TypeError, match="gamma"):
        modo(gamma=None)
    with pytest.raises(ValueError, match="at least one task"):
        modo().init(_problem()[1], 0)


def test_project_to_simplex_stays_on_the_simplex_for_huge_inputs():
    """float32 inputs far beyond 1 / eps (an inner SGD step of SDMGrad can give them): the result is still a
    point of the simplex (here the vertex of the largest entry, the exact projection)."""
    for y in ([3e9, -2e9], [1e8, 1e8 - 1e3, -5.0], [-4e9, -1e9]):
        x = np.asarray(project_to_simplex(jnp.asarray(y, jnp.float32)))
        assert np.all(x >= 0) and abs(x.sum() - 1) < 1e-6, (y, x)
        assert x[int(np.argmax(y))] == pytest.approx(1.0, abs=1e-6)
