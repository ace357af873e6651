"""RLW: gradients against a NumPy float64 re-derivation, and the law of the random weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.rlw import rlw, rlw_weights

X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [0.2, 0.9]])
Y = np.array([[1.0, -1.0, 0.5, 0.3], [0.2, 0.3, -0.7, 1.1], [-0.4, 0.8, 0.1, -0.9]])
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.3, -0.6]])


def _problem():
    """z = x W (shared), L_t = mean((z a_t - y_t)^2) with head a_t."""

    def task_losses(p, batch, rng):
        z = X @ p["encoder"]["w"]
        return jnp.mean((z @ p["heads"]["a"].T - Y.T) ** 2, axis=0), None

    params = {"encoder": {"w": jnp.asarray(W0)}, "heads": {"a": jnp.asarray(A0)}}
    return MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder"), params


def _numpy_losses_and_grads(W, A):
    """Float64 losses (T,), dL_t/dW (T, 2, 2) and dL_t/dA (T, T, 2) of the linear problem."""
    Z = X @ W
    R = Z @ A.T - Y.T  # (n, T)
    n = X.shape[0]
    losses = np.mean(R**2, axis=0)
    dW = np.stack([2.0 / n * X.T @ np.outer(R[:, t], A[t]) for t in range(3)])
    dA = np.zeros((3, 3, 2))
    for t in range(3):
        dA[t, t] = 2.0 / n * Z.T @ R[:, t]
    return losses, dW, dA


def test_step_matches_numpy_in_float64():
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = rlw()
        out = method.step(problem, params, method.init(params, 3), None, jax.random.key(3))
        w = np.asarray(out.metrics["task_weights"])
        assert w.dtype == np.float64 and w.shape == (3,)
        assert np.all(w > 0)
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-15)
        L, dW, dA = _numpy_losses_and_grads(W0, A0)
        np.testing.assert_allclose(out.task_losses, L, rtol=1e-14)
        np.testing.assert_allclose(out.loss, w @ L, rtol=1e-14)
        np.testing.assert_allclose(out.grads["encoder"]["w"], np.tensordot(w, dW, 1), rtol=1e-13)
        np.testing.assert_allclose(out.grads["heads"]["a"], np.tensordot(w, dA, 1), rtol=1e-13)


def test_several_steps_of_sgd_match_numpy():
    """Five SGD steps with fresh keys; the NumPy oracle reuses the weights each step reported."""
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = rlw()
        state = method.init(params, 3)
        W, A = W0.copy(), A0.copy()
        seen = []
        for k in range(5):
            out = method.step(problem, params, state, None, jax.random.key(k))
            w = np.asarray(out.metrics["task_weights"])
            seen.append(w)
            L, dW, dA = _numpy_losses_and_grads(W, A)
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            W, A = W - 0.1 * np.tensordot(w, dW, 1), A - 0.1 * np.tensordot(w, dA, 1)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-12)
        np.testing.assert_allclose(params["heads"]["a"], A, rtol=1e-12)
        assert len({tuple(np.round(w, 12)) for w in seen}) == 5  # a new draw every step


def test_weights_are_deterministic_under_a_fixed_key_and_jit_agrees():
    problem, params = _problem()
    method = rlw()
    state = method.init(params, 3)
    a = method.step(problem, params, state, None, jax.random.key(7))
    b = method.step(problem, params, state, None, jax.random.key(7))
    c = jax.jit(method.step, static_argnums=0)(problem, params, state, None, jax.random.key(7))
    d = method.step(problem, params, state, None, jax.random.key(8))
    np.testing.assert_array_equal(a.metrics["task_weights"], b.metrics["task_weights"])
    np.testing.assert_allclose(c.metrics["task_weights"], a.metrics["task_weights"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.grads), jax.tree.leaves(c.grads)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a.metrics["task_weights"], d.metrics["task_weights"])
    # the weights do not reuse the key the model gets: they differ from softmax(normal(rng))
    assert not np.allclose(a.metrics["task_weights"], jax.nn.softmax(jax.random.normal(jax.random.key(7), (3,))))


def test_distribution_of_the_weights():
    """Over 4000 keys: E[w_t] = 1/T, log(w_0 / w_1) = z_0 - z_1 ~ N(0, 2) (Kolmogorov-Smirnov), and
    E[max_t w_t] agrees with a NumPy Monte-Carlo estimate of the softmax of standard normals."""
    problem, params = _problem()
    method = rlw()
    state = method.init(params, 3)
    keys = jax.random.split(jax.random.key(0), 4000)
    w = np.asarray(jax.jit(jax.vmap(lambda k: method.step(problem, params, state, None, k).metrics["task_weights"]))(keys),
                   np.float64)
    assert w.shape == (4000, 3)
    np.testing.assert_allclose(w.mean(axis=0), np.full(3, 1 / 3), atol=0.015)
    diff = np.log(w[:, 0]) - np.log(w[:, 1])
    assert stats.kstest(diff, stats.norm(scale=np.sqrt(2.0)).cdf).pvalue > 1e-3
    z = np.random.default_rng(0).standard_normal((200_000, 3))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    oracle = (e / e.sum(axis=1, keepdims=True)).max(axis=1).mean()
    np.testing.assert_allclose(w.max(axis=1).mean(), oracle, atol=0.01)


def test_permutation_equivariance_of_the_gradient_given_the_weights():
    """Permuting the tasks permutes nothing but the order: the gradient is sum_t w_t g_t for the reported w."""
    problem, params = _problem()
    out = rlw().step(problem, params, (), None, jax.random.key(1))
    L, dW, _ = _numpy_losses_and_grads(W0, A0)
    perm = np.array([2, 0, 1])
    w = np.asarray(out.metrics["task_weights"], np.float64)
    np.testing.assert_allclose(out.grads["encoder"]["w"], np.tensordot(w[perm], dW[perm], 1), rtol=1e-5)


def test_rlw_weights_function_and_validation():
    w = rlw_weights(jax.random.key(0), 4)
    assert w.shape == (4,) and w.dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_tasks"):
            rlw_weights(jax.random.key(0), bad)
    problem, params = _problem()
    with pytest.raises(ValueError, match="rlw needs at least one task"):
        rlw().init(params, 0)
