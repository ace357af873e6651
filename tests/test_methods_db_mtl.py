"""DB-MTL against a NumPy float64 re-derivation of its EMA of log-loss gradients and max-norm rescaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.db_mtl import db_mtl, shared_jacobian, task_norms

X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [0.2, 0.9]])
Y = np.array([[1.0, -1.0, 0.5, 0.3], [0.2, 0.3, -0.7, 1.1], [-0.4, 0.8, 0.1, -0.9]])
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.3, -0.6]])
SCALE = np.array([1.0, 10.0, 0.1])  # unequal loss scales


def _problem(order=(0, 1, 2)):
    """z = x W (shared), L_t = s_t mean((z a_t - y_t)^2) with head a_t; ``order`` permutes the tasks."""
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


def _np_db_mtl(steps, beta, sigma, lr):
    """Float64 transcription of the paper's update (LibMTL's constants), SGD on both W and A."""
    W, A = W0.copy(), A0.copy()
    h = np.zeros((3, 2, 2))
    history = []
    for k in range(1, steps + 1):
        L, dW, dA = _np_losses_and_grads(W, A)
        g_log = dW / (L + 1e-8)[:, None, None]
        b = beta / k**sigma
        h = b * h + (1 - b) * g_log
        norms = np.linalg.norm(h.reshape(3, -1), axis=1)
        alpha = norms.max() / (norms + 1e-8)
        d = np.tensordot(alpha, h, 1)
        head = np.tensordot(1.0 / (L + 1e-8), dA, 1)
        history.append((L, alpha, norms, d, head))
        W, A = W - lr * d, A - lr * head
    return W, A, history


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.9, 0.5), (0.0, 0.0)])
def test_steps_match_numpy_float64(beta, sigma):
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = db_mtl(beta=beta, beta_sigma=sigma)
        state = method.init(params, 3)
        W, A, history = _np_db_mtl(4, beta, sigma, lr=0.05)
        for k, (L, alpha, norms, d, head) in enumerate(history):
            out = method.step(problem, params, state, None, jax.random.key(0))
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.loss, np.sum(np.log(L + 1e-8)), rtol=1e-13)
            np.testing.assert_allclose(out.metrics["task_weights"], alpha, rtol=1e-11)
            np.testing.assert_allclose(out.metrics["grad_norms"], norms, rtol=1e-11)
            np.testing.assert_allclose(out.grads["encoder"]["w"], d, rtol=1e-11)
            np.testing.assert_allclose(out.grads["heads"]["a"], head, rtol=1e-11)
            assert int(out.state.count) == k + 1
            params = jax.tree.map(lambda p, g: p - 0.05 * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-10)
        # the head leaves of the buffer are never used and stay zero
        assert not np.any(np.asarray(state.buffer["heads"]["a"]))


def test_all_buffers_scaled_to_the_largest_norm():
    """After rescaling every alpha_t h_t has the norm max_s ||h_s||, whatever the loss scales."""
    problem, params = _problem()
    method = db_mtl()
    out = method.step(problem, params, method.init(params, 3), None, jax.random.key(0))
    h = out.state.buffer["encoder"]["w"]
    scaled = np.asarray(out.metrics["task_weights"])[:, None] * np.asarray(h).reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), np.max(np.asarray(out.metrics["grad_norms"])), rtol=1e-5)


def test_shapes_dtypes_jit_and_permutation_equivariance():
    problem, params = _problem()
    method = db_mtl()
    state = method.init(params, 3)
    assert state.buffer["encoder"]["w"].shape == (3, 2, 2) and state.buffer["heads"]["a"].shape == (3, 3, 2)
    eager = method.step(problem, params, state, None, jax.random.key(0))
    jitted = jax.jit(method.step, static_argnums=0)(problem, params, state, None, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(eager.grads))
    perm = np.array([2, 0, 1])
    permuted = method.step(_problem(tuple(perm))[0], params, state, None, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][perm], rtol=1e-5)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-5)


def test_shared_jacobian_and_task_norms_against_per_task_grads():
    problem, params = _problem()
    sj = shared_jacobian(problem, params, None, jax.random.key(0))
    _, dW, dA = _np_losses_and_grads(W0, A0)
    np.testing.assert_allclose(sj.jacobian[0], dW, rtol=1e-5)
    c = np.array([0.5, -1.0, 2.0])
    shared, rest = sj.pullback(jnp.asarray(c, jnp.float32))
    grads = sj.assemble(shared, rest)
    np.testing.assert_allclose(grads["encoder"]["w"], np.tensordot(c, dW, 1), rtol=1e-5)
    np.testing.assert_allclose(grads["heads"]["a"], np.tensordot(c, dA, 1), rtol=1e-5)
    big = [jnp.array([[3e30, 4e30], [0.0, 0.0], [3e-30, 0.0]], jnp.float32), jnp.array([[0.0], [0.0], [4e-30]], jnp.float32)]
    np.testing.assert_allclose(task_norms(big), [5e30, 0.0, 5e-30], rtol=1e-6)


def test_hyperparameter_and_state_validation():
    for kwargs in ({"beta": 1.0}, {"beta": -0.1}, {"beta": float("nan")}, {"beta_sigma": -1.0}):
        with pytest.raises(ValueError, match="db_mtl"):
            db_mtl(**kwargs)
    with pytest.raises(TypeError, match="beta"):
        db_mtl(beta="0.9")
    problem, params = _problem()
    with pytest.raises(ValueError, match="at least one task"):
        db_mtl().init(params, 0)
    wrong = db_mtl().init({"encoder": {"w": jnp.zeros((3, 2))}, "heads": {"a": jnp.zeros((3, 2))}}, 3)
    with pytest.raises(ValueError, match="method.init"):
        db_mtl().step(problem, params, wrong, None, jax.random.key(0))
