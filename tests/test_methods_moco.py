"""MoCo against a NumPy float64 re-derivation of its tracked gradients and lambda updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.moco import moco, moco_lambda_update

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


def _np_simplex(v):
    """Projection by bisection on theta: sum_t max(v_t - theta, 0) = 1."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0)


def _np_moco(steps, beta, beta_sigma, gamma, gamma_sigma, rho, lambda_update, normalize, lr):
    """Float64 transcription of the update (paper's symbols, LibMTL's constants), SGD on W and A."""
    W, A = W0.copy(), A0.copy()
    y = np.zeros((3, 4))
    lam = np.full(3, 1 / 3)
    history = []
    for k in range(1, steps + 1):
        L, dW, dA = _np_losses_and_grads(W, A)
        g = dW.reshape(3, -1)
        norms = np.linalg.norm(g, axis=1)
        h = g / (norms + 1e-8)[:, None] * L[:, None] if normalize else g
        y = y - beta / k**beta_sigma * (y - h)
        v = lam - gamma / k**gamma_sigma * (y @ y.T + rho * np.eye(3)) @ lam
        lam = np.exp(v - v.max()) / np.exp(v - v.max()).sum() if lambda_update == "softmax" else _np_simplex(v)
        d = (lam @ y).reshape(2, 2)
        head = dA.sum(axis=0)
        history.append((L, lam.copy(), norms, np.linalg.norm(y, axis=1), d, head))
        W, A = W - lr * d, A - lr * head
    return W, history


@pytest.mark.parametrize("hyper", [
    {},  # LibMTL's defaults
    {"gamma": 2.0, "beta": 0.3, "beta_sigma": 0.0, "rho": 0.5, "lambda_update": "projection", "normalize": False},
])
def test_steps_match_numpy_float64(hyper):
    full = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5, "rho": 0.0,
            "lambda_update": "softmax", "normalize": True, **hyper}
    lr = 0.02
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = moco(**hyper)
        step = jax.jit(method.step, static_argnums=0)
        state = method.init(params, 3)
        np.testing.assert_allclose(state.weights, np.full(3, 1 / 3))
        W, history = _np_moco(5, lr=lr, **full)
        for k, (L, lam, norms, ynorms, d, head) in enumerate(history):
            out = step(problem, params, state, None, jax.random.key(0))
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.metrics["task_weights"], lam, rtol=1e-11, atol=1e-14)
            np.testing.assert_allclose(out.metrics["grad_norms"], norms, rtol=1e-12)
            np.testing.assert_allclose(out.metrics["tracked_norms"], ynorms, rtol=1e-12)
            np.testing.assert_allclose(out.loss, lam @ L, rtol=1e-11)
            np.testing.assert_allclose(out.grads["encoder"]["w"], d, rtol=1e-11)
            np.testing.assert_allclose(out.grads["heads"]["a"], head, rtol=1e-12)
            assert int(out.state.count) == k + 1
            params = jax.tree.map(lambda p, g: p - lr * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-10)
        assert not np.allclose(lam, 1 / 3, atol=1e-3)  # lambda moved, so the test sees its update
        assert not np.any(np.asarray(state.tracked["heads"]["a"]))  # head buffers unused


def test_normalized_tracking_has_the_loss_as_norm():
    """Step 1 with beta = 1: y_t = L_t g_t / ||g_t|| exactly, so ||y_t|| = L_t whatever the gradient scale."""
    problem, params = _problem()
    method = moco(beta=1.0)
    out = jax.jit(method.step, static_argnums=0)(problem, params, method.init(params, 3), None, jax.random.key(0))
    np.testing.assert_allclose(out.metrics["tracked_norms"], out.task_losses, rtol=1e-5)


def test_lambda_update_against_numpy_and_errors():
    lam = np.array([0.2, 0.5, 0.3])
    G = np.array([[2.0, -1.0, 0.5], [-1.0, 3.0, 0.0], [0.5, 0.0, 1.0]])
    with jax.enable_x64(True):
        v = lam - 0.7 * (G @ lam + 0.1 * lam)
        got = moco_lambda_update(jnp.asarray(lam), jnp.asarray(G), 0.7, 0.1, "softmax")
        np.testing.assert_allclose(got, np.exp(v) / np.exp(v).sum(), rtol=1e-13)
        got = moco_lambda_update(jnp.asarray(lam), jnp.asarray(G), 0.7, 0.1, "projection")
        np.testing.assert_allclose(got, _np_simplex(v), atol=1e-12)
    with pytest.raises(ValueError, match="lambda_update"):
        moco_lambda_update(jnp.asarray(lam), jnp.asarray(G), 0.7, 0.1, "simplex")


def test_shapes_jit_finiteness_and_permutation_equivariance():
    problem, params = _problem()
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    method = moco(gamma=1.0)
    state = method.init(params, 3)
    assert state.tracked["encoder"]["w"].shape == (3, 2, 2) and state.tracked["heads"]["a"].shape == (3, 3, 2)
    assert state.weights.dtype == jnp.float32 and state.count.dtype == jnp.int32
    step = jax.jit(method.step, static_argnums=0)
    eager = method.step(problem, params, state, None, jax.random.key(0))
    jitted = step(problem, params, state, None, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    again = step(problem, params, jitted.state, None, jax.random.key(0))  # a second step, same trace
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(again))
    assert jax.tree.map(jnp.shape, again.grads) == jax.tree.map(jnp.shape, params)
    lam = np.asarray(again.metrics["task_weights"])
    assert np.all(lam > 0) and abs(lam.sum() - 1) < 1e-6
    perm = np.array([2, 0, 1])
    permuted = method.step(_problem(tuple(perm))[0], params, state, None, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][perm], rtol=1e-5)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-5, atol=1e-7)


def test_zero_gradient_task_stays_finite():
    """A task whose loss does not depend on the shared parameters: h_t = 0 / (0 + 1e-8) * L_t = 0."""

    def task_losses(p, batch, rng):
        z = X @ p["encoder"]["w"]
        return jnp.stack([jnp.mean(z**2), jnp.sum(p["heads"]["a"] ** 2)]), None

    problem = MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder")
    params = {"encoder": {"w": jnp.asarray(W0, jnp.float32)}, "heads": {"a": jnp.asarray(A0, jnp.float32)}}
    method = moco()
    out = jax.jit(method.step, static_argnums=0)(problem, params, method.init(params, 2), None, jax.random.key(0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    assert float(out.metrics["tracked_norms"][1]) == 0.0


def test_hyperparameter_and_state_validation():
    for kwargs in ({"beta": 0.0}, {"beta": 1.5}, {"beta_sigma": -0.5}, {"gamma": 0.0}, {"gamma": float("inf")},
                   {"gamma_sigma": -1.0}, {"rho": -0.1}, {"rho": float("nan")}, {"lambda_update": "simplex"}):
        with pytest.raises(ValueError, match="moco"):
            moco(**kwargs)
    with pytest.raises(TypeError, match="beta"):
        moco(beta="0.5")
    with pytest.raises(TypeError, match="normalize"):
        moco(normalize=1)
    problem, params = _problem()
    with pytest.raises(ValueError, match="at least one task"):
        moco().init(params, 0)
    wrong = moco().init({"encoder": {"w": jnp.zeros((3, 2))}, "heads": {"a": jnp.zeros((3, 2))}}, 3)
    with pytest.raises(ValueError, match="method.init"):
        moco().step(problem, params, wrong, None, jax.random.key(0))
