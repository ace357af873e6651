"""GLS: the geometric mean of the losses and its gradient against NumPy float64 and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.gls import geometric_mean_and_weights, gls

X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2], [0.2, 0.9]])
Y = np.array([[1.0, -1.0, 0.5, 0.3], [0.2, 0.3, -0.7, 1.1], [-0.4, 0.8, 0.1, -0.9]])
W0 = np.array([[0.4, -0.2], [0.1, 0.3]])
A0 = np.array([[1.0, 0.5], [-0.4, 0.9], [0.3, -0.6]])


def _problem(order=(0, 1, 2)):
    """z = x W (shared), L_t = mean((z a_t - y_t)^2) with head a_t; ``order`` permutes the tasks."""
    order = np.asarray(order)

    def task_losses(p, batch, rng):
        z = X @ p["encoder"]["w"]
        return jnp.mean((z @ p["heads"]["a"][order].T - Y[order].T) ** 2, axis=0), None

    params = {"encoder": {"w": jnp.asarray(W0)}, "heads": {"a": jnp.asarray(A0)}}
    return MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder"), params


def _np_losses(W, A):
    return np.mean((X @ W @ A.T - Y.T) ** 2, axis=0)


def _np_gls_and_grads(W, A):
    """Float64 oracle from the definition: GLS = prod(L)^(1/T); d/dtheta by the product rule."""
    R = X @ W @ A.T - Y.T
    n, T = X.shape[0], 3
    L = np.mean(R**2, axis=0)
    value = np.prod(L) ** (1.0 / T)
    dW = sum(value / (T * L[t]) * 2.0 / n * X.T @ np.outer(R[:, t], A[t]) for t in range(T))
    dA = np.stack([value / (T * L[t]) * 2.0 / n * (X @ W).T @ R[:, t] for t in range(T)])
    return value, dW, dA


def _x64_params(params):
    return jax.tree.map(lambda x: x.astype(jnp.float64), params)


def test_one_step_matches_numpy_and_finite_differences():
    with jax.enable_x64(True):
        problem, params = _problem()
        params = _x64_params(params)
        out = gls().step(problem, params, (), None, jax.random.key(0))
        value, dW, dA = _np_gls_and_grads(W0, A0)
        np.testing.assert_allclose(out.loss, value, rtol=1e-14)
        np.testing.assert_allclose(out.grads["encoder"]["w"], dW, rtol=1e-12)
        np.testing.assert_allclose(out.grads["heads"]["a"], dA, rtol=1e-12)
        L = _np_losses(W0, A0)
        np.testing.assert_allclose(out.metrics["task_weights"], value / (3 * L), rtol=1e-13)
        # central differences of prod(L)^(1/3) in W
        h, fd = 1e-6, np.zeros_like(W0)
        for i in range(2):
            for j in range(2):
                E = np.zeros_like(W0)
                E[i, j] = h
                fd[i, j] = (np.prod(_np_losses(W0 + E, A0)) ** (1 / 3) - np.prod(_np_losses(W0 - E, A0)) ** (1 / 3)) / (2 * h)
        np.testing.assert_allclose(out.grads["encoder"]["w"], fd, rtol=1e-8)


def test_several_sgd_steps_match_numpy():
    with jax.enable_x64(True):
        problem, params = _problem()
        params = _x64_params(params)
        method = gls()
        state = method.init(params, 3)
        W, A = W0.copy(), A0.copy()
        for _ in range(6):
            out = method.step(problem, params, state, None, jax.random.key(0))
            value, dW, dA = _np_gls_and_grads(W, A)
            np.testing.assert_allclose(out.loss, value, rtol=1e-12)
            W, A = W - 0.2 * dW, A - 0.2 * dA
            params = jax.tree.map(lambda p, g: p - 0.2 * g, params, out.grads)
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-11)
        np.testing.assert_allclose(params["heads"]["a"], A, rtol=1e-11)


def test_jit_agrees_and_permutation_equivariance():
    problem, params = _problem()
    method = gls()
    eager = method.step(problem, params, (), None, jax.random.key(0))
    jitted = jax.jit(method.step, static_argnums=0)(problem, params, (), None, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    perm = (2, 0, 1)
    permuted = method.step(_problem(perm)[0], params, (), None, jax.random.key(0))
    np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][np.array(perm)], rtol=1e-5)
    np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-5)
    np.testing.assert_allclose(permuted.loss, eager.loss, rtol=1e-6)


def test_log_form_is_scale_safe_in_float32():
    """13 losses of 1e-4 (the product underflows float32 to 0) and of 1e4 (it overflows): exact in log form."""
    for scale in (1e-4, 1e4):
        L = np.linspace(1.0, 3.0, 13) * scale
        value, w = geometric_mean_and_weights(jnp.asarray(L, jnp.float32))
        assert value.dtype == jnp.float32 and w.shape == (13,)
        exact = np.exp(np.mean(np.log(L)))
        np.testing.assert_allclose(value, exact, rtol=1e-5)
        np.testing.assert_allclose(w, exact / (13 * L), rtol=1e-5)
        assert float(jnp.prod(jnp.asarray(L, jnp.float32))) in (0.0, np.inf)  # the naive form fails here


def test_zero_loss_gives_nan_weights_and_validation():
    value, w = geometric_mean_and_weights(jnp.array([0.0, 1.0]))
    assert float(value) == 0.0 and np.isnan(w[0]) and float(w[1]) == 0.0
    problem, params = _problem()
    zero = MultiTaskProblem(lambda p, b, r: (problem.task_losses(p, b, r)[0] * jnp.array([0.0, 1.0, 1.0]), None),
                            last_shared="encoder", shared="encoder")
    out = gls().step(zero, params, (), None, jax.random.key(0))
    assert float(out.loss) == 0.0 and np.all(np.isnan(out.grads["encoder"]["w"]))
    with pytest.raises(ValueError, match="gls needs at least one task"):
        gls().init(params, 0)
