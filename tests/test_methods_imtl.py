"""IMTL (IMTL-L + IMTL-G) against a NumPy float64 transcription of the paper's closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.imtl import imtl

X = np.array([[1.0, 0.5, -0.2], [-0.3, 2.0, 0.4], [0.7, -1.2, 1.0], [0.2, 0.9, -0.5]])
Y = np.array([[1.0, -1.0, 0.5, 0.3], [0.2, 0.3, -0.7, 1.1], [-0.4, 0.8, 0.1, -0.9]])
W0 = np.array([[0.4, -0.2], [0.1, 0.3], [-0.5, 0.2]])
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


def _np_imtl_g(G):
    """The paper's closed form: D_t = g_1 - g_t, U_t = u_1 - u_t, a_{2..T} = g_1 U^T (D U^T)^-1, a_1 = 1 - sum."""
    U = G / np.linalg.norm(G, axis=1, keepdims=True)
    D = G[:1] - G[1:]
    Uc = U[:1] - U[1:]
    rest = G[0] @ Uc.T @ np.linalg.inv(D @ Uc.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def _np_run(steps, lr_s, lr):
    W, A, s = W0.copy(), A0.copy(), np.zeros(3)
    out = []
    for _ in range(steps):
        L, dW, dA = _np_losses_and_grads(W, A)
        Gs = np.exp(s)[:, None] * dW.reshape(3, -1)
        a = _np_imtl_g(Gs)
        d = (a @ Gs).reshape(W.shape)
        head = np.tensordot(np.exp(s), dA, 1)
        out.append((L, s.copy(), a, d, head, np.sum(np.exp(s) * L - s)))
        s = s - lr_s * (np.exp(s) * L - 1.0)
        W, A = W - lr * d, A - lr * head
    return W, A, s, out


def test_steps_match_numpy_float64():
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = imtl(optimizer=optax.sgd(0.3))
        state = method.init(params, 3)
        W, A, s, history = _np_run(4, lr_s=0.3, lr=0.02)
        for L, s_k, a, d, head, loss in history:
            out = method.step(problem, params, state, None, jax.random.key(0))
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.metrics["loss_scales"], np.exp(s_k), rtol=1e-13)
            np.testing.assert_allclose(out.metrics["imtl_g_weights"], a, rtol=1e-9)
            np.testing.assert_allclose(out.metrics["task_weights"], a * np.exp(s_k), rtol=1e-9)
            np.testing.assert_allclose(out.loss, loss, rtol=1e-13)
            np.testing.assert_allclose(out.grads["encoder"]["w"], d, rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(out.grads["heads"]["a"], head, rtol=1e-12)
            params = jax.tree.map(lambda p, g: p - 0.02 * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(state.log_scales, s, rtol=1e-12)
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-9)


def test_equal_projections_and_scale_fixed_point():
    """The shared update has equal projections on every unit scaled gradient; with the model frozen, s goes
    to -log L (e^s L = 1)."""
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = imtl(optimizer=optax.sgd(0.05))
        step = jax.jit(method.step, static_argnums=0)
        state = method.init(params, 3)
        for _ in range(400):
            out = step(problem, params, state, None, jax.random.key(0))
            state = out.state
        L, dW, _ = _np_losses_and_grads(W0, A0)
        np.testing.assert_allclose(state.log_scales, -np.log(L), rtol=1e-6)
        Gs = np.asarray(out.metrics["loss_scales"])[:, None] * dW.reshape(3, -1)
        U = Gs / np.linalg.norm(Gs, axis=1, keepdims=True)
        proj = U @ np.asarray(out.grads["encoder"]["w"]).reshape(-1)
        np.testing.assert_allclose(proj, proj[0], rtol=1e-9)


def test_jit_agrees_and_permutation_equivariance():
    problem, params = _problem()
    method = imtl(learning_rate=0.1)
    state = method.init(params, 3)
    state = method.step(problem, params, state, None, jax.random.key(0)).state  # non-zero scales
    eager = method.step(problem, params, state, None, jax.random.key(0))
    jitted = jax.jit(method.step, static_argnums=0)(problem, params, state, None, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(eager))
    perm = np.array([2, 0, 1])
    pstate = jax.tree.map(lambda x: x[perm] if getattr(x, "shape", ()) == (3,) else x, state)
    permuted = method.step(_problem(tuple(perm))[0], params, pstate, None, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][perm], rtol=1e-4)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-4, atol=1e-6)


def test_validation():
    for bad in (0.0, -1e-3, float("inf")):
        with pytest.raises(ValueError, match="learning_rate"):
            imtl(learning_rate=bad)
    with pytest.raises(TypeError, match="learning_rate"):
        imtl(learning_rate="1e-3")
    with pytest.raises(TypeError, match="optimizer"):
        imtl(optimizer="adam")
    with pytest.raises(ValueError, match="at least one task"):
        imtl().init(_problem()[1], 0)
