"""ExcessMTL against a NumPy float64 transcription of the AdaGrad excess-risk estimate and weight update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.excess_mtl import excess_mtl

X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [0.2, 0.9]])
Y = np.array([[1.0, -1.0, 0.5, 0.3], [0.2, 0.3, -0.7, 1.1], [-0.4, 0.8, 0.1, -0.9]])
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.3, -0.6]])
SCALE = np.array([1.0, 10.0, 0.1])


def _problem(order=(0, 1, 2)):
    order = np.asarray(order)

    def task_losses(p, batch, rng):
        z = X @ p["encoder"]["w"]
        return SCALE[order] * jnp.mean((z @ p["heads"]["a"][order].T - Y[order].T) ** 2, axis=0), None

    params = {"encoder": {"w": jnp.asarray(W0)}, "heads": {"a": jnp.asarray(A0)}}
    return MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder"), params


def _np_losses_and_grads(W, A):
    Z = X @ W
    R = Z @ A.T - Y.T
    n = X.shape[0]
    L = SCALE * np.mean(R**2, axis=0)
    dW = np.stack([SCALE[t] * 2.0 / n * X.T @ np.outer(R[:, t], A[t]) for t in range(3)])
    dA = np.zeros((3, 3, 2))
    for t in range(3):
        dA[t, t] = SCALE[t] * 2.0 / n * Z.T @ R[:, t]
    return L, dW, dA


def _np_run(steps, eta, lr):
    """The paper's update as the reference code performs it, in float64 with the plain exp / renormalise."""
    W, A = W0.copy(), A0.copy()
    S = np.zeros((3, 4))
    w = np.ones(3)
    e0 = None
    out = []
    for _ in range(steps):
        L, dW, dA = _np_losses_and_grads(W, A)
        g = dW.reshape(3, -1)
        S = S + g**2
        e = np.sum(g**2 / np.sqrt(S + 1e-7), axis=1)
        if e0 is None:
            e0 = e
        else:
            w = w * np.exp(eta * e / e0)
            w = w / w.sum() * 3
        out.append((L, w.copy(), e, np.tensordot(w, dW, 1), np.tensordot(w, dA, 1)))
        W, A = W - lr * out[-1][3], A - lr * out[-1][4]
    return W, A, out


@pytest.mark.parametrize("eta", [1e-2, 1.0])
def test_steps_match_numpy_float64(eta):
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = excess_mtl(robust_step_size=eta)
        state = method.init(params, 3)
        W, A, history = _np_run(5, eta, lr=0.02)
        for L, w, e, dW, dA in history:
            out = method.step(problem, params, state, None, jax.random.key(0))
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.metrics["excess_risks"], e, rtol=1e-12)
            np.testing.assert_allclose(out.metrics["task_weights"], w, rtol=1e-12)
            np.testing.assert_allclose(out.loss, w @ L, rtol=1e-12)
            np.testing.assert_allclose(out.grads["encoder"]["w"], dW, rtol=1e-11)
            np.testing.assert_allclose(out.grads["heads"]["a"], dA, rtol=1e-11)
            params = jax.tree.map(lambda p, g: p - 0.02 * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-10)
        assert not np.any(np.asarray(state.grad_sq_sum["heads"]["a"]))
        assert not np.allclose(history[-1][1], 1.0)  # the weights moved


def test_first_step_keeps_unit_weights_and_jit_agrees():
    problem, params = _problem()
    method = excess_mtl()
    state = method.init(params, 3)
    assert state.weights.shape == (3,) and state.grad_sq_sum["encoder"]["w"].shape == (3, 2, 2)
    first = method.step(problem, params, state, None, jax.random.key(0))
    np.testing.assert_array_equal(first.metrics["task_weights"], np.ones(3))
    jitted = jax.jit(method.step, static_argnums=0)
    for s in (state, first.state):
        a = method.step(problem, params, s, None, jax.random.key(0))
        b = jitted(problem, params, s, None, jax.random.key(0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(b))


def test_permutation_equivariance():
    problem, params = _problem()
    method = excess_mtl(robust_step_size=1.0)
    perm = np.array([2, 0, 1])
    s, sp = method.init(params, 3), method.init(params, 3)
    pproblem = _problem(tuple(perm))[0]
    for _ in range(3):
        a = method.step(problem, params, s, None, jax.random.key(0))
        b = method.step(pproblem, params, sp, None, jax.random.key(0))
        np.testing.assert_allclose(b.metrics["task_weights"], a.metrics["task_weights"][perm], rtol=1e-5)
        np.testing.assert_allclose(b.grads["encoder"]["w"], a.grads["encoder"]["w"], rtol=1e-5)
        s, sp = a.state, b.state


def test_zero_first_gradient_gives_finite_weights():
    """A task whose shared gradient is 0 at the first step has e^0 = 0: its ratio is 0 (no division by 0)."""
    problem, params = _problem()
    params = {"encoder": {"w": params["encoder"]["w"]}, "heads": {"a": params["heads"]["a"].at[1].set(0.0)}}
    method = excess_mtl(robust_step_size=1.0)
    state = method.init(params, 3)
    for _ in range(3):
        out = method.step(problem, params, state, None, jax.random.key(0))
        state = out.state
    assert np.all(np.isfinite(out.metrics["task_weights"]))
    np.testing.assert_allclose(float(jnp.sum(out.metrics["task_weights"])), 3.0, rtol=1e-6)


def test_validation():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="robust_step_size"):
            excess_mtl(robust_step_size=bad)
    with pytest.raises(TypeError, match="robust_step_size"):
        excess_mtl(robust_step_size=None)
    with pytest.raises(ValueError, match="at least one task"):
        excess_mtl().init(_problem()[1], 0)
