"""STCH: warm-up, nadir epoch and smooth Tchebycheff steps against a NumPy float64 transcription."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.methods.base import MultiTaskProblem
from orthojax.methods.stch import stch, stch_objective_and_weights

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


def _np_stch_value(L, z, mu):
    """The reference objective with its detached max put back: T mu log sum exp(l / mu)."""
    l = np.log(L / z + 1e-20)
    m = l.max()
    return 3 * (mu * np.log(np.sum(np.exp((l - m) / mu))) + m)


def _np_run(steps, mu, warmup, spe, lr):
    """Float64 transcription of the reference schedule (log losses, nadir epoch, STCH), SGD on W and A."""
    W, A = W0.copy(), A0.copy()
    total, count, z = np.zeros(3), 0, None
    out = []
    for k in range(steps):
        epoch = k // spe
        L, dW, dA = _np_losses_and_grads(W, A)
        if epoch <= warmup:
            w = 1.0 / (L + 1e-20)
            value = np.sum(np.log(L + 1e-20))
            if epoch == warmup:
                total, count = total + L, count + 1
        else:
            if z is None:
                z = total / count
            l = np.log(L / z + 1e-20)
            p = np.exp((l - l.max()) / mu)
            p /= p.sum()
            w = 3 * p / (z * (L / z + 1e-20))  # chain rule of T mu LSE(l/mu) through l_t = log(L_t/z_t + tiny)
            value = _np_stch_value(L, z, mu)
        out.append((L, w, value, np.tensordot(w, dW, 1), np.tensordot(w, dA, 1)))
        W, A = W - lr * out[-1][3], A - lr * out[-1][4]
    return W, A, out, z


@pytest.mark.parametrize("mu", [1.0, 0.3])
def test_schedule_matches_numpy_float64(mu):
    with jax.enable_x64(True):
        problem, params = _problem()
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        method = stch(mu=mu, warmup_epochs=1, steps_per_epoch=2)
        state = method.init(params, 3)
        W, A, history, z = _np_run(7, mu, warmup=1, spe=2, lr=0.01)
        for k, (L, w, value, dW, dA) in enumerate(history):
            out = method.step(problem, params, state, None, jax.random.key(0))
            np.testing.assert_allclose(out.task_losses, L, rtol=1e-13)
            np.testing.assert_allclose(out.metrics["task_weights"], w, rtol=1e-12)
            np.testing.assert_allclose(out.loss, value, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(out.grads["encoder"]["w"], dW, rtol=1e-11)
            np.testing.assert_allclose(out.grads["heads"]["a"], dA, rtol=1e-11)
            params = jax.tree.map(lambda p, g: p - 0.01 * g, params, out.grads)
            state = out.state
        np.testing.assert_allclose(out.metrics["nadir"], z, rtol=1e-13)
        np.testing.assert_allclose(params["encoder"]["w"], W, rtol=1e-11)


def test_stch_gradient_equals_finite_differences_of_the_objective():
    with jax.enable_x64(True):
        z = np.array([0.5, 3.0, 0.2])
        value, w = stch_objective_and_weights(jnp.asarray(_np_losses_and_grads(W0, A0)[0]), jnp.asarray(z), 0.7)
        L, dW, _ = _np_losses_and_grads(W0, A0)
        np.testing.assert_allclose(value, _np_stch_value(L, z, 0.7), rtol=1e-14)
        h, fd = 1e-6, np.zeros_like(W0)
        for i in range(2):
            for j in range(2):
                E = np.zeros_like(W0)
                E[i, j] = h
                fd[i, j] = (_np_stch_value(_np_losses_and_grads(W0 + E, A0)[0], z, 0.7)
                            - _np_stch_value(_np_losses_and_grads(W0 - E, A0)[0], z, 0.7)) / (2 * h)
        np.testing.assert_allclose(np.tensordot(np.asarray(w), dW, 1), fd, rtol=1e-7)


def test_small_mu_approaches_the_tchebycheff_max():
    L = jnp.array([1.0, 4.0, 2.0])
    z = jnp.array([1.0, 1.0, 1.0])
    value, w = stch_objective_and_weights(L, z, 1e-3)
    np.testing.assert_allclose(value, 3 * np.log(4.0), rtol=1e-4)
    np.testing.assert_allclose(w, [0.0, 3 / 4.0, 0.0], atol=1e-6)


def test_jit_agrees_and_permutation_equivariance_after_warmup():
    problem, params = _problem()
    method = stch(warmup_epochs=0, steps_per_epoch=1)
    state = method.init(params, 3)
    for _ in range(2):  # step 0 is the nadir epoch, step 1 uses the STCH objective
        eager = method.step(problem, params, state, None, jax.random.key(0))
        jitted = jax.jit(method.step, static_argnums=0)(problem, params, state, None, jax.random.key(0))
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        perm = np.array([2, 0, 1])
        pstate = state._replace(loss_sum=state.loss_sum[perm])
        permuted = method.step(_problem(tuple(perm))[0], params, pstate, None, jax.random.key(0))
        np.testing.assert_allclose(permuted.metrics["task_weights"], eager.metrics["task_weights"][perm], rtol=1e-5)
        np.testing.assert_allclose(permuted.grads["encoder"]["w"], eager.grads["encoder"]["w"], rtol=1e-5)
        state = eager.state
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(eager.grads))
    assert state.loss_sum.shape == (3,) and int(state.step) == 2 and int(state.count) == 1


def test_validation():
    with pytest.raises(TypeError):
        stch()  # steps_per_epoch is required
    for kwargs in ({"mu": 0.0}, {"mu": -1.0}, {"mu": float("inf")}):
        with pytest.raises(ValueError, match="mu"):
            stch(steps_per_epoch=1, **kwargs)
    with pytest.raises(TypeError, match="mu"):
        stch(mu="1", steps_per_epoch=1)
    for kwargs in ({"warmup_epochs": -1}, {"warmup_epochs": 1.5}, {"steps_per_epoch": 0}, {"steps_per_epoch": True}):
        kwargs = {"steps_per_epoch": 1, **kwargs}
        with pytest.raises(ValueError, match="stch"):
            stch(**kwargs)
    with pytest.raises(ValueError, match="at least one task"):
        stch(steps_per_epoch=1).init(_problem()[1], 0)
